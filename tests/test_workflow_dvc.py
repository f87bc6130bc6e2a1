"""The workflow under DVC, for real, on a tiny copy of the project.

A temporary project (workflow/, scripts/, dvc.yaml, .dvcignore and config/demo.yaml
replaced by a tiny config: 2 synthetic targets, 64 px, 3 training steps) is put under git
and DVC. Then:

* the workflow runs (synth, prepare, train, evaluate, report), then ``dvc repro demo``
  records it in dvc.lock without redoing any job; ``dvc metrics show`` reads the
  evaluation summaries (numbers only) and ``dvc plots show`` every run's curves;
* a second ``dvc repro`` does nothing;
* changing one target's parameter re-runs that target's jobs only (Snakemake's params
  trigger: each job carries the config sections it reads), checked both on the dry-run
  job list and on which training runs were rewritten;
* ``dvc push`` to a folder remote works offline.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from _snakemake import job_counts, tiny_workflow_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = tiny_workflow_config(targets={"pancreas": {"spacing_mm": [3.0, 3.0]}},
                            run={"targets": ["spleen", "pancreas"]}, evaluate={"save_predictions": True})


def sh(*args, cwd, check=True, timeout=900):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dry_run_jobs(proj) -> dict:
    """{rule: count} from `snakemake -n` (the job-stats table)."""
    out = sh("snakemake", "-n", "--cores", "1", "--configfile", "config/demo.yaml", cwd=proj).stdout
    return job_counts(out)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = tmp_path_factory.mktemp("dvcproj")
    for name in ("workflow", "scripts"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "environment.yml"):
        shutil.copy(REPO / name, proj / name)
    (proj / "config").mkdir()
    (proj / "config" / "demo.yaml").write_text(yaml.safe_dump(TINY))
    shutil.copytree(REPO / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # the stage's code dependency (the installed package is the editable one)
    (proj / ".gitignore").write_text("/data\n/results\n.snakemake/\n")
    sh("git", "init", "-q", cwd=proj)
    sh("dvc", "init", "-q", cwd=proj)
    return proj


def test_dvc_repro_after_the_workflow_then_is_a_no_op(project):
    # as in CI: the workflow runs first (there on SLURM), then DVC records it
    sh("bash", "scripts/workflow.sh", "config/demo.yaml", "2", cwd=project)
    first = sh("dvc", "repro", "demo", cwd=project)
    assert "Running stage 'demo'" in first.stdout, first.stdout
    assert "Nothing to be done" in first.stdout + first.stderr, "DVC's run re-did finished jobs"
    for t in ("spleen", "pancreas"):
        assert (project / f"results/demo/runs/{t}/full/fold0/eval/val/metrics.csv").is_file()
        assert (project / f"results/demo/reports/{t}.html").is_file()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = {o["path"] for o in lock["stages"]["demo"]["outs"]}
    assert {"data/demo", "results/demo/runs", "results/demo/reports"} <= outs
    metrics = sh("dvc", "metrics", "show", "--json", cwd=project).stdout
    shown = json.loads(metrics)
    text = json.dumps(shown)
    assert "fold0_val.json" in text and "dice" in text, metrics
    # the metrics files hold numbers only: DVC reads every one of them
    assert not any(shown.get(rev, {}).get("error") for rev in shown), metrics
    for rev in shown.values():
        for path, entry in rev.get("data", {}).items():
            if not path.startswith("results/demo/"):
                # the real pipeline's stage has not run here: DVC lists its metrics
                # folder as missing, and that is all it may say about it
                assert entry["error"]["type"] == "FileNotFoundError", (path, entry)
                continue
            assert "error" not in entry, (path, entry)
            assert "data" in entry and entry["data"]["auto"]["dice"]["mean"] >= 0, (path, entry)
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=project).stdout)
    drawn = set(plots["data"])
    for t in ("spleen", "pancreas"):
        for kind in ("train", "val"):
            assert f"results/demo/plots/{kind}/{t}/full/fold0.csv" in drawn, sorted(drawn)
    spec = plots["data"]["results/demo/plots/val/spleen/full/fold0.csv"][0]["content"]
    assert spec["encoding"]["x"]["field"] == "step" and "mean_dice" in json.dumps(spec)
    assert {o["path"] for o in lock["stages"]["demo"]["outs"]} >= {"results/demo/plots"}
    second = sh("dvc", "repro", "demo", cwd=project)
    assert "didn't change, skipping" in second.stdout and "Running stage" not in second.stdout, second.stdout
    assert dry_run_jobs(project) == {}


def test_changing_one_target_reruns_only_that_target(project):
    if not (project / "dvc.lock").is_file():
        pytest.fail("needs the previous test's run")
    cfg = yaml.safe_load((project / "config" / "demo.yaml").read_text())
    cfg["targets"]["pancreas"]["hu_window"] = [-120, 260]
    (project / "config" / "demo.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run_jobs(project)
    assert jobs == {"prepare": 1, "train": 1, "curves": 1, "evaluate": 1, "report": 1, "all": 1}, jobs
    spleen_ckpt = project / "results/demo/runs/spleen/full/fold0/last.pt"
    pancreas_ckpt = project / "results/demo/runs/pancreas/full/fold0/last.pt"
    before = (spleen_ckpt.stat().st_mtime_ns, pancreas_ckpt.stat().st_mtime_ns)
    rerun = sh("dvc", "repro", "demo", cwd=project)
    assert "Running stage 'demo'" in rerun.stdout
    assert spleen_ckpt.stat().st_mtime_ns == before[0], "spleen was retrained"
    assert pancreas_ckpt.stat().st_mtime_ns != before[1], "pancreas was not retrained"
    plan = json.loads((project / "data/demo/prepared/pancreas/plan.json").read_text())
    assert plan["target_config"]["hu_window"] == [-120, 260]


def test_dvc_push_to_a_folder_remote(project, tmp_path):
    if not (project / "dvc.lock").is_file():
        pytest.fail("needs the first test's run")
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "--local", "-f", "-d", "folder", str(remote), cwd=project)
    sh("dvc", "push", cwd=project)
    assert any(remote.rglob("*")), "nothing was pushed"
