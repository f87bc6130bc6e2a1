"""How the workflow's config is chosen, and the README's `make demo` in a clean shell.

Snakemake users choose a config with ``--configfile`` and override keys with ``--config``;
both must reach every job, deep-merged over the built-in defaults and validated before
the DAG is built (an unknown target or variant is a one-line error then, not a job failure
hours later). ``make demo`` must run from a shell with nothing set, and with
SNAKEMAKE_PROFILE set to the empty string (Snakemake reads that variable as its default
``--profile``: an empty one stopped every fresh clone's first command).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _snakemake import REPO, job_counts, make_project, tiny_workflow_config
from sam2_3dmed.config import DEFAULT_WORKFLOW_CONFIG, load_config, workflow_config
from sam2_3dmed.errors import ConfigError

TINY = tiny_workflow_config(splits={"folds": 3})  # one target, one variant, one fold (dry runs only)
ONE_OF_EACH = {"synth": 1, "prepare": 1, "train": 1, "curves": 1, "evaluate": 1, "report": 1, "all": 1}
# config/demo.yaml has a held-out test split and synthetic test images: the fold's model is
# also scored on the test split (an ensemble of one fold) and predicts the test images
DEMO_JOBS = {**ONE_OF_EACH, "evaluate_ensemble": 1, "predict_test_images": 1}


def snakemake(proj, *args, check=True):
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's snakemake
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "1", *args], cwd=proj, capture_output=True,
                          text=True, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, f"snakemake {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def merged_config_of(proc, proj) -> dict:
    """The merged config file the jobs of a dry run read (from their printed commands)."""
    paths = set(re.findall(r"--config (results/demo/configs/[0-9a-f]{12}\.yaml)", proc.stdout))
    assert len(paths) == 1, proc.stdout[-3000:]
    return yaml.safe_load((proj / paths.pop()).read_text())


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "File \"" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert job_counts(proc.stdout) == {}, "a DAG was built despite the error"
    return errors[0]


@pytest.fixture()
def proj(tmp_path):
    return make_project(tmp_path, TINY, name="tiny.yaml")


# ------------------------------------------------------------------ choosing the config

def test_configfile_selects_the_config(proj):
    (proj / "config" / "config.yaml").write_text(yaml.safe_dump({**TINY, "run": {**TINY["run"], "folds": [0, 1, 2]}}))
    assert job_counts(snakemake(proj).stdout)["train"] == 3  # the default file, config/config.yaml
    proc = snakemake(proj, "--configfile", "config/tiny.yaml")
    assert job_counts(proc.stdout) == ONE_OF_EACH
    assert "sam2-3dmed: config config/tiny.yaml (merged: results/demo/configs/" in proc.stderr
    assert merged_config_of(proc, proj) == load_config(proj / "config" / "tiny.yaml")


def test_later_configfiles_override_earlier_ones(proj):
    (proj / "config" / "more.yaml").write_text(yaml.safe_dump({"run": {"folds": [1, 2]}, "train": {"steps": 7}}))
    proc = snakemake(proj, "--configfile", "config/tiny.yaml", "config/more.yaml")
    assert job_counts(proc.stdout)["train"] == 2
    merged = merged_config_of(proc, proj)
    assert merged["train"]["steps"] == 7 and merged["run"]["targets"] == ["spleen"]


def test_config_overrides_deep_merge_typed_and_reach_the_jobs(proj):
    proc = snakemake(proj, "--configfile", "config/tiny.yaml", "--config",
                     'run={"folds": [0, 1]}', 'train={"steps": 5, "lr": 0.0003, "amp": false}')
    assert job_counts(proc.stdout)["train"] == 2  # folds [0, 1]; targets and variants kept from the file
    assert "config/tiny.yaml + --config" in proc.stderr
    merged = merged_config_of(proc, proj)
    # Snakemake hands nested values over as strings ('5'); the jobs get numbers and booleans
    assert merged["train"]["steps"] == 5 and merged["train"]["lr"] == 0.0003 and merged["train"]["amp"] is False
    assert {k: merged["run"][k] for k in ("targets", "variants", "folds")} == \
        {"targets": ["spleen"], "variants": ["full"], "folds": [0, 1]}
    assert merged["run"]["device"] == "auto" and merged["run"]["results"] is None  # the built-in defaults
    assert merged["model"]["image_size"] == 64  # from the file, untouched by the overrides


def test_config_overrides_apply_to_the_default_config(proj):
    (proj / "config" / "config.yaml").write_text(yaml.safe_dump(TINY))
    proc = snakemake(proj, "--config", 'run={"folds": [2]}')
    assert job_counts(proc.stdout)["train"] == 1
    assert "fold2" in proc.stdout and "fold0" not in proc.stdout


def test_config_file_key_still_selects_the_file(proj):
    proc = snakemake(proj, "--config", "config_file=config/tiny.yaml", 'train={"steps": 4}')
    assert job_counts(proc.stdout) == ONE_OF_EACH
    assert merged_config_of(proc, proj)["train"]["steps"] == 4


def test_a_changed_override_is_a_new_merged_file_and_reruns_only_what_reads_it(proj):
    first = merged_config_of(snakemake(proj, "--configfile", "config/tiny.yaml"), proj)
    proc = snakemake(proj, "--configfile", "config/tiny.yaml", "--config", 'train={"steps": 9}')
    assert merged_config_of(proc, proj) == {**first, "train": {**first["train"], "steps": 9}}
    assert len(list((proj / "results/demo/configs").glob("*.yaml"))) == 2  # the first one is untouched


# ------------------------------------------------------------------ wrong configs: one line, before any job

@pytest.mark.parametrize("args,expect", [
    (["--config", 'run={"variants": ["bogus"]}'], "run.variants: unknown variant 'bogus'"),
    (["--config", 'run={"targets": ["liver"]}'], "run.targets: unknown target 'liver'"),
    (["--config", 'run={"folds": [5]}'], "run.folds: fold 5 does not exist"),
    (["--config", 'train={"stepz": 3}'], "train.stepz: unknown key"),
    (["--config", 'model={"pretrained": true}'], "variants.full: model.checkpoint: required"),
    (["--config", "config_file=config/tiny.yaml"], "--config: choose the config once"),
])
def test_bad_merged_config_is_one_line_error_at_dag_build(proj, args, expect):
    line = one_error_line(snakemake(proj, "--configfile", "config/tiny.yaml", *args, check=False))
    assert expect in line, line
    if args[1] != "config_file=config/tiny.yaml":
        assert line.startswith("error: config/tiny.yaml + --config: "), line  # names where it came from


def test_missing_default_config_is_one_line_error(proj):
    line = one_error_line(snakemake(proj, check=False))
    assert line == f"error: {DEFAULT_WORKFLOW_CONFIG}: config file does not exist"


def test_bad_key_in_a_configfile_names_the_file(proj):
    (proj / "config" / "bad.yaml").write_text("targets:\n  spleen:\n    hu_windw: [0, 1]\n")
    line = one_error_line(snakemake(proj, "--configfile", "config/bad.yaml", check=False))
    assert line == "error: config/bad.yaml: targets.spleen.hu_windw: unknown key"


def test_workflow_config_unit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(TINY))
    # no --configfile: the config_file key's file, then the typed overrides
    cfg, source = workflow_config({"config_file": "a.yaml", "train": {"steps": "12"}}, [],
                                  {"config_file": "a.yaml", "train": {"steps": "12"}})
    assert source == "a.yaml + --config" and cfg["train"]["steps"] == 12
    # --configfile: Snakemake's merged mapping (files + untyped overrides) is typed again
    merged = {**TINY, "run": {**TINY["run"], "folds": ["0", "1"]}}
    cfg, source = workflow_config(merged, [tmp_path / "a.yaml"], {"run": {"folds": ["0", "1"]}})
    assert source == "a.yaml + --config" and cfg["run"]["folds"] == [0, 1]
    # strings stay strings; only numbers, booleans and null are read as such
    cfg, _ = workflow_config(TINY, [tmp_path / "a.yaml"], {"evaluate": {"split": "test"}, "model": {"checkpoint": "null"}})
    assert cfg["evaluate"]["split"] == "test" and cfg["model"]["checkpoint"] is None
    with pytest.raises(ConfigError, match="config_file: must be a file name"):
        workflow_config({}, [], {"config_file": 3})


# ------------------------------------------------------------------ the README's `make demo`, clean shell

def _clean_env(**extra):
    """What a newcomer's fresh shell has (`env -i HOME=$HOME PATH=/usr/bin:/bin LANG=C.UTF-8`)."""
    return {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the project's tracked files (as a fresh clone has them) using this .venv."""
    venv = REPO / ".venv"
    if not (venv / ".sam2_3dmed-setup").is_file():
        pytest.skip("needs the project's .venv made by scripts/setup.sh (make setup)")
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    (root / ".venv").symlink_to(venv)  # scripts/setup.sh finds it up to date and installs nothing
    return root


def make_demo(checkout, **env):
    """`make demo` exactly as the README gives it, plus SNAKEMAKE_ARGS=--dry-run."""
    return subprocess.run(["make", "demo", "SNAKEMAKE_ARGS=--dry-run"], cwd=checkout, capture_output=True, text=True,
                          env=_clean_env(**env), timeout=600)


@pytest.mark.parametrize("profile", [None, ""], ids=["SNAKEMAKE_PROFILE unset", "SNAKEMAKE_PROFILE empty"])
def test_make_demo_in_a_clean_shell(checkout, profile):
    proc = make_demo(checkout, **({} if profile is None else {"SNAKEMAKE_PROFILE": profile}))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "invalid profile" not in text
    assert "[setup] .venv is up to date" in proc.stdout
    assert "sam2-3dmed: config config/demo.yaml" in proc.stderr
    assert job_counts(proc.stdout) == DEMO_JOBS
    assert "Using profiles slurm" not in text


def test_make_demo_with_the_slurm_profile(checkout):
    proc = make_demo(checkout, SNAKEMAKE_PROFILE="slurm")  # a dry run needs no cluster
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Using profiles slurm and workflow specific profile" in text
    assert job_counts(proc.stdout) == DEMO_JOBS


def test_make_test_fast_deselects_slow_tests():
    proc = subprocess.run(["make", "-n", "test-fast"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and '-m "not slow"' in proc.stdout, proc.stdout + proc.stderr


def test_make_demo_variants_adds_the_nnunet_arm(checkout):
    """`make demo VARIANTS=full,nnunet` (README): the demo's DAG plus the nnU-Net arm's planning,
    training, evaluations and test-image prediction; nothing else changes."""
    proc = subprocess.run(["make", "demo", "VARIANTS=full,nnunet", "SNAKEMAKE_ARGS=--dry-run"], cwd=checkout,
                          capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = job_counts(proc.stdout)
    assert jobs["nnunet_plan"] == 1, jobs
    for rule in ("train", "evaluate", "evaluate_ensemble", "predict_test_images", "curves"):
        assert jobs[rule] == 2 * DEMO_JOBS[rule], (rule, jobs)
    assert "--variant nnunet" in proc.stdout or "variant=nnunet" in proc.stdout
