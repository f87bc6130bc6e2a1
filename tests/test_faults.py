"""Faults survived, for real: SIGKILL during training, a killed download, a full or
read-only disk, Ctrl-C (SIGINT) to Snakemake.

* ``train`` is killed with SIGKILL several times at seeded random moments (some while a
  checkpoint is being written) and restarted until it completes; it must end exactly
  where an uninterrupted run ends (weights, logs, best checkpoint) with no temp files.
* ``fetch-msd`` is SIGKILLed halfway through a (throttled) download from a local HTTP
  server; the next run resumes it with a Range request and extracts the verified task.
* On a small tmpfs filled to the last byte, ``synth``, ``prepare``, ``train``,
  ``predict`` and ``evaluate`` fail with one line ``error: <output>: ... (No space left on
  device)``, leave no temp files, and leave what was there byte for byte; on a read-only
  mount (EROFS) and in a 0555 folder for user ``nobody`` (EACCES) they fail the same way.
  Mounting needs root with CAP_SYS_ADMIN (CI has it); without it those tests skip,
  saying why.
* Snakemake gets SIGINT (only its own process, as ``timeout --foreground -s INT`` sends
  it) while the train job runs; no job outlives it, the rerun redoes no finished job, the
  train job resumes from its checkpoint, and the workflow completes. (Snakemake 9 lets
  the running job finish and marks its output incomplete; the workflow profile's
  ``rerun-incomplete`` makes the plain rerun redo it instead of refusing to start.)
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _cli import one_line_error, run_cli
from _snakemake import job_counts, tiny_workflow_config
from _tiny import make_tiny_target, tiny_config
from sam2_3dmed.model.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
ENV = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1",
           PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
STEPS = 8
# a frozen (random) encoder keeps the checkpoints small (~165 MB instead of ~490 MB)
OVERRIDES = tiny_config(targets={"spleen": {"slice_spacing_mm": 8.0}},  # ~20 slices per volume
                        model={"freeze_encoder": True}, train={"steps": STEPS})
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# --- shared setup ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-case synthetic spleen task, its prepared target and the config."""
    t = make_tiny_target(tmp_path_factory.mktemp("faults"), OVERRIDES)
    return {"root": t.root, "task": t.task, "cfg": t.cfg_path, "prep": t.prepared}


def train_args(tiny, out, *extra) -> list:
    return ["train", "--config", tiny["cfg"], "--target", "spleen", "--fold", 0, "--out", out,
            "--prepared", tiny["prep"], "--device", "cpu", *extra]


def start_cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sam2_3dmed.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 900) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tiny):
    """Two runs, side by side: ``reference`` uninterrupted (the kill test's reference; its
    best.pt serves predict and evaluate) and ``stopped`` after step 2 (last.pt of step 2)."""
    root = tiny["root"]
    ref = start_cli(*train_args(tiny, root / "reference"))
    stopped = start_cli(*train_args(tiny, root / "stopped", "--stop-after-step", 2))
    r, s = finish(ref), finish(stopped)
    assert r.returncode == 0, r.stderr
    assert s.returncode == 75, s.stderr
    return {"reference": root / "reference", "stopped": root / "stopped"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict:
    """{relative path: content hash or 'dir'} of everything under root, hidden files included."""
    if root.is_file():
        return {".": sha256(root)}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else sha256(p)) for p in sorted(root.rglob("*"))}


# --- 1. SIGKILL during training -------------------------------------------------------


def _temps(out: Path) -> set[str]:
    try:
        return {n for n in os.listdir(out) if n.startswith((".last.pt.tmp-", ".best.pt.tmp-"))}
    except FileNotFoundError:
        return set()


def _stat_id(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_at(proc, out: Path, how: str, rng: random.Random) -> str | None:
    """Wait for the moment ``how`` names, SIGKILL ``proc`` after a random delay; return
    what was seen, or None if the run ended before the moment came."""
    last = out / "last.pt"
    seen_temps, last_id = _temps(out), _stat_id(last)
    while proc.poll() is None:
        if how == "mid-write":
            # a checkpoint is being written: its temp file just appeared
            new = _temps(out) - seen_temps
            if new:
                time.sleep(rng.uniform(0.0, 0.05))
                proc.send_signal(signal.SIGKILL)
                return f"while writing {sorted(new)[0].split('.tmp-')[0][1:]}"
        else:
            # a checkpoint was just committed: kill somewhere in the next steps
            if _stat_id(last) != last_id:
                delay = rng.uniform(0.0, 2.0)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                return f"{delay:.2f} s after a checkpoint"
        time.sleep(0.003)
    return None


def _kill_until_done(tiny, out: Path, seed: int, max_kills: int = 4) -> list[dict]:
    """Start the run, SIGKILL it at seeded random moments, restart, until it completes."""
    rng = random.Random(seed)
    kills: list[dict] = []
    for attempt in range(max_kills + 4):
        log = out.parent / f"{out.name}.attempt{attempt}.log"
        with open(log, "w") as fh:
            cmd = [sys.executable, "-m", "sam2_3dmed.cli", *map(str, train_args(tiny, out))]
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
        try:
            moment = None
            if len(kills) < max_kills:
                how = rng.choice(["mid-write", "after-commit", "after-commit"])
                if len(kills) >= 2 and not any(k["temp_left"] for k in kills):
                    how = "mid-write"  # make sure some kill lands in a checkpoint write
                moment = _kill_at(proc, out, how, rng)
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc == 0:
            return kills
        assert rc == -signal.SIGKILL, (rc, log.read_text()[-3000:])
        state = load_checkpoint(out / "last.pt") if (out / "last.pt").exists() else None  # never corrupt
        kills.append({"moment": moment, "checkpoint_step": state["step"] if state else 0,
                      "temp_left": sorted(_temps(out)),
                      "mid_run": not (out / "train_summary.json").exists()})
    raise AssertionError(f"the run did not complete after {len(kills)} kills: {kills}")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sigkill_during_training_ends_like_an_uninterrupted_run(tiny, runs):
    reference = runs["reference"]
    for seed in range(3):  # retry the draw if the run outpaced the kills
        out = tiny["root"] / f"killed{seed}"
        kills = _kill_until_done(tiny, out, seed)
        mid_run = [k for k in kills if k["mid_run"]]
        if len(mid_run) >= 3 and any(k["temp_left"] for k in kills):
            break
        shutil.rmtree(out)
    print(f"kills: {kills}")
    assert len(mid_run) >= 3, f"only {len(mid_run)} kills landed mid-run: {kills}"
    assert any(k["temp_left"] for k in kills), f"no kill landed while a checkpoint was written: {kills}"
    assert any("resuming" in p.read_text() for p in out.parent.glob(f"{out.name}.attempt*.log"))

    ref_last, got_last = load_checkpoint(reference / "last.pt"), load_checkpoint(out / "last.pt")
    assert got_last["step"] == ref_last["step"] == STEPS
    assert _max_diff(ref_last["trainable"], got_last["trainable"]) <= 1e-6, "weights differ"
    for key in ("exp_avg", "exp_avg_sq"):  # the optimiser state too
        ra = dict(enumerate(s[key] for s in ref_last["optimizer"]["state"].values()))
        rb = dict(enumerate(s[key] for s in got_last["optimizer"]["state"].values()))
        assert _max_diff(ra, rb) <= 1e-6, key

    ref_rows, got_rows = _rows(reference / "train_log.csv"), _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in got_rows] == list(range(1, STEPS + 1))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(got_rows) == strip(ref_rows)
    assert (out / "val_log.csv").read_bytes() == (reference / "val_log.csv").read_bytes()

    ref_best, got_best = load_checkpoint(reference / "best.pt"), load_checkpoint(out / "best.pt")
    assert got_best["step"] == ref_best["step"] and got_best["best_dice"] == ref_best["best_dice"]
    assert _max_diff(ref_best["trainable"], got_best["trainable"]) <= 1e-6
    assert (out / "train_summary.json").is_file()
    names = sorted(os.listdir(out))
    assert names == ["best.pt", "last.pt", "train_log.csv", "train_summary.json", "val_log.csv"], names


# --- 2. a download killed and resumed --------------------------------------------------


def test_killed_download_resumes_with_a_range_request(server, tiny, tmp_path):
    task = tiny["task"]
    tar_path = tmp_path / "Task09_Spleen.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(task, arcname=task.name)
    data = tar_path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    url = server.serve(tar_path)
    server.throttle = (16 << 10, 0.05)  # ~300 KB/s: a few seconds for the whole tar
    out = tmp_path / "out"
    part = out / ".Task09_Spleen.tar.part"
    cmd = [sys.executable, "-m", "sam2_3dmed.cli", "fetch-msd", "Task09_Spleen", "--out", str(out),
           "--url", url, "--md5", md5]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= len(data) // 4:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the download ended before it could be killed"
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert os.listdir(out) == [part.name]  # no task folder, nothing else
    assert data.startswith(part.read_bytes())

    server.throttle = None
    done = run_cli("fetch-msd", "Task09_Spleen", "--out", out, "--url", url, "--md5", md5, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert server.requests[0] == (f"/{tar_path.name}", None)
    assert server.requests[-1] == (f"/{tar_path.name}", f"bytes={kept}-"), server.requests
    assert len(server.requests) == 2
    assert os.listdir(out) == ["Task09_Spleen"]  # the .part is gone
    assert snapshot(out / "Task09_Spleen") == snapshot(task)


# --- 3. full disk, read-only disk, unwritable folder ------------------------------------


def _sh(*args):
    return subprocess.run(list(args), capture_output=True, text=True)


@pytest.fixture()
def small_disk():
    """Mount a tmpfs (``mount(size)``) in a world-traversable folder; unmount afterwards."""
    base = Path(tempfile.mkdtemp(prefix="sam2_3dmed-faults-"))
    base.chmod(0o755)  # user nobody must reach it
    mounted = []

    def mount(size: str) -> Path:
        mnt = base / f"disk{len(mounted)}"
        mnt.mkdir()
        r = _sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt))
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN; CI has it): {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        if _sh("umount", str(mnt)).returncode != 0:
            _sh("umount", "-l", str(mnt))
    shutil.rmtree(base, ignore_errors=True)


def fill(mnt: Path) -> None:
    """Fill the file system of ``mnt`` to the last byte."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    assert shutil.disk_usage(mnt).free == 0


def assert_refused(proc, path: Path, problem: str, under: bool = False) -> str:
    """One line ``error: PATH: ... PROBLEM`` (PATH or, with ``under``, a path inside it),
    exit 1, no traceback."""
    line = one_line_error(proc)
    named = line.split(": ")[1]
    assert named == str(path) or (under and named.startswith(f"{path}/")), (line, path)
    assert problem.lower() in line.lower(), (line, problem)
    return line


def test_full_disk_synth_and_prepare_keep_what_was_there(tiny, small_disk):
    mnt = small_disk("3m")
    shutil.copytree(tiny["task"], mnt / "raw" / "Task09_Spleen")  # earlier results in that place
    shutil.copytree(tiny["prep"], mnt / "prep")
    before = snapshot(mnt)
    fill(mnt)

    r = run_cli("prepare", tiny["task"], "--target", "spleen", "--out", mnt / "prep", "--config", tiny["cfg"],
                "--overwrite")
    assert_refused(r, mnt / "prep", NO_SPACE)
    r = run_cli("synth", "Task09_Spleen", "--out", mnt / "raw", "--cases", 4, "--test-cases", 0, "--seed", 1,
                "--size", 48, "--overwrite")
    assert_refused(r, mnt / "raw" / "Task09_Spleen", NO_SPACE)
    r = run_cli("synth", "Task09_Spleen", "--out", mnt / "new" / "raw", "--cases", 2, "--size", 48)
    assert_refused(r, mnt / "new" / "raw" / "Task09_Spleen", NO_SPACE)

    (mnt / "filler").unlink()
    assert snapshot(mnt) == before  # byte for byte; no temp files, no new (empty) folders


@pytest.mark.slow
def test_full_disk_train_predict_evaluate_keep_what_was_there(tiny, runs, small_disk):
    reference = runs["reference"]
    mnt = small_disk("200m")
    run = mnt / "run"
    shutil.copytree(runs["stopped"], run)  # last.pt of step 2: resuming writes best.pt at step 3
    image = next((tiny["task"] / "imagesTr").glob("*.nii.gz"))
    shutil.copy(image, mnt / "pred.nii.gz")  # an earlier prediction (any file the user had)
    (mnt / "eval").mkdir()
    (mnt / "eval" / "metrics.csv").write_text("case_id,mode,dice\nspleen_0,auto,0.5\n")
    before = snapshot(mnt)
    fill(mnt)

    # side by side (each fails on its own output): three model loads take a while
    train = start_cli(*train_args(tiny, run))
    predict = start_cli("predict", reference / "best.pt", image, mnt / "pred.nii.gz", "--device", "cpu",
                        "--overwrite")
    evaluate = start_cli("evaluate", "--config", tiny["cfg"], "--target", "spleen", "--fold", 0, "--run",
                         reference, "--prepared", tiny["prep"], "--out", mnt / "eval", "--device", "cpu",
                         "--max-cases", 1, "--overwrite")
    assert_refused(finish(train), run / "best.pt", NO_SPACE)
    assert_refused(finish(predict), mnt / "pred.nii.gz", NO_SPACE)
    assert_refused(finish(evaluate), mnt / "eval", NO_SPACE, under=True)  # e.g. eval/predictions/CASE.nii.gz

    (mnt / "filler").unlink()
    assert snapshot(mnt) == before  # byte for byte; no temp files


def test_read_only_disk_is_refused_naming_the_folder(tiny, small_disk):
    mnt = small_disk("3m")
    shutil.copytree(tiny["prep"], mnt / "prep")
    (mnt / "raw").mkdir()
    before = snapshot(mnt)
    r = _sh("mount", "-o", "remount,ro", str(mnt))
    assert r.returncode == 0, r.stderr
    r = run_cli("prepare", tiny["task"], "--target", "spleen", "--out", mnt / "prep", "--config", tiny["cfg"],
                "--overwrite")
    assert_refused(r, mnt, "read-only")
    r = run_cli("synth", "Task09_Spleen", "--out", mnt / "raw", "--cases", 2, "--size", 48)
    assert_refused(r, mnt / "raw", "read-only")
    r = run_cli("synth", "Task09_Spleen", "--out", mnt / "new" / "raw", "--cases", 2, "--size", 48)
    assert_refused(r, mnt / "new" / "raw", "read-only")
    assert snapshot(mnt) == before


def test_unwritable_folder_is_refused_for_an_ordinary_user(tiny, small_disk):
    mnt = small_disk("3m")
    locked = mnt / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import sam2_3dmed.cli"], capture_output=True,
                           text=True, cwd=mnt)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python environment: {probe.stderr.strip()[-300:]}")
    for out, named in ((locked, locked), (locked / "sub", locked / "sub")):
        r = subprocess.run([*as_nobody, sys.executable, "-m", "sam2_3dmed.cli", "synth", "Task09_Spleen",
                            "--out", str(out), "--cases", "2", "--size", "48"],
                           capture_output=True, text=True, cwd=mnt, env=ENV, timeout=300)
        assert_refused(r, named, "not writable" if out == locked else "Permission denied")
    assert os.listdir(locked) == []


# --- 4. Ctrl-C to Snakemake, then the rerun ---------------------------------------------

SMK = tiny_workflow_config(data={"synthetic": {"cases": 4, "size": 48}},
                           targets={"spleen": {"slice_spacing_mm": 8.0}}, model={"freeze_encoder": True},
                           train={"steps": 4, "checkpoint_every": 1, "val_every": 4},
                           evaluate={"save_predictions": True})


def _project_processes(proj: Path) -> list[str]:
    """Command lines of live processes working in (or naming) the project folder."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(proj) in cmd or cwd == str(proj) or cwd.startswith(f"{proj}/")):
            found.append(cmd)
    return found


def _mtimes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_snakemake_sigint_then_rerun_redoes_nothing_finished(tmp_path):
    """SIGINT to Snakemake alone (as ``timeout --foreground -s INT`` sends it): Snakemake 9
    lets the running train job finish, then exits non-zero with that job's output marked
    incomplete. The rerun (the workflow profile says ``rerun-incomplete``) redoes only that
    job (which resumes from its last.pt) and the ones after it."""
    proj = tmp_path / "proj"
    for name in ("workflow", "scripts"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "environment.yml", proj / "environment.yml")
    (proj / "config").mkdir()
    (proj / "config" / "demo.yaml").write_text(yaml.safe_dump(SMK))
    # one thread per job: the machine has 2 cores (CI caps threads with SNAKEMAKE_MAX_THREADS)
    cmd = ["snakemake", "--cores", "2", "--max-threads", "1", "--configfile", "config/demo.yaml"]
    env = {k: v for k, v in ENV.items() if k != "SNAKEMAKE_PROFILE"}
    run_dir = proj / "results/demo/runs/spleen/full/fold0"
    steps = SMK["train"]["steps"]

    with open(tmp_path / "first.log", "w") as fh:
        # SIGINT back to its default: a shell that starts this run in the background (nohup,
        # `cmd &` in a script, some CI runners) makes its children ignore SIGINT, and Snakemake
        # would then never see the signal this test sends
        first = subprocess.Popen(cmd, cwd=proj, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "last.pt").exists():  # the train job has checkpointed step >= 1
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the train job never checkpointed"
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # to Snakemake alone, not its process group
        rc = first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    first_log = (tmp_path / "first.log").read_text()
    assert rc != 0 and "Terminating processes on user request" in first_log, first_log[-3000:]
    assert not (proj / "results/demo/reports/index.html").exists()
    assert _project_processes(proj) == [], "a job outlived the interrupted Snakemake"
    data_before = _mtimes(proj / "data")
    assert data_before, "the data jobs did not run"

    rerun = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, env=env, timeout=900)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    jobs = job_counts(out)
    assert jobs == {"train": 1, "curves": 1, "evaluate": 1, "report": 1, "all": 1}, jobs  # no synth, no prepare
    assert _mtimes(proj / "data") == data_before, "finished data jobs' outputs were touched"
    train_log = (proj / "results/demo/logs/train/spleen_full_fold0.log").read_text()
    assert "resuming spleen/full/fold 0 from step" in train_log, train_log[-2000:]  # not trained over again
    assert load_checkpoint(run_dir / "last.pt")["step"] == steps
    assert [int(r["step"]) for r in _rows(run_dir / "train_log.csv")] == list(range(1, steps + 1))
    assert (run_dir / "train_summary.json").is_file()
    assert (run_dir / "eval" / "val" / "metrics.csv").is_file()
    assert (proj / "results/demo/reports/index.html").is_file()
    assert (proj / "results/demo/reports/spleen.html").is_file()
