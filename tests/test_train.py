"""Trainer: a short run end to end, resume after a kill, refusals."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from sam2_3dmed.model.checkpoint import load_checkpoint

from _tiny import make_tiny_target, tiny_config

OVERRIDES = tiny_config()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    t = make_tiny_target(tmp_path_factory.mktemp("train"), OVERRIDES)
    return t.root, t.cfg_path, t.prepared


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


@pytest.mark.slow
def test_trainer_hooks_are_what_a_variant_overrides(setup, tmp_path):
    """A subclass that replaces two hooks (the optimiser, and what happens after a step)
    trains with them: nnU-Net-style variants need no copy of the loop."""
    import torch

    from sam2_3dmed.config import load_config
    from sam2_3dmed.train.trainer import Trainer

    _, cfg_path, prep = setup
    seen = []

    class SGDTrainer(Trainer):
        def configure_optimizer(self):
            opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

        def after_step(self):
            seen.append(self.step)
            super().after_step()

    cfg = load_config(cfg_path, overrides={"train": {"steps": 2, "checkpoint_every": 2, "val_every": 2}})
    out = SGDTrainer(cfg, "spleen", "full", 0, tmp_path / "run", prepared=prep, device="cpu").run()
    state = load_checkpoint(out / "last.pt")
    assert seen == [1, 2] and state["step"] == 2
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9  # SGD's state, not AdamW's
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
