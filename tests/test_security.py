"""Security: what reaches a shell or an unpickler must not run.

* Config strings with shell metacharacters (``$(...)``, backticks, ``;``, quotes,
  spaces) in the paths the workflow's rules put on command lines are passed as data:
  a real Snakemake run of synth + prepare on a tiny project creates the literally named
  folders and no command of the payloads runs.
* Names that become wildcards or CLI arguments without a path role (targets, variants)
  and numbers the rules print unquoted are validated by the config schema: metacharacters
  there are a one-line config error before anything runs.
* A sam2-3dmed checkpoint (best.pt / last.pt) holding a pickle that would run code on
  load is refused by ``predict``, ``evaluate`` and a resumed ``train``, and the payload
  does not run (the marker file it would create stays absent).

Malicious tar members (absolute paths, ``..``, symlinks and hardlinks out of the target,
devices, FIFOs, symlink chains) are tested in test_fetch.py (``test_unsafe_members_refused``);
pickled SAM2 weights in test_backbone.py (``test_malicious_pickle_is_refused_not_run``).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _cli import one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]

# no slashes: each payload stays one path component, and a shell that ran it would
# create PWNED_* in the job's working directory (the project)
PAYLOADS = ["$(touch PWNED_dollar)", "`touch PWNED_backtick`", "x; touch PWNED_semicolon;",
            "x' ; touch PWNED_quote ; echo '", 'x" ; touch PWNED_dquote ; echo "',
            "x | touch PWNED_pipe & touch PWNED_amp", "a\\ b > PWNED_redirect"]


@pytest.mark.slow
def test_config_paths_with_shell_metacharacters_are_data_not_code(tmp_path):
    proj = tmp_path / "proj"
    for name in ("workflow", "scripts"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "environment.yml", proj / "environment.yml")
    root = "data/raw " + " ".join(PAYLOADS[:2])
    prepared = "data/prep " + "".join(PAYLOADS[2:])
    cfg = {
        "data": {"root": root, "prepared": prepared, "source": "synthetic",
                 "synthetic": {"cases": 3, "test_cases": 0, "seed": 0, "size": 48}},
        "targets": {"spleen": {"spacing_mm": [3.0, 3.0]}},
        "splits": {"folds": 2, "test_fraction": 0.0},
        "run": {"targets": ["spleen"], "variants": ["full"], "folds": [0]},
        "model": {"image_size": 64, "pretrained": False},
    }
    cfg_dir = proj / "config"
    cfg_dir.mkdir()
    cfg_name = "cfg $(touch PWNED_cfgname);x.yaml"
    (cfg_dir / cfg_name).write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's snakemake
    env.pop("SNAKEMAKE_PROFILE", None)
    target = f"{prepared}/spleen"
    proc = subprocess.run(["snakemake", target, "--cores", "1", "--configfile", f"config/{cfg_name}"],
                          cwd=proj, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(tmp_path.rglob("PWNED*")), "a config string was executed by a shell"
    # the payloads became literal folder names, and nothing was made from a split-up path
    assert (proj / root / "Task09_Spleen" / "dataset.json").is_file()
    assert (proj / prepared / "spleen" / "fingerprint.json").is_file()
    assert sorted(p.name for p in (proj / "data").iterdir()) == sorted([Path(root).name, Path(prepared).name])


@pytest.mark.parametrize("where,value", [
    ("targets", {"spl;touch PWNED": {"task": "Task09_Spleen", "labels": [1]}}),
    ("variants", {"x$(touch PWNED)": {}}),
    ("run", {"variants": ["full; touch PWNED"]}),
    ("data", {"synthetic": {"size": "96; touch PWNED"}}),
    ("splits", {"folds": "$(touch PWNED)"}),
])
def test_metacharacters_in_names_and_numbers_are_config_errors(tmp_path, where, value):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({where: value}))
    line = one_line_error(run_cli("validate-config", cfg, cwd=tmp_path))
    assert str(cfg) in line
    assert not list(tmp_path.glob("PWNED*"))


class _Payload:
    """Unpickles as a call that creates a marker file (what an attacker's checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    # looks like a sam2-3dmed checkpoint at the top level; the payload hides in a field
    torch.save({"format": "sam2_3dmed-checkpoint-v1", "step": 1, "trainable": {}, "config": {},
                "extra": _Payload(marker)}, path)
    return path


def test_malicious_checkpoint_is_live(tmp_path):
    """The payload is real: an unsafe load runs it (so the refusals below mean something)."""
    import torch

    marker = tmp_path / "ran"
    ckpt = _malicious_checkpoint(tmp_path / "best.pt", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate", "train"])
def test_malicious_checkpoint_refused_by_every_command(tmp_path, command):
    import nibabel as nib
    import numpy as np

    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    if command == "predict":
        ckpt = _malicious_checkpoint(run / "best.pt", marker)
        img = tmp_path / "ct.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), img)
        proc = run_cli("predict", ckpt, img, tmp_path / "out.nii.gz", "--device", "cpu")
        out = tmp_path / "out.nii.gz"
    else:
        from sam2_3dmed.data.prepare import prepare_target
        from sam2_3dmed.data.synth import synth_task
        from sam2_3dmed.config import load_config

        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump({"splits": {"folds": 2, "test_fraction": 0.0},
                                            "targets": {"spleen": {"spacing_mm": [3.0, 3.0]}},
                                            "model": {"image_size": 64, "pretrained": False},
                                            "train": {"steps": 2, "num_workers": 0}}))
        task = synth_task("Task09_Spleen", tmp_path / "raw", cases=3, test_cases=0, seed=0, size=48)
        prep = prepare_target(task, "spleen", tmp_path / "prep", load_config(cfg_path))
        if command == "evaluate":
            ckpt = _malicious_checkpoint(run / "best.pt", marker)
            out = tmp_path / "eval"
            proc = run_cli("evaluate", "--config", cfg_path, "--target", "spleen", "--fold", "0", "--run", run,
                           "--prepared", prep, "--out", out, "--device", "cpu")
        else:  # a run folder whose last.pt was replaced: resuming must not unpickle code
            ckpt = _malicious_checkpoint(run / "last.pt", marker)
            out = run / "train_summary.json"
            proc = run_cli("train", "--config", cfg_path, "--target", "spleen", "--fold", "0", "--out", run,
                           "--prepared", prep, "--device", "cpu")
    line = one_line_error(proc)
    assert str(ckpt) in line and "refused" in line, line
    assert not marker.exists(), "the checkpoint's code ran"
    assert not out.exists()
