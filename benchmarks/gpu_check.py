"""The GPU check's driver: what ``scripts/gpu-check.sh`` runs on a GPU node (a short slot,
so everything here is sized to finish in under 8 minutes), and, with ``--dry-run``, on
a CPU in CI (small settings, under 3 minutes on 2 cores).

Steps (each timed; each one's result goes into OUT/gpu_check.json as soon as it ends,
written atomically, with status ``ok``, ``none`` (nothing to run), ``fail`` (it ran, a check
did not pass) or ``error`` (it did not run through), so one failing step keeps the others'
figures):

1. ``cuda_tests``: ``pytest -m cuda -q`` over the test files that use the ``cuda`` marker
   (collecting all of tests/ would import packages the node does not have); pytest's exit
   code 5 (none selected) counts as ``none``. Passed/skipped/failed from its JUnit XML.
2. ``train``: a synthetic Task09_Spleen (``synth``, 3 cases) is prepared (``prepare``) and
   trained with the real settings (Hiera-small, 512 px, clips of 12, encoder frozen, bf16
   autocast, train.deterministic true; random init: no SAM2 weights on the node) for 30
   steps, twice: run A uninterrupted (s/step = median of train_log.csv's ``seconds`` without
   step 1; peak GPU memory from train_summary.json), run B stopped after step 15
   (``--stop-after-step``, exit 75) and resumed to step 30. The trainable tensors of A's and
   B's last.pt are compared: bitwise on a CPU; on CUDA with train.deterministic bitwise is
   expected too, the pass mark is atol 1e-6 (both are recorded). Should deterministic
   algorithms be refused on the card, the error is recorded and A and B run again with
   train.deterministic false, so that the other figures still come.
3. ``predict``: ``sam2-3dmed predict RUN_A/best.pt in.nii.gz out.nii.gz`` on a 300-slice
   512 x 512 synthetic CT (0.8 x 0.8 x 2.5 mm) in a subprocess (whole command timed), then
   in-process ``predict_by_propagation`` on a random volume of the same size for peak GPU
   memory and the feature-cache size.
4. ``bench_infer``: ``benchmarks/bench_infer.py --device cuda`` (ours vs SAM2VideoPredictor,
   same weights, frames and box; our full passes in lockstep), float32 on both sides, then,
   time allowing, full passes again with both sides under bf16 autocast (``--amp``); its
   BENCH lines are stored as they are.

``python benchmarks/run_all.py --from-gpu-check OUT`` turns OUT/gpu_check.json into
RESULTS.md rows (jobs gpu_tests, gpu_train, gpu_predict, gpu_infer).

OUT receives only gpu_check.json and the config YAML (gpu-check.sh adds gpu-check.log, in
which every command's output is streamed), so that a remote node's output stays small. Data,
checkpoints and per-command logs go to a temporary work folder (``--work``, removed at the
end unless ``--keep-work``).

Usage: python benchmarks/gpu_check.py --out DIR [--dry-run] [--work DIR] [--keep-work]
       [--budget SECONDS] [--only cuda_tests train predict bench_infer]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
for _p in (str(SRC), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

STEPS = ("cuda_tests", "train", "predict", "bench_infer")
#: exit code of `train --stop-after-step` (sam2_3dmed.train.trainer.EXIT_STOPPED)
EXIT_STOPPED = 75
#: on CUDA the resumed run passes when every trainable tensor is within this of the
#: uninterrupted run's (bitwise equality is recorded beside it); on a CPU it must be bitwise
CUDA_ATOL = 1e-6
PACKAGES = ("torch", "torchvision", "numpy", "sam2", "monai", "nibabel", "hydra-core", "omegaconf", "iopath",
            "jsonschema", "PyYAML", "SimpleITK", "pytest")


class Profile:
    """The settings of one kind of run: the real ones on a GPU, small ones for the CPU dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.backbone = "tiny" if dry else "small"
        self.image_size = 128 if dry else 512
        self.clip_length = 4 if dry else 12
        self.steps = 6 if dry else 30
        self.stop_after = 3 if dry else 15
        self.checkpoint_every = 3 if dry else 15
        self.val_every = 6 if dry else 30
        self.warmup_steps = 2 if dry else 5
        self.num_workers = 0 if dry else 2
        self.synth_cases = 3
        self.synth_size = 96 if dry else 512
        self.predict_shape = (24, 128, 128) if dry else (300, 512, 512)  # (z, y, x)
        self.predict_spacing = (0.8, 0.8, 2.5)  # x, y, z mm
        self.bench_args = (["--size", "128", "--slices", "8", "--repeats", "1"] if dry else
                           ["--size", "512", "--slices", "64", "--backbone", "small", "--repeats", "3", "--threads", "4"])
        # seconds for all steps together (each subprocess's timeout is cut to what is left);
        # the dry run takes ~2 min on 2 quiet cores, the rest is slack for a loaded CI machine
        self.budget = 420  # with gpu-check.sh's set-up (~30 s) the GPU check stays under 8 minutes
        # per subprocess (each is also cut to what is left of the budget)
        self.timeouts = dict(pytest=120, synth=120, prepare=120, train=240 if dry else 150, predict=120,
                             bench_infer=150 if dry else 200)

    def config(self, work: Path, deterministic: bool) -> dict:
        cfg = {
            "data": {"root": str(work / "raw"), "prepared": str(work / "prepared"), "source": "synthetic"},
            "splits": {"folds": 3, "test_fraction": 0.0, "seed": 0},
            "model": {"backbone": self.backbone, "image_size": self.image_size, "pretrained": False,
                      "freeze_encoder": True},
            "train": {"clip_length": self.clip_length, "steps": self.steps, "warmup_steps": self.warmup_steps,
                      "checkpoint_every": self.checkpoint_every, "val_every": self.val_every, "val_max_cases": 1,
                      "num_workers": self.num_workers, "amp": True, "deterministic": deterministic, "seed": 0},
        }
        if self.dry:  # coarse voxels: validation (whole volumes, every slice) is most of a CPU run's time
            cfg["targets"] = {"spleen": {"spacing_mm": [1.5, 1.5], "slice_spacing_mm": 8.0}}
        return cfg

    def describe(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "timeouts"} | {"timeouts_s": self.timeouts}


class BudgetSpent(RuntimeError):
    pass


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"  # the node gets the files without .git


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class Check:
    def __init__(self, args):
        self.args = args
        self.p = Profile(args.dry_run)
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.json_path = self.out / "gpu_check.json"
        if args.work:
            self.work = Path(args.work).resolve()
            self.work.mkdir(parents=True, exist_ok=True)
            self.own_work = False
        else:  # big files (data, checkpoints) stay out of OUT, which is what comes back from a node
            self.work = Path(tempfile.mkdtemp(prefix="sam2-3dmed-gpu-check-"))
            self.own_work = True
        # per-command logs stay in the work folder: everything they hold is streamed into
        # stdout (gpu-check.sh's DIR/gpu-check.log) too, and a node sends back only a few files
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + (args.budget or self.p.budget)
        self.env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
                        PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.dev = torch.device(self.p.device)
        self.record = self._header()
        self.save()

    # ------------------------------------------------------------------ record
    def _header(self) -> dict:
        gpu = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": torch.cuda.get_device_name(0), "capability": f"{props.major}.{props.minor}",
                   "memory_gb": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
        if self.p.dry:
            from _common import machine
            mach = machine("cpu")
        else:
            mach = (f"{gpu['name']} (GPU, compute capability {gpu['capability']}), torch {torch.__version__}, "
                    f"CUDA {torch.version.cuda}")
        try:
            from sam2_3dmed.code_digest import package_digest
            digest = package_digest()
        except Exception:  # noqa: BLE001 - provenance only
            digest = None
        return {
            "schema": 1, "tool": "benchmarks/gpu_check.py", "dry_run": self.p.dry, "device": self.p.device,
            "started": _now(), "finished": None, "total_seconds": None, "host": socket.gethostname(),
            "commit": _commit(), "code_digest": digest, "machine": mach, "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "packages": {n: _version(n) for n in PACKAGES},
            "pretrained": False,
            "pretrained_note": "random init: no SAM2 weights on the node (no network); the encoder is frozen "
                               "as in the real, pretrained run, so the trained modules and backward pass match it",
            "settings": self.p.describe(), "work": str(self.work), "logs": str(self.logs),
            "step_seconds_note": "on CUDA the trainer syncs every train.log_every steps and logs each step of a "
                                 "window as the window's mean wall time; s_per_step is the median over steps 2..N",
            "steps": {}, "ok": None,
        }

    def save(self) -> None:
        tmp = self.json_path.with_name(self.json_path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        os.replace(tmp, self.json_path)

    def say(self, msg: str) -> None:
        print(f"[gpu-check {time.perf_counter() - self.t0:6.1f} s] {msg}", flush=True)

    # ------------------------------------------------------------------ processes
    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, cmd: list, name: str, limit: float) -> dict:
        """Run ``cmd`` (streamed to stdout and WORK/logs/NAME.log) with a timeout of ``limit``
        seconds, cut to what is left of the budget. Returns rc, seconds, output, timed_out.
        What the command leaves running (DataLoader workers of a run that exited at once) is
        killed with its process group."""
        left = self.left()
        if left < 5:
            raise BudgetSpent(f"the check's budget ({self.args.budget or self.p.budget} s) is spent before {name}")
        timeout = max(5.0, min(limit, left))
        cmd = [str(c) for c in cmd]
        self.say(f"$ {' '.join(cmd)}   (timeout {timeout:.0f} s)")
        lines: list[str] = []
        t0 = time.perf_counter()
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)

            def pump():
                for line in proc.stdout:
                    lines.append(line)
                    log.write(line)
                    print(f"    {name}| {line}", end="", flush=True)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            reader.join(timeout=10)
        seconds = time.perf_counter() - t0
        out = "".join(lines)
        self.say(f"{name}: exit {rc} in {seconds:.1f} s" + (" (TIMED OUT)" if timed_out else ""))
        return {"rc": rc, "seconds": round(seconds, 2), "timed_out": timed_out, "output": out}

    def cli(self, args: list, name: str, limit: float) -> dict:
        return self.run([sys.executable, "-m", "sam2_3dmed.cli", *args], name, limit)

    @staticmethod
    def failed(res: dict, what: str, expect: int = 0) -> str | None:
        if res["timed_out"]:
            return f"{what} timed out after {res['seconds']:.0f} s"
        if res["rc"] != expect:
            return f"{what} exited {res['rc']} (expected {expect}): {_tail(res['output'], 6)}"
        return None

    # ------------------------------------------------------------------ steps
    def step(self, name: str, fn) -> None:
        self.say(f"== {name}")
        rec = {"status": None, "started": _now()}
        self.record["steps"][name] = rec
        t0 = time.perf_counter()
        try:
            rec.update(fn(rec))
            if rec["status"] is None:
                rec["status"] = "ok"
        except BudgetSpent as exc:
            rec.update(status="error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded, the next step still runs
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=_tail(traceback.format_exc(), 12))
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        self.say(f"== {name}: {rec['status']} in {rec['seconds']:.1f} s" +
                 (f" ({rec.get('error')})" if rec.get("error") else ""))
        self.save()

    def cuda_tests(self, rec: dict) -> dict:
        marked = re.compile(r"mark\.cuda\b")
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if marked.search(p.read_text(errors="replace")))
        rec["files"] = files
        counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0}
        if not files:
            return {"status": "none", "note": "no test file uses the cuda marker", **counts}
        xml = self.work / "pytest-cuda.xml"
        res = self.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", *files], "pytest_cuda", self.p.timeouts["pytest"])
        rec["rc"] = res["rc"]
        if xml.is_file():
            root = ET.parse(xml).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            counts = {"passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
                      "skipped": tot["skipped"], "failed": tot["failures"], "errors": tot["errors"]}
        rec.update(counts)
        if res["rc"] == 5:
            return {"status": "none", "note": "pytest selected no test (exit 5)"}
        if res["timed_out"] or res["rc"] != 0:
            return {"status": "error" if res["timed_out"] or not counts["failed"] else "fail",
                    "error": self.failed(res, "pytest -m cuda")}
        return {}

    def _config(self, deterministic: bool) -> Path:
        import yaml

        path = self.out / ("gpu_check_config.yaml" if deterministic else "gpu_check_config_nondeterministic.yaml")
        path.write_text("# written by benchmarks/gpu_check.py (merged over src/sam2_3dmed/defaults.yaml)\n" +
                        yaml.safe_dump(self.p.config(self.work, deterministic), sort_keys=False))
        return path

    def _train(self, cfg: Path, run: Path, name: str, stop: int | None = None) -> dict:
        args = ["train", "--config", cfg, "--target", "spleen", "--variant", "full", "--fold", "0", "--out", run,
                "--prepared", self.prepared, "--device", self.p.device]
        if stop is not None:
            args += ["--stop-after-step", stop]
        return self.cli(args, name, self.p.timeouts["train"])

    @staticmethod
    def _log_stats(run: Path) -> dict:
        with open(run / "train_log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        secs = [float(r["seconds"]) for r in rows if int(r["step"]) > 1 and r.get("seconds")]
        out = {"steps_logged": len(rows), "last_step": int(rows[-1]["step"]) if rows else 0,
               "s_per_step": float(np.median(secs)) if secs else None,
               "s_per_step_mean": float(np.mean(secs)) if secs else None,
               "s_first_step": float(rows[0]["seconds"]) if rows else None,
               "final_loss": float(rows[-1]["loss"]) if rows and rows[-1].get("loss") else None,
               "seconds_per_step": [float(r["seconds"]) if r.get("seconds") else None for r in rows],
               "loss_per_step": [float(r["loss"]) if r.get("loss") else None for r in rows]}
        val = run / "val_log.csv"
        if val.is_file():
            with open(val, newline="") as fh:
                out["validation"] = [{"step": int(r["step"]), "mean_dice": float(r["mean_dice"])}
                                     for r in csv.DictReader(fh) if r.get("mean_dice")]
        summary = run / "train_summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            out.update({k: s.get(k) for k in ("peak_memory_mb", "median_step_seconds", "best_val_dice",
                                               "encoder_frozen", "pretrained", "trainable_parameters",
                                               "total_parameters", "device", "seconds_this_run")})
        return out

    @staticmethod
    def _trainable(path: Path) -> tuple[dict, int]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["trainable"], int(state["step"])

    @staticmethod
    def _diff(a: dict, b: dict) -> tuple[float, bool, int]:
        if set(a) != set(b):
            raise RuntimeError(f"the checkpoints hold different tensors ({len(set(a) ^ set(b))} names differ)")
        worst, equal = 0.0, True
        for k in a:
            x, y = a[k], b[k]
            if x.shape != y.shape or x.dtype != y.dtype:
                raise RuntimeError(f"{k}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
            equal = equal and torch.equal(x, y)
            if x.numel():
                worst = max(worst, float((x.double() - y.double()).abs().max()))
        return worst, equal, len(a)

    def train(self, rec: dict) -> dict:
        raw = self.work / "raw"
        self.prepared = self.work / "prepared" / "spleen"
        cfg = self._config(True)
        rec["config"] = str(cfg)
        rec["settings"] = self.p.config(self.work, True)
        res = self.cli(["synth", "Task09_Spleen", "--out", raw, "--cases", self.p.synth_cases, "--test-cases", 0,
                        "--size", self.p.synth_size, "--overwrite"], "synth", self.p.timeouts["synth"])
        rec["synth_seconds"] = res["seconds"]
        if err := self.failed(res, "synth"):
            return {"status": "error", "error": err}
        res = self.cli(["prepare", raw / "Task09_Spleen", "--target", "spleen", "--out", self.prepared, "--config", cfg,
                        "--overwrite"], "prepare", self.p.timeouts["prepare"])
        rec["prepare_seconds"] = res["seconds"]
        if err := self.failed(res, "prepare"):
            return {"status": "error", "error": err}

        deterministic = True
        for attempt in ("deterministic", "fallback"):
            run_a, run_b = self.work / "runs" / "A", self.work / "runs" / "B"
            for r in (run_a, run_b):
                shutil.rmtree(r, ignore_errors=True)
            res = self._train(cfg, run_a, "train_A")
            rec["run_a_seconds"] = res["seconds"]
            if err := self.failed(res, "train run A"):
                if deterministic and re.search(r"deterministic implementation|use_deterministic_algorithms|"
                                                 r"CUBLAS_WORKSPACE_CONFIG", res["output"]):
                    # the card refuses deterministic algorithms for an operation: say so, measure the rest
                    rec["deterministic_error"] = err
                    deterministic = False
                    cfg = self._config(False)
                    continue
                return {"status": "error", "error": err, "deterministic": deterministic}
            break
        rec["deterministic"] = deterministic
        rec["run_a"] = self._log_stats(run_a)
        self.checkpoint = run_a / "best.pt" if (run_a / "best.pt").is_file() else run_a / "last.pt"

        res = self._train(cfg, run_b, "train_B1", stop=self.p.stop_after)
        rec["run_b1_seconds"] = res["seconds"]
        if err := self.failed(res, f"train run B (--stop-after-step {self.p.stop_after})", expect=EXIT_STOPPED):
            return {"status": "error", "error": err}
        mid, mid_step = self._trainable(run_b / "last.pt")
        rec["run_b_stopped_at"] = mid_step
        res = self._train(cfg, run_b, "train_B2")
        rec["run_b2_seconds"] = res["seconds"]
        if err := self.failed(res, "train run B, resumed"):
            return {"status": "error", "error": err}
        rec["run_b"] = self._log_stats(run_b)

        a, step_a = self._trainable(run_a / "last.pt")
        b, step_b = self._trainable(run_b / "last.pt")
        if step_a != self.p.steps or step_b != self.p.steps or mid_step != self.p.stop_after:
            return {"status": "error", "error": f"checkpoint steps A {step_a}, B {mid_step} then {step_b}; "
                                                f"expected {self.p.steps}, {self.p.stop_after}, {self.p.steps}"}
        worst, equal, n = self._diff(a, b)
        moved, _, _ = self._diff(mid, a)
        on_cpu = self.dev.type == "cpu"
        passed = equal if on_cpu else worst <= CUDA_ATOL
        rec["resume"] = {
            "tensors": n, "max_abs_diff": worst, "bitwise_equal": equal,
            "tolerance": "bitwise (CPU)" if on_cpu else
                         f"atol {CUDA_ATOL:g} (CUDA; bitwise expected with train.deterministic true)" if deterministic
                         else f"atol {CUDA_ATOL:g} (CUDA, train.deterministic false: the card refused true)",
            "atol": 0.0 if on_cpu else CUDA_ATOL, "pass": bool(passed),
            "weights_moved_after_stop": moved,  # max |B@stop - A@end|: > 0, so the equality is not vacuous
            "compared": "trainable tensors of last.pt, run A (uninterrupted) vs run B (stopped, resumed)",
        }
        if not passed or moved == 0.0:
            why = ("the weights did not change after the stop: the comparison proves nothing" if moved == 0.0 else
                   f"resumed run differs: max |A - B| {worst:.3g}" + ("" if on_cpu else f" > atol {CUDA_ATOL:g}"))
            return {"status": "fail", "error": why}
        if not deterministic:
            return {"status": "fail", "error": "train.deterministic true was refused (deterministic_error); "
                                               "the figures were measured with false"}
        return {}

    def _phantom(self) -> tuple[np.ndarray, np.ndarray]:
        """A CT-like (z, y, x) int16 volume: air, a body ellipse, a brighter organ, noise."""
        nz, ny, nx = self.p.predict_shape
        rng = np.random.default_rng(0)
        y = (np.arange(ny, dtype=np.float32) - ny / 2) / (ny / 2)
        x = (np.arange(nx, dtype=np.float32) - nx / 2) / (nx / 2)
        body = ((x[None, :] / 0.8) ** 2 + (y[:, None] / 0.6) ** 2) <= 1.0
        organ2d = (((x[None, :] - 0.35) / 0.18) ** 2 + ((y[:, None] + 0.1) / 0.14) ** 2)
        z = np.linspace(-1.0, 1.0, nz, dtype=np.float32)
        vol = np.empty((nz, ny, nx), np.int16)
        for k in range(nz):
            sl = np.where(body, 40.0, -1000.0).astype(np.float32)
            sl[organ2d <= 1.0 - 2.5 * z[k] ** 2] = 110.0
            sl += rng.normal(0.0, 15.0, size=sl.shape).astype(np.float32)
            vol[k] = np.clip(np.rint(sl), -1024, 3071)
        affine = np.diag([*self.p.predict_spacing, 1.0])
        return vol, affine

    def predict(self, rec: dict) -> dict:
        import nibabel as nib

        ckpt = getattr(self, "checkpoint", None)
        if ckpt is None or not Path(ckpt).is_file():
            return {"status": "error", "error": "no checkpoint: the train step did not produce RUN_A/best.pt"}
        rec["checkpoint"] = str(ckpt)
        folder = self.work / "predict"
        folder.mkdir(parents=True, exist_ok=True)
        vol, affine = self._phantom()
        src, dst = folder / "in.nii.gz", folder / "out.nii.gz"
        img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine)  # (z, y, x) -> nibabel (x, y, z)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        nib.save(img, src)
        nz = vol.shape[0]
        rec.update(input_shape=list(img.shape), slices=nz, spacing_mm=list(self.p.predict_spacing))
        dst.unlink(missing_ok=True)
        res = self.cli(["predict", ckpt, src, dst, "--device", self.p.device, "--overwrite"], "predict",
                       self.p.timeouts["predict"])
        cli = {"seconds": res["seconds"], "s_per_volume": res["seconds"], "s_per_slice": res["seconds"] / nz,
               "rc": res["rc"]}
        m = re.search(r"\((\d+) s, peak RSS (\d+) MB\)", res["output"])
        if m:
            cli["peak_rss_mb"] = float(m.group(2))
        rec["cli"] = cli
        if err := self.failed(res, "predict"):
            return {"status": "error", "error": err}
        out = nib.load(dst)
        rec.update(output_shape=list(out.shape), output_matches_input=list(out.shape) == list(img.shape),
                   output_foreground_voxels=int(np.count_nonzero(np.asarray(out.dataobj))))
        del vol, img, out
        rec["api"] = self._predict_in_process(ckpt)
        if not rec["output_matches_input"]:
            return {"status": "fail", "error": f"mask shape {rec['output_shape']} != input {rec['input_shape']}"}
        return {}

    def _predict_in_process(self, ckpt: Path) -> dict:
        from sam2_3dmed.device import peak_memory_mb
        from sam2_3dmed.infer.inference import InferenceSettings
        from sam2_3dmed.infer.propagation import predict_by_propagation
        from sam2_3dmed.model.checkpoint import load_model

        cuda = self.dev.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        loaded = load_model(ckpt, self.p.device)
        model, fdt = loaded.model, loaded.config["infer"]["feature_dtype"]
        # what predict runs on this device: the checkpoint's infer settings (bf16, lockstep on a GPU)
        amp, lockstep = InferenceSettings.from_config(loaded.config, loaded.target).on(self.dev)
        nz, ny, nx = self.p.predict_shape
        arr = np.random.default_rng(1).random((nz, ny, nx), dtype=np.float32)
        with torch.no_grad():
            predict_by_propagation(model, arr[:8], None, device=self.dev, feature_dtype=fdt, amp=amp,
                                   lockstep=lockstep)  # warm-up (kernels)
            sync()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            stats: dict = {}
            t0 = time.perf_counter()
            prob = predict_by_propagation(model, arr, None, device=self.dev, feature_dtype=fdt, passes="half",
                                          stats=stats, amp=amp, lockstep=lockstep)
            sync()
            seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else peak_memory_mb(self.dev)
        out = {"seconds": seconds, "s_per_volume": seconds, "s_per_slice": seconds / nz,
               "peak_memory_mb": peak, "peak_memory_kind": "CUDA max_memory_allocated" if cuda else
               "process peak RSS (whole driver so far)",
               "feature_cache_mb": stats.get("feature_cache_bytes", 0) / 2 ** 20,
               "feature_cache_mb_per_slice": stats.get("feature_cache_bytes", 0) / 2 ** 20 / nz,
               "feature_dtype": fdt, "steps": stats.get("steps"), "slices": nz, "shape": [nz, ny, nx],
               "prob_shape": list(prob.shape), "input": "random float32 in [0, 1]", "passes": "half (auto mode)",
               "amp": str(amp), "lockstep": lockstep}
        del model, loaded, prob, arr
        if cuda:
            torch.cuda.empty_cache()
        return out

    def bench_infer(self, rec: dict) -> dict:
        args = [sys.executable, HERE / "bench_infer.py", "--device", self.p.device, *self.p.bench_args]
        rec["args"] = [str(a) for a in args[2:]]
        res = self.run(args, "bench_infer", self.p.timeouts["bench_infer"])
        results = [json.loads(ln[6:]) for ln in res["output"].splitlines() if ln.startswith("BENCH ")]
        rec.update(rc=res["rc"], results=results)
        per = {}
        for line in res["output"].splitlines():
            m = re.match(r"\[(half|full)\] foreground fraction .*?Dice\(>0\.5\) ([0-9.]+).*?max \|dp\| ([0-9.e+-]+)",
                         line)
            if m:
                per[m.group(1)] = {"dice": float(m.group(2)), "max_prob_diff": float(m.group(3))}
        for r in results:
            m = re.search(r"\((half|full) passes[,)]", r["what"])  # "(full passes, lockstep)" on a GPU
            d = re.search(r"Dice ([0-9.]+)", r.get("note", ""))
            if m:
                s = per.setdefault(m.group(1), {})
                s.update(ratio=r["ratio"], ours_s=r["ours"], theirs_s=r["baseline"], empty="BOTH EMPTY" in r["note"])
                if d:
                    s["dice"] = float(d.group(1))
        rec["settings"] = per
        if err := self.failed(res, "bench_infer"):
            return {"status": "error", "error": err}
        if not results:
            return {"status": "error", "error": "bench_infer printed no BENCH line"}
        main = per.get("full") or next(iter(per.values()), {})
        rec.update(ratio=main.get("ratio"), dice=main.get("dice"))
        if not self.p.dry and self.left() > 90:  # both sides again under bf16 autocast, full passes only
            res = self.run([*args, "--amp", "--settings", "full"], "bench_infer_amp", self.p.timeouts["bench_infer"])
            amp = [json.loads(ln[6:]) for ln in res["output"].splitlines() if ln.startswith("BENCH ")]
            rec["amp"] = {"rc": res["rc"], "results": amp,
                          "ratio": amp[0]["ratio"] if amp else None, "note": amp[0].get("note") if amp else None}
        bad = [s for s, v in per.items() if v.get("dice") is None or v["dice"] < 0.99]
        if bad:
            return {"status": "fail", "error": f"outputs disagree ({', '.join(bad)}: Dice < 0.99)"}
        return {}

    # ------------------------------------------------------------------ main
    def main(self) -> int:
        self.say(f"{'DRY RUN on CPU' if self.p.dry else self.record['machine']}; out {self.out}; work {self.work}")
        try:
            for name in STEPS:
                if self.args.only and name not in self.args.only:
                    continue
                self.step(name, getattr(self, name))
        finally:
            self.record["finished"] = _now()
            self.record["total_seconds"] = round(time.perf_counter() - self.t0, 1)
            statuses = {n: s["status"] for n, s in self.record["steps"].items()}
            self.record["ok"] = all(v in ("ok", "none") for v in statuses.values())
            self.save()
            if self.own_work and not self.args.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        self.say(f"done in {self.record['total_seconds']:.0f} s: " +
                 ", ".join(f"{n} {s}" for n, s in statuses.items()) + f" -> {self.json_path}")
        return 0 if self.record["ok"] else 1


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, gpu-check logs and small artifacts")
    ap.add_argument("--dry-run", action="store_true", help="CPU, small settings (CI): checks the plumbing only")
    ap.add_argument("--work", default=None, help="folder for the data and checkpoints (default: a temporary folder, "
                                                 "removed at the end)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all steps (default: 420)")
    ap.add_argument("--only", nargs="+", choices=STEPS, default=None, help="run only these steps")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else \
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"
        print(f"gpu_check: error: no CUDA device on {socket.gethostname()} ({why}, torch {torch.__version__}); "
              "run it on a GPU node, or pass --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
