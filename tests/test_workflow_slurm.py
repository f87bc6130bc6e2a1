"""The Snakemake workflow's SLURM set-up: ./slurm (the `--profile slurm`) and the
workflow profile workflow/profiles/default; per-rule GPUs and CPUs are in the rules.

Without a cluster (always run):

* ``snakemake --lint`` finds nothing (every rule has a ``log:`` and a ``conda:`` env);
* the DAG of a synthetic config with 3 targets x 2 variants x 2 folds has the expected
  jobs per rule (dry run);
* ``--profile slurm`` parses and gives train and evaluate one GPU (dry run; works
  without SLURM installed), also under ``--set-resources`` overrides, with the real
  config's ``--device cuda``; and the helper scripts are valid bash.

With a cluster: one test runs a tiny config end to end through ``--profile slurm`` (in
a temporary copy of the project) and checks the outputs and, with sacct, that every
rule ran as a SLURM job that COMPLETED, train and evaluate with a GPU. It is skipped,
with the reason, when SLURM is not installed or no cluster answers. **CI starts the
cluster before the tests** (as root: ``scripts/slurm/start-cluster.sh``; stop it with
``scripts/slurm/stop-cluster.sh``) and sets ``SAM2_3DMED_REQUIRE_SLURM=1`` so that a
cluster that is not up fails the test instead of skipping it.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _snakemake import job_counts, make_project, tiny_workflow_config

REPO = Path(__file__).resolve().parents[1]

TINY = tiny_workflow_config()  # the smallest useful run: one target, one fold, 3 training steps

GRID = {  # 3 targets x 2 variants x 2 folds, synthetic (dry runs only)
    "data": {"root": "data/demo/raw", "prepared": "data/demo/prepared", "source": "synthetic"},
    "splits": {"folds": 2, "test_fraction": 0.2, "seed": 0},
    "run": {"targets": ["spleen", "pancreas", "lung_tumour"], "variants": ["full", "no_srpp"], "folds": [0, 1]},
    "model": {"pretrained": False},
}


def _env():
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1")
    env.pop("SNAKEMAKE_PROFILE", None)  # this file chooses the profile itself
    return env


def sh(*args, cwd, check=True, timeout=300, env=None):
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env or _env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def job_resources(text: str) -> dict:
    """{rule: resources line} from a dry run's job listing (first job of each rule)."""
    out, rule = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            out.setdefault(rule, line.strip())
    return out


# ------------------------------------------------------------------ without a cluster

def test_lint():
    proc = sh("snakemake", "--lint", "--configfile", "config/demo.yaml", cwd=REPO, check=False)
    findings = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                         if line.startswith("Lints for") or line.lstrip().startswith("* "))
    assert proc.returncode == 0, f"snakemake --lint findings:\n{findings or (proc.stdout + proc.stderr)[-3000:]}"


def test_dag_3_targets_2_variants_2_folds(tmp_path):
    proj = make_project(tmp_path, GRID)
    out = sh("snakemake", "-n", "--cores", "1", "--configfile", "config/run.yaml", cwd=proj).stdout
    # + per target x variant: the folds' ensemble on the test split, and its predictions of imagesTs
    assert job_counts(out) == {"synth": 3, "prepare": 3, "train": 12, "curves": 12, "evaluate": 12, "evaluate_ensemble": 6,
                               "predict_test_images": 6, "report": 1, "all": 1}


def test_slurm_profile_dry_run(tmp_path):
    """`--profile slurm` parses (no cluster needed for -n), the workflow profile is
    loaded with it, and train/evaluate ask for a GPU while the data rules do not."""
    prof = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["slurm-requeue"] is True
    assert prof["slurm-status-command"] == "sacct"
    assert prof["slurm-init-seconds-before-status-checks"] <= 10
    wf = yaml.safe_load((REPO / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert not set(prof) & set(wf), "keys in both profiles: one would replace the other"

    proj = make_project(tmp_path, TINY)
    proc = sh("snakemake", "-n", "--cores", "8", "--profile", "slurm", "--configfile", "config/run.yaml",
              cwd=proj)
    text = proc.stdout + proc.stderr
    assert "Using profiles slurm and workflow specific profile" in text
    assert job_counts(proc.stdout) == {"synth": 1, "prepare": 1, "train": 1, "curves": 1, "evaluate": 1, "report": 1, "all": 1}
    res = job_resources(proc.stdout)
    assert "gpu=1" in res["train"] and "cpus_per_task=8" in res["train"], res["train"]
    assert "gpu=1" in res["evaluate"], res["evaluate"]
    for rule in ("synth", "prepare", "report"):
        assert "gpu" not in res[rule] and "cpus_per_task=1" in res[rule], res[rule]


def test_resource_overrides_keep_the_gpu_and_the_real_config_pins_cuda(tmp_path):
    """`--set-resources train:runtime=2880` (a longer wall time, as users do) changes the
    wall time only: the GPU and CPU requests live in the rules, where a command line's
    set-resources cannot drop them (a profile's set-resources block it replaces whole).
    The real config runs every fold, with --device cuda; the demo keeps auto."""
    proj = make_project(tmp_path, {}, name="unused.yaml")
    shutil.copy(REPO / "config" / "config.yaml", proj / "config" / "config.yaml")
    proc = sh("snakemake", "-n", "-p", "--cores", "8", "--profile", "slurm",
              "--set-resources", "train:runtime=2880", "evaluate:mem_mb=20000", cwd=proj)
    text = proc.stdout
    counts = job_counts(text)
    assert counts["train"] == 15 and counts["evaluate"] == 15, counts  # 3 targets x 5 folds
    assert counts["evaluate_ensemble"] == 3 and counts["predict_test_images"] == 3, counts  # 3 targets x full
    res = job_resources(text)
    assert "gpu=1" in res["train"] and "cpus_per_task=8" in res["train"] and "runtime=2880" in res["train"], res
    assert "gpu=1" in res["evaluate"] and "cpus_per_task=4" in res["evaluate"] and "mem_mb=20000" in res["evaluate"]
    assert "gpu" not in res["prepare"], res["prepare"]
    for rule in ("evaluate_ensemble", "predict_test_images"):
        assert "gpu=1" in res[rule] and "cpus_per_task=4" in res[rule], res
    train_cmds = [line for line in text.splitlines() if "sam2-3dmed train " in line]
    eval_cmds = [line for line in text.splitlines() if "sam2-3dmed evaluate " in line]
    assert len(train_cmds) == 15 and all("--device cuda" in c for c in train_cmds), train_cmds[:1]
    assert len(eval_cmds) == 18 and all("--device cuda" in c for c in eval_cmds), eval_cmds[:1]  # + 3 ensembles
    ens_cmds = [c for c in eval_cmds if "--split test" in c]
    assert len(ens_cmds) == 3 and all(c.count(" --run ") == 5 for c in ens_cmds), ens_cmds[:1]  # 5 folds each
    pred_cmds = [line for line in text.splitlines() if "sam2-3dmed predict " in line]
    assert len(pred_cmds) == 3 and all("--device cuda" in c and c.count(" --model ") == 4 for c in pred_cmds)
    assert {re.search(r"--fold (\d)", c).group(1) for c in train_cmds} == set("01234")

    demo = make_project(tmp_path / "demo", TINY)
    text = sh("snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/run.yaml", cwd=demo).stdout
    assert "--device auto" in text and "--device cuda" not in text


def test_cluster_scripts_are_valid_bash():
    for name in ("start-cluster.sh", "stop-cluster.sh"):
        script = REPO / "scripts" / "slurm" / name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        sh("bash", "-n", str(script), cwd=REPO)


# ------------------------------------------------------------------ with a cluster

def _cluster_problem() -> str | None:
    """Why the SLURM cluster tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "SLURM is not installed (no sinfo/sacct); start one with scripts/slurm/start-cluster.sh"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
        if states.returncode != 0 or not re.search(r"^(idle|mix|alloc)", states.stdout, flags=re.M):
            return f"no SLURM node is up (sinfo: {(states.stdout + states.stderr).strip()[:200]!r})"
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True, timeout=20)
        if acct.returncode != 0:  # the slurm executor's status queries would fail and hang the run
            return f"sacct does not answer (no slurmdbd?): {acct.stderr.strip()[:200]}"
    except subprocess.TimeoutExpired:
        return "SLURM commands time out"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("SAM2_3DMED_REQUIRE_SLURM") == "1":
            pytest.fail(f"SAM2_3DMED_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def run_snakemake(args, cwd, limit_s):
    """Run snakemake; past LIMIT_S send it one SIGINT (it then scancels its SLURM jobs;
    SIGTERM would make it wait for them, SIGKILL would leave them running)."""
    proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=limit_s)
        return proc.returncode, out, False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return proc.returncode, out, True


@pytest.mark.slow
def test_tiny_run_on_slurm(cluster, tmp_path):
    proj = make_project(tmp_path, TINY)
    t0 = time.monotonic()
    rc, out, timed_out = run_snakemake(
        ["snakemake", "--cores", "8", "--profile", "slurm", "--configfile", "config/run.yaml"],
        cwd=proj, limit_s=240)
    took = time.monotonic() - t0
    run_id = re.search(r"SLURM run ID: (\S+)", out)
    if run_id and (timed_out or rc != 0):  # never leave jobs of a failed run behind
        subprocess.run(["scancel", "--name", run_id.group(1)], capture_output=True, timeout=30)
    assert not timed_out, f"snakemake still running after 240 s (stopped with SIGINT):\n{out[-4000:]}"
    assert rc == 0, f"snakemake failed ({rc}) after {took:.0f} s:\n{out[-4000:]}"
    assert run_id, out[-2000:]

    run = proj / "results/demo/runs/spleen/full/fold0"
    for f in ("data/demo/prepared/spleen/fingerprint.json", "results/demo/reports/index.html",
              "results/demo/metrics/spleen/full/fold0_val.json"):
        assert (proj / f).is_file(), f
    assert (run / "train_summary.json").is_file() and (run / "eval/val/summary.json").is_file()

    # every job was a SLURM job of this run, and completed
    acct = subprocess.run(["sacct", "-X", "-P", "-n", "--name", run_id.group(1), "--starttime", "now-1hours",
                           "-o", "JobID,State,Comment,AllocTRES"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("|") for line in acct.splitlines() if line.strip()]
    assert len(rows) == 5 and all(r[1] == "COMPLETED" for r in rows), acct
    comments = [r[2] for r in rows]
    if all(comments):  # the cluster stores job comments (AccountingStoreFlags=job_comment)
        rules = {re.match(r"rule_([a-z_]+?)(?:_wildcards_|$)", c).group(1): r for c, r in zip(comments, rows)}
        assert set(rules) == {"synth", "prepare", "train", "evaluate", "report"}, comments
        assert "gres/gpu=1" in rules["train"][3] and "gres/gpu=1" in rules["evaluate"][3], acct
        assert "gres/gpu" not in rules["prepare"][3], acct
