"""The workflow's ensemble rules, on dry runs (no job runs, no cluster needed).

* ``evaluate_ensemble``: one job per target x variant, every fold of run.folds as its own
  ``--run`` (quoted for the shell: a results folder with a space in its name survives),
  ``--split test``, ``--fold`` the first fold; its outputs are in rule all and the report's
  inputs; it asks for a GPU like evaluate.
* ``predict_test_images``: one job per target x variant, the first fold's checkpoint as
  MODEL and every other fold's as ``--model``, following evaluate.checkpoint (best.pt or
  last.pt), over the raw task's imagesTs.
* Neither is in rule all without a test split (splits.test_fraction: 0) or test images
  (data.synthetic.test_cases: 0).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from _snakemake import job_counts, make_project, tiny_workflow_config

# 2 targets x 2 variants x 3 folds, a held-out test split and 2 synthetic test images per task;
# the results folder has a space in its name, so unquoted paths would split
CONFIG = tiny_workflow_config(
    data={"synthetic": {"test_cases": 2}},
    targets={"pancreas": {"spacing_mm": [3.0, 3.0]}},
    splits={"folds": 3, "test_fraction": 0.2},
    run={"targets": ["spleen", "pancreas"], "variants": ["full", "no_srpp"], "folds": [0, 1, 2],
         "results": "results/my runs"},
)
RUNS = "results/my runs/runs"


def dry_run(proj, *args) -> str:
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's snakemake
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "8", "--configfile", "config/run.yaml", *args],
                          cwd=proj, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"snakemake {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def commands(text: str, sub: str) -> list[list[str]]:
    """The printed shell commands that run `sam2-3dmed SUB`, as argument lists (up to the redirection)."""
    out = []
    for line in text.splitlines():
        if f"sam2-3dmed {sub} " in line:
            args = shlex.split(line[line.index("sam2-3dmed"):])
            out.append(args[:args.index(">")])
    return out


def options(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def job_blocks(text: str, rule: str) -> list[str]:
    """Each dry-run job listing of RULE (from its `rule NAME:` line to the next blank line)."""
    return re.findall(rf"^(?:local)?rule {rule}:\n(.*?)(?:\n\n|\Z)", text, re.M | re.S)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("ens"), CONFIG)
    return proj, dry_run(proj)


def test_job_counts(plan):
    _, text = plan
    assert job_counts(text) == {"synth": 2, "prepare": 2, "train": 12, "curves": 12, "evaluate": 12, "evaluate_ensemble": 4,
                                "predict_test_images": 4, "report": 1, "all": 1}


def test_evaluate_ensemble_command_lines(plan):
    _, text = plan
    cmds = commands(text, "evaluate")
    ens = [c for c in cmds if "--split" in c]
    assert len(cmds) == 16 and len(ens) == 4
    seen = set()
    for c in ens:
        target, variant = options(c, "--target")[0], options(c, "--variant")[0]
        seen.add((target, variant))
        assert options(c, "--split") == ["test"] and options(c, "--fold") == ["0"]
        assert options(c, "--run") == [f"{RUNS}/{target}/{variant}/fold{k}" for k in (0, 1, 2)]  # one --run per fold
        assert options(c, "--out") == [f"{RUNS}/{target}/{variant}/ensemble/eval/test"]
        assert "--overwrite" in c and options(c, "--device") == ["auto"]
    assert seen == {(t, v) for t in ("spleen", "pancreas") for v in ("full", "no_srpp")}
    for c in cmds:  # the per-fold jobs keep one --run and the configured split
        if c not in ens:
            assert len(options(c, "--run")) == 1 and "--split" not in c
    assert "'results/my runs/metrics/spleen/full/ensemble_test.json'" in text  # the copy for dvc metrics


def test_predict_test_images_command_lines(plan):
    _, text = plan
    cmds = commands(text, "predict")
    assert len(cmds) == 4
    for c in cmds:
        model, images, out = c[2:5]
        target, variant = re.search(r"runs/(\w+)/(\w+)/fold0/", model).groups()
        assert model == f"{RUNS}/{target}/{variant}/fold0/best.pt"
        task = {"spleen": "Task09_Spleen", "pancreas": "Task07_Pancreas"}[target]
        assert images == f"data/demo/raw/{task}/imagesTs"
        assert out == f"{RUNS}/{target}/{variant}/ensemble/imagesTs"
        assert options(c, "--model") == [f"{RUNS}/{target}/{variant}/fold{k}/best.pt" for k in (1, 2)]
        assert "--overwrite" in c and options(c, "--device") == ["auto"]


def test_new_rules_ask_for_a_gpu_and_feed_the_report(plan):
    _, text = plan
    for rule in ("evaluate_ensemble", "predict_test_images"):
        blocks = job_blocks(text, rule)
        assert len(blocks) == 4, rule
        for b in blocks:
            res = re.search(r"^\s*resources: (.*)$", b, re.M)[1]
            assert "gpu=1" in res and "cpus_per_task=4" in res, (rule, res)
    (report,) = job_blocks(text, "report")
    inputs = re.search(r"^\s*input: (.*)$", report, re.M)[1]
    for t in ("spleen", "pancreas"):
        for v in ("full", "no_srpp"):
            assert f"{RUNS}/{t}/{v}/ensemble/eval/test" in inputs
            assert f"{RUNS}/{t}/{v}/ensemble/imagesTs" not in inputs  # predictions are not the report's
    (all_,) = job_blocks(text, "all")
    assert f"{RUNS}/spleen/full/ensemble/imagesTs" in all_ and f"{RUNS}/pancreas/no_srpp/ensemble/eval/test" in all_


def test_checkpoint_follows_evaluate_checkpoint_and_folds(tmp_path):
    proj = make_project(tmp_path, CONFIG)
    text = dry_run(proj, "--config", 'evaluate={"checkpoint": "last"}', 'run={"folds": [1, 2], "targets": ["spleen"]}')
    (ens,) = [c for c in commands(text, "evaluate") if "--split" in c and options(c, "--variant") == ["full"]]
    assert options(ens, "--fold") == ["1"] and options(ens, "--run") == [f"{RUNS}/spleen/full/fold{k}" for k in (1, 2)]
    (pred,) = [c for c in commands(text, "predict") if "/full/" in c[2]]
    assert pred[2] == f"{RUNS}/spleen/full/fold1/last.pt"
    assert options(pred, "--model") == [f"{RUNS}/spleen/full/fold2/last.pt"]


def test_without_test_split_or_test_images_the_rules_stay_out(tmp_path):
    cfg = tiny_workflow_config()  # test_fraction 0, no synthetic test images
    proj = make_project(tmp_path, cfg)
    counts = job_counts(dry_run(proj))
    assert counts == {"synth": 1, "prepare": 1, "train": 1, "curves": 1, "evaluate": 1, "report": 1, "all": 1}
    # a test split but no test images: the ensemble is evaluated, nothing is predicted
    text = dry_run(proj, "--config", 'splits={"test_fraction": 0.2}')
    assert job_counts(text) == {**counts, "evaluate_ensemble": 1}
