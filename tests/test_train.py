"""Trainer: a short run end to end, resume after a kill, refusals."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.synth import synth_task
from sam2_3dmed.config import load_config
from sam2_3dmed.train.trainer import load_checkpoint

OVERRIDES = {
    "splits": {"folds": 2, "test_fraction": 0.0},
    "targets": {"spleen": {"spacing_mm": [1.5, 1.5]}},
    "model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1},
    "train": {"clip_length": 3, "steps": 6, "warmup_steps": 2, "checkpoint_every": 2, "val_every": 3,
              "num_workers": 0, "val_max_cases": 1, "lr": 1e-3, "lr_encoder": 1e-4},
    "run": {"targets": ["spleen"]},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    task = synth_task("Task09_Spleen", root / "raw", cases=4, test_cases=0, seed=1, size=48)
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(OVERRIDES))
    prep = prepare_target(task, "spleen", root / "prep", load_config(cfg_path))
    return root, cfg_path, prep


def run_train(cfg_path, prep, out, *extra):
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "sam2_3dmed.cli", "train", "--config", str(cfg_path), "--target", "spleen",
         "--fold", "0", "--out", str(out), "--prepared", str(prep), "--device", "cpu", *extra],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.mark.slow
def test_train_run_outputs_and_resume_equals_uninterrupted(setup):
    root, cfg_path, prep = setup
    full = run_train(cfg_path, prep, root / "full")
    assert full.returncode == 0, full.stderr
    rows = list(csv.DictReader((root / "full" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    for key in ("seg", "obj", "srpp", "bd", "loss", "lr", "grad_norm"):
        assert all(r[key] not in ("", "nan") for r in rows), key
    val = list(csv.DictReader((root / "full" / "val_log.csv").open()))
    assert [int(r["step"]) for r in val] == [3, 6]
    summary = json.loads((root / "full" / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["pretrained"] is False and summary["encoder_frozen"] is False
    last = load_checkpoint(root / "full" / "last.pt")
    assert last["step"] == 6 and last["config"]["model"]["image_size"] == 64
    assert (root / "full" / "best.pt").is_file()

    # killed right after step 3 (its last checkpoint is from step 2), then restarted
    killed = run_train(cfg_path, prep, root / "resumed", "--stop-after-step", "3")
    assert killed.returncode == 75
    assert load_checkpoint(root / "resumed" / "last.pt")["step"] == 2
    resumed = run_train(cfg_path, prep, root / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "from step 2" in resumed.stderr
    a = load_checkpoint(root / "full" / "last.pt")["trainable"]
    b = load_checkpoint(root / "resumed" / "last.pt")["trainable"]
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    rows_b = list(csv.DictReader((root / "resumed" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows]


def test_train_refuses_unknown_variant_and_fold(setup):
    root, cfg_path, prep = setup
    r = run_train(cfg_path, prep, root / "x", "--variant", "bogus")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: unknown variant 'bogus'")
    r = run_train(cfg_path, prep, root / "y", "--fold", "7")
    assert r.returncode == 1 and "fold" in r.stderr.strip().splitlines()[-1]


def test_pretrained_without_checkpoint_is_a_config_error(setup):
    root, _, prep = setup
    cfg = dict(OVERRIDES, model={**OVERRIDES["model"], "pretrained": True})
    p = root / "pre.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = run_train(p, prep, root / "z")
    assert r.returncode == 1 and "model.checkpoint: required" in r.stderr


@pytest.mark.slow
def test_changed_settings_are_refused_or_restart_keeping_the_old_run(setup):
    """A run folder made with other settings is not resumed as if nothing changed."""
    root, cfg_path, prep = setup
    out = root / "changed"
    assert run_train(cfg_path, prep, out).returncode == 0
    old = load_checkpoint(out / "last.pt")
    cfg = dict(OVERRIDES, train={**OVERRIDES["train"], "lr": 5e-4})
    p = root / "changed.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = run_train(p, prep, out)
    assert r.returncode == 1 and "--restart-if-changed" in r.stderr.strip().splitlines()[-1]
    assert load_checkpoint(out / "last.pt")["run_key"] == old["run_key"]  # untouched
    r = run_train(p, prep, out, "--restart-if-changed")
    assert r.returncode == 0, r.stderr
    assert "moved to" in r.stderr and "resuming" not in r.stderr
    assert load_checkpoint(out / "superseded" / "last.pt")["run_key"] == old["run_key"]
    new = load_checkpoint(out / "last.pt")
    assert new["step"] == 6 and new["run_key"] != old["run_key"] and new["config"]["train"]["lr"] == 5e-4
