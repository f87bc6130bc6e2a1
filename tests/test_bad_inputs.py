"""Bad-input sweep: every command x the malformed inputs that apply to it.

The project's contract for bad input (README, ``errors.py``, ``atomic.py``): one line
``error: <path>: <problem>`` on stderr naming the offending file (or the option / config
key), exit code 1 (2 for typer/click usage errors, which print one ``Error:`` line), no
traceback, nothing on stdout, no partial output (the output path does not exist
afterwards and no ``.NAME.tmp-*`` / ``.NAME.old-*`` leftovers sit beside it), and a
pre-existing output is left byte-for-byte as it was, also with ``--overwrite``.

Some inputs look malformed but have a defined, harmless meaning; those cases are run to
success instead and their ids say so (``...-accepted-...``): e.g. huge HU values are
clipped to the target's HU window, a mask value > 0 is foreground whatever it is.

Each case is a small builder ``(fx, tmp) -> Spec`` registered under ``<command>-<name>``;
``pytest --collect-only -q tests/test_bad_inputs.py`` lists them all. They run
in-process through ``sam2_3dmed.cli.main`` (the real entry point: the same error
handling, exit codes and stderr as the console script, without a torch import per case);
``test_real_process`` runs a handful again as subprocesses to prove the real-process
contract. The fixtures (a 4-case synthetic spleen task, its prepared target, a small
64 px checkpoint, masks, a results tree for ``report``) are built once per module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import sys
import tarfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from _cli import run_cli
from _volumes import ellipsoid_case, save
from _tiny import make_tiny_target, tiny_config
from sam2_3dmed.cli import main
from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.checkpoint import save_checkpoint

CFG = tiny_config(train={"steps": 2, "warmup_steps": 1, "val_every": 2}, evaluate={"save_predictions": False})
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
GARBAGE = np.random.default_rng(0).bytes(4096)


# ----------------------------------------------------------------------------- the case model
@dataclass
class Spec:
    """One command line and what must (or must not) happen."""

    argv: list
    names: tuple = ()          # substrings the error line must contain: the file, option or key
    problem: str = ""          # a substring of the problem description (case-insensitive)
    out: Path | None = None    # the output: must not exist afterwards (unless ``keep``)
    keep: bool = False         # ``out`` existed before: it must be left byte-for-byte intact
    code: int = 1              # 1: error, 2: usage error, 0: accepted (defined behaviour)
    accepted: Callable | None = None  # for code 0: check(stdout) of the defined behaviour
    snapshot: dict = field(default_factory=dict)


CASES: dict[str, Callable] = {}


def case(command: str, name: str):
    def register(fn):
        cid = f"{command}-{name}"
        assert cid not in CASES, cid
        CASES[cid] = fn
        return fn
    return register


def tree_bytes(path: Path) -> dict:
    """{relative path: bytes} of a file or folder (folders as markers), to compare before/after."""
    path = Path(path)
    if path.is_file():
        return {".": path.read_bytes()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else "<dir>") for p in sorted(path.rglob("*"))}


def leftovers(out: Path) -> list[str]:
    """Temporary siblings an interrupted atomic write would leave (``.NAME.tmp-*``, ``.NAME.old-*``)."""
    parent = out.parent
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


def check(spec: Spec, code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stderr, "crashed with a traceback:\n" + "\n".join(stderr.splitlines()[-6:])
    if spec.code == 0:
        assert code == 0, f"expected success (defined behaviour), got exit {code}:\n{stderr}"
        assert not [ln for ln in stderr.splitlines() if ln.lower().startswith("error")], stderr
        if spec.accepted:
            spec.accepted(stdout)
    else:
        assert code == spec.code, f"exit {code}, expected {spec.code}:\nstdout: {stdout}\nstderr: {stderr}"
        prefix = "error: " if spec.code == 1 else "Error: "
        lines = [ln for ln in stderr.splitlines() if ln.startswith(prefix)]
        assert len(lines) == 1, f"expected exactly one {prefix!r} line:\n{stderr}"
        if spec.code == 1:  # besides log lines, the error line is all there is: no stray warnings or prints
            noise = [ln for ln in stderr.splitlines() if ln.strip() and ln != lines[0]
                     and not ln.startswith(("INFO ", "WARNING ", "DEBUG "))]
            assert not noise, stderr
        line = lines[0]
        for name in spec.names:
            assert str(name) in line, f"{name!r} not named in: {line}"
        assert spec.problem.lower() in line.lower(), f"{spec.problem!r} not in: {line}"
        assert stdout == "", stdout
    if spec.out is not None:
        if spec.keep:
            assert tree_bytes(spec.out) == spec.snapshot, f"pre-existing {spec.out} was changed"
        elif spec.code != 0:
            assert not spec.out.exists() and not spec.out.is_symlink(), f"partial output {spec.out} left behind"
        assert leftovers(spec.out) == [], leftovers(spec.out)


def prepare_spec(fx, tmp: Path, cid: str) -> Spec:
    spec = CASES[cid](fx, tmp)
    if spec.keep:
        assert spec.out is not None and spec.out.exists()
        spec.snapshot = tree_bytes(spec.out)
    return spec


def run_in_process(argv) -> tuple[int, str, str]:
    """``sam2-3dmed ARGV`` through the real entry point; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the console script would show as a traceback
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- fixtures
@dataclass
class Fx:
    root: Path
    cfg: Path
    task: Path
    prepared: Path
    run: Path
    ckpt: Path
    image: Path
    mask: Path
    runs: Path
    report_cfg: Path


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fx:
    tiny = make_tiny_target(tmp_path_factory.mktemp("bad_inputs"), CFG)
    root, task, cfg_path, cfg, prepared = tiny.root, tiny.task, tiny.cfg_path, tiny.cfg, tiny.prepared

    # a small randomly initialised checkpoint of the config's model (what `train` saves)
    vcfg = variant_config(cfg, "full")
    torch.manual_seed(vcfg["train"]["seed"])
    model = build_model(vcfg["model"])
    run = root / "run"
    save_checkpoint(run / "best.pt", model, None, None, 2, vcfg, {"target": "spleen", "variant": "full", "fold": 0})
    shutil.copy(run / "best.pt", run / "last.pt")

    image, _, _ = ellipsoid_case(shape=(40, 36, 6), affine=AFFINE, radii_mm=(15, 12, 6))
    img_path = save(root / "scan.nii.gz", image, AFFINE, np.int16)
    blob = np.zeros((16, 14, 6), np.uint8)
    blob[4:10, 3:9, 1:4] = 1
    mask = save(root / "mask.nii.gz", blob, AFFINE, np.uint8)

    runs, report_cfg = build_results_tree(root)
    return Fx(root, cfg_path, task, prepared, run, run / "best.pt", img_path, mask, runs, report_cfg)


METRIC_FIELDS = ["case_id", "mode", "prompt", "dice", "iou", "hd95", "nsd", "assd", "pred_voxels", "gt_voxels",
                 "gt_volume_ml", "seconds", "slices", "slices_per_s", "peak_mem_mb", "feature_cache_mb", "device"]


def _write_csv(path: Path, fields, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def build_results_tree(root: Path) -> tuple[Path, Path]:
    """runs/spleen/full/fold0 with logs, a summary and an evaluation; a config for `report`."""
    run = root / "results" / "runs" / "spleen" / "full" / "fold0"
    _write_csv(run / "train_log.csv", ["step", "lr", "loss", "seg", "obj", "srpp", "bd", "grad_norm", "seconds"],
               [{"step": s, "lr": 1e-4, "loss": 1.0 / s, "seg": 0.5 / s, "obj": 0.2 / s, "srpp": 0.1 / s,
                 "bd": 0.1 / s, "grad_norm": 1.0, "seconds": 0.5} for s in (1, 2, 3)])
    _write_csv(run / "val_log.csv", ["step", "mean_dice", "spleen_0"], [{"step": 3, "mean_dice": 0.5, "spleen_0": 0.5}])
    (run / "train_summary.json").write_text(json.dumps({"target": "spleen", "variant": "full", "fold": 0, "steps": 3,
                                                        "best_val_dice": 0.5, "device": "cpu"}))
    rows = [{"case_id": f"spleen_{i}", "mode": "auto", "prompt": "", "dice": 0.5 + i / 10, "iou": 0.4, "hd95": 3.0,
             "nsd": 0.6, "assd": 1.0, "pred_voxels": 100, "gt_voxels": 110, "gt_volume_ml": 1.0, "seconds": 1.0,
             "slices": 10, "slices_per_s": 10.0, "peak_mem_mb": 100.0, "feature_cache_mb": 1.0, "device": "cpu"}
            for i in (0, 1)]
    _write_csv(run / "eval" / "val" / "metrics.csv", METRIC_FIELDS, rows)
    (run / "eval" / "val" / "summary.json").write_text(json.dumps({"target": "spleen", "split": "val",
                                                                   "nsd_tolerance_mm": 1.0, "device": "cpu"}))
    cfg = {"data": {"prepared": str(root / "report_prepared"), "source": "synthetic"},
           "run": {"targets": ["spleen"], "variants": ["full"], "folds": [0]}, "model": {"pretrained": False}}
    path = root / "report.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root / "results" / "runs", path


# ----------------------------------------------------------------------------- helpers for builders
def garbage(path: Path, data: bytes = GARBAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncate(src: Path, dst: Path) -> Path:
    raw = src.read_bytes()
    return garbage(dst, raw[: len(raw) // 2])


def write_config(tmp: Path, overrides: dict | str, name="cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(overrides if isinstance(overrides, str) else yaml.safe_dump(overrides))
    return p


def merged_config(tmp: Path, extra: dict) -> Path:
    """The module's config with ``extra`` deep-merged over it."""
    from sam2_3dmed.config import deep_merge

    return write_config(tmp, deep_merge(CFG, extra))


def nifti_like(ref: Path, dst: Path, fn=None, data=None, affine=None, dtype=None) -> Path:
    """A NIfTI at ``dst`` from ``ref``'s data (changed by ``fn``) or ``data``, on ``ref``'s affine by default."""
    img = nib.load(str(ref))
    arr = np.asarray(img.dataobj) if data is None else data
    if fn is not None:
        arr = fn(np.array(arr, dtype=np.float32))
    dst.unlink(missing_ok=True)
    return save(dst, arr, img.affine if affine is None else affine, dtype)


def task_copy(fx: Fx, tmp: Path) -> Path:
    return Path(shutil.copytree(fx.task, tmp / "raw" / "Task09_Spleen"))


def first_case_rel(task: Path) -> tuple[Path, Path]:
    """First training case as prepare names it (task folder / relative path, './' dropped)."""
    ds = json.loads((task / "dataset.json").read_text())
    e = ds["training"][0]
    return task / Path(e["image"]), task / Path(e["label"])


def set_dataset_json(task: Path, change) -> Path:
    """Rewrite ``dataset.json``: ``change`` is the new text, or a function that edits the parsed JSON in place."""
    p = task / "dataset.json"
    if isinstance(change, str):
        p.write_text(change)
    else:
        ds = json.loads(p.read_text())
        change(ds)
        p.write_text(json.dumps(ds))
    return p


def finite_json(stdout: str) -> dict:
    res = json.loads(stdout)
    for k, v in res.items():
        if isinstance(v, float):
            assert math.isfinite(v), (k, v)
    return res


# ----------------------------------------------------------------------------- validate-config
def _vc(tmp, text_or_dict, *names, problem=""):
    p = write_config(tmp, text_or_dict)
    return Spec(["validate-config", p], names=(p, *names), problem=problem)


@case("validate-config", "missing-file")
def _(fx, tmp):
    p = tmp / "nope.yaml"
    return Spec(["validate-config", p], names=(p,), problem="does not exist")


@case("validate-config", "directory-instead-of-file")
def _(fx, tmp):
    return Spec(["validate-config", tmp], names=(tmp,), problem="folder")


@case("validate-config", "invalid-yaml")
def _(fx, tmp):
    return _vc(tmp, "train:\n  steps: [1, 2\n", problem="not valid YAML")


@case("validate-config", "binary-garbage")
def _(fx, tmp):
    p = garbage(tmp / "cfg.yaml")
    return Spec(["validate-config", p], names=(p,))


@case("validate-config", "top-level-list")
def _(fx, tmp):
    return _vc(tmp, "- 1\n- 2\n", problem="top level must be a mapping")


@case("validate-config", "unknown-key")
def _(fx, tmp):
    return _vc(tmp, {"targets": {"spleen": {"hu_windw": [0, 1]}}}, "targets.spleen.hu_windw", problem="unknown key")


@case("validate-config", "wrong-type")
def _(fx, tmp):
    return _vc(tmp, {"train": {"steps": "many"}}, "train.steps")


@case("validate-config", "section-null")
def _(fx, tmp):
    return _vc(tmp, "train: null\n", "train")


@case("validate-config", "missing-required-key")
def _(fx, tmp):
    return _vc(tmp, {"targets": {"liver": {"task": "Task09_Spleen"}}}, "targets.liver", problem="required")


@case("validate-config", "unknown-target")
def _(fx, tmp):
    return _vc(tmp, {"run": {"targets": ["liver"]}}, "run.targets", "liver", problem="unknown target")


@case("validate-config", "unknown-variant")
def _(fx, tmp):
    return _vc(tmp, {"run": {"variants": ["bogus"]}}, "run.variants", "bogus", problem="unknown variant")


@case("validate-config", "fold-out-of-range")
def _(fx, tmp):
    return _vc(tmp, {"run": {"folds": [7]}}, "run.folds", problem="does not exist")


@case("validate-config", "hu-window-reversed")
def _(fx, tmp):
    return _vc(tmp, {"targets": {"spleen": {"hu_window": [240, -160]}}}, "targets.spleen.hu_window")


@case("validate-config", "bad-enum-value")
def _(fx, tmp):
    return _vc(tmp, {"model": {"backbone": "huge"}}, "model.backbone")


@case("validate-config", "accepted-empty-file-means-defaults")
def _(fx, tmp):
    p = write_config(tmp, "")

    def ok(stdout):
        assert yaml.safe_load(stdout) == load_config(None)
    return Spec(["validate-config", p], code=0, accepted=ok)


# ----------------------------------------------------------------------------- synth
@case("synth", "unknown-task")
def _(fx, tmp):
    out = tmp / "raw"
    return Spec(["synth", "Task99_Liver", "--out", out], names=("Task99_Liver",), problem="unknown", out=out)


@case("synth", "usage-cases-zero")
def _(fx, tmp):
    out = tmp / "raw"
    return Spec(["synth", "Task09_Spleen", "--out", out, "--cases", "0"], names=("--cases",), out=out, code=2)


@case("synth", "usage-size-too-small")
def _(fx, tmp):
    out = tmp / "raw"
    return Spec(["synth", "Task09_Spleen", "--out", out, "--size", "8"], names=("--size",), out=out, code=2)


@case("synth", "usage-cases-not-a-number")
def _(fx, tmp):
    out = tmp / "raw"
    return Spec(["synth", "Task09_Spleen", "--out", out, "--cases", "many"], names=("--cases",), out=out, code=2)


@case("synth", "existing-output-kept")
def _(fx, tmp):
    out = tmp / "raw" / "Task09_Spleen"
    garbage(out / "mine.txt", b"the user's file")
    return Spec(["synth", "Task09_Spleen", "--out", tmp / "raw", "--size", "32", "--cases", "1"],
                names=(out,), problem="already exists", out=out, keep=True)


@case("synth", "output-is-a-file")
def _(fx, tmp):
    out = garbage(tmp / "raw" / "Task09_Spleen", b"a file, not a folder")
    return Spec(["synth", "Task09_Spleen", "--out", tmp / "raw", "--size", "32", "--cases", "1", "--overwrite"],
                names=(out,), out=out, keep=True)


# ----------------------------------------------------------------------------- fetch-msd
def _task_tar(tmp: Path, members: dict[str, bytes]) -> Path:
    p = tmp / "Task09_Spleen.tar"
    with tarfile.open(p, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return p


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fetch_msd(tmp, archive, *extra, md5=True):
    out = tmp / "data"
    md5_args = ["--md5", _md5(archive)] if md5 and archive.is_file() else []
    return ["fetch-msd", "Task09_Spleen", "--out", out, "--url", archive, *md5_args, *extra], out


@case("fetch-msd", "archive-random-bytes")
def _(fx, tmp):
    a = garbage(tmp / "Task09_Spleen.tar")
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="not a valid or complete tar", out=out)


@case("fetch-msd", "archive-truncated")
def _(fx, tmp):
    full = _task_tar(tmp, {"Task09_Spleen/dataset.json": b"{}" * 2000, "Task09_Spleen/imagesTr/a.nii.gz": GARBAGE})
    a = truncate(full, tmp / "cut.tar")
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), out=out)


@case("fetch-msd", "archive-is-text-file")
def _(fx, tmp):
    a = garbage(tmp / "Task09_Spleen.tar", b"this is a text file, not a tar archive\n" * 20)
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="tar", out=out)


@case("fetch-msd", "archive-is-directory")
def _(fx, tmp):
    a = tmp / "Task09_Spleen.tar"
    a.mkdir()
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="is a folder", out=out)


@case("fetch-msd", "archive-missing")
def _(fx, tmp):
    a = tmp / "nope.tar"
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="does not exist", out=out)


@case("fetch-msd", "archive-md5-mismatch")
def _(fx, tmp):
    a = _task_tar(tmp, {"Task09_Spleen/dataset.json": b"{}"})
    argv, out = _fetch_msd(tmp, a, md5=False)
    return Spec(argv, names=(a,), problem="MD5 mismatch", out=out)


@case("fetch-msd", "md5-malformed")
def _(fx, tmp):
    a = _task_tar(tmp, {"Task09_Spleen/dataset.json": b"{}"})
    argv, out = _fetch_msd(tmp, a, "--md5", "xyz", md5=False)
    return Spec(argv, names=("--md5",), out=out)


@case("fetch-msd", "archive-without-dataset-json")
def _(fx, tmp):
    a = _task_tar(tmp, {"Task09_Spleen/readme.txt": b"hello"})
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="dataset.json", out=out)


@case("fetch-msd", "archive-malformed-dataset-json")
def _(fx, tmp):
    a = _task_tar(tmp, {"Task09_Spleen/dataset.json": b"{not json"})
    argv, out = _fetch_msd(tmp, a)
    return Spec(argv, names=(a,), problem="dataset.json", out=out)


@case("fetch-msd", "unknown-task")
def _(fx, tmp):
    out = tmp / "data"
    return Spec(["fetch-msd", "Task99_Liver", "--out", out, "--url", tmp / "x.tar"], names=("Task99_Liver",), out=out)


@case("fetch-msd", "overwrite-with-corrupt-archive-keeps-existing")
def _(fx, tmp):
    a = garbage(tmp / "Task09_Spleen.tar")
    argv, out = _fetch_msd(tmp, a, "--overwrite")
    dest = out / "Task09_Spleen"
    garbage(dest / "dataset.json", b'{"the": "user\'s task"}')
    return Spec(argv, names=(a,), out=dest, keep=True)


# ----------------------------------------------------------------------------- fetch-weights
def _fetch_w(tmp, weights, *extra, sha=True):
    out = tmp / "weights"
    sha_args = ["--sha256", hashlib.sha256(weights.read_bytes()).hexdigest()] if sha and weights.is_file() else []
    return ["fetch-weights", "sam2.1_hiera_tiny", "--out", out, "--url", weights, *sha_args, *extra], out


@case("fetch-weights", "random-bytes")
def _(fx, tmp):
    w = garbage(tmp / "w.pt")
    argv, out = _fetch_w(tmp, w)
    return Spec(argv, names=(w,), out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "truncated")
def _(fx, tmp):
    w = truncate(fx.ckpt, tmp / "w.pt")
    argv, out = _fetch_w(tmp, w)
    return Spec(argv, names=(w,), out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "not-a-sam2-checkpoint")
def _(fx, tmp):
    w = tmp / "w.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, w)
    argv, out = _fetch_w(tmp, w)
    return Spec(argv, names=(w,), out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "sam2-3dmed-checkpoint-instead")
def _(fx, tmp):
    argv, out = _fetch_w(tmp, fx.ckpt)
    return Spec(argv, names=(fx.ckpt,), out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "directory")
def _(fx, tmp):
    w = tmp / "w.pt"
    w.mkdir()
    argv, out = _fetch_w(tmp, w, "--no-verify")
    return Spec(argv, names=(w,), problem="folder", out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "missing")
def _(fx, tmp):
    w = tmp / "w.pt"
    argv, out = _fetch_w(tmp, w, "--no-verify")
    return Spec(argv, names=(w,), problem="does not exist", out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "sha256-malformed")
def _(fx, tmp):
    w = garbage(tmp / "w.pt")
    argv, out = _fetch_w(tmp, w, "--sha256", "abc", sha=False)
    return Spec(argv, names=("--sha256",), out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "sha256-mismatch")
def _(fx, tmp):
    w = garbage(tmp / "w.pt")
    argv, out = _fetch_w(tmp, w, "--sha256", "0" * 64, sha=False)
    return Spec(argv, names=(w,), problem="mismatch", out=out / "sam2.1_hiera_tiny.pt")


@case("fetch-weights", "unknown-name")
def _(fx, tmp):
    out = tmp / "weights"
    return Spec(["fetch-weights", "sam9_giant", "--out", out, "--url", fx.ckpt], names=("sam9_giant",), out=out)


@case("fetch-weights", "overwrite-with-corrupt-keeps-existing")
def _(fx, tmp):
    w = garbage(tmp / "w.pt")
    argv, out = _fetch_w(tmp, w, "--overwrite")
    dest = garbage(out / "sam2.1_hiera_tiny.pt", b"the user's weights")
    return Spec(argv, names=(w,), out=dest, keep=True)


# ----------------------------------------------------------------------------- prepare
def _prep(fx, tmp, task=None, *extra, config=True):
    out = tmp / "prepared" / "spleen"
    cfg = ["--config", fx.cfg] if config else []
    return ["prepare", task or task_copy(fx, tmp), "--target", "spleen", "--out", out, *cfg, *extra], out


def _prep_bad_image(fx, tmp, problem, fn=None, data=None, label=False, dtype=np.float32, raw=None):
    task = task_copy(fx, tmp)
    img, lab = first_case_rel(task)
    bad = lab if label else img
    if raw is not None:
        raw(bad)
    else:
        nifti_like(bad, bad, fn=fn, data=data, dtype=dtype)
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(bad,), problem=problem, out=out)


@case("prepare", "task-folder-missing")
def _(fx, tmp):
    argv, out = _prep(fx, tmp, tmp / "nowhere")
    return Spec(argv, names=(tmp / "nowhere",), problem="does not exist", out=out)


@case("prepare", "task-folder-is-a-file")
def _(fx, tmp):
    f = garbage(tmp / "Task09_Spleen", b"text")
    argv, out = _prep(fx, tmp, f)
    return Spec(argv, names=(f,), problem="not a task folder", out=out)


@case("prepare", "dataset-json-missing")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    (task / "dataset.json").unlink()
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(task / "dataset.json",), problem="missing", out=out)


def _ds_case(fx, tmp, change, problem):
    task = task_copy(fx, tmp)
    p = set_dataset_json(task, change)
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(p,), problem=problem, out=out)


@case("prepare", "dataset-json-not-json")
def _(fx, tmp):
    return _ds_case(fx, tmp, '{"labels": {"0": "bg"', "not valid JSON")


@case("prepare", "dataset-json-binary")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    p = garbage(task / "dataset.json")
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(p,), problem="not valid JSON", out=out)


@case("prepare", "dataset-json-not-an-object")
def _(fx, tmp):
    return _ds_case(fx, tmp, "[1, 2]", "JSON object")


@case("prepare", "dataset-json-missing-training")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.pop("training"), "training")


@case("prepare", "dataset-json-labels-not-integers")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(labels={"zero": "bg"}), "labels")


@case("prepare", "dataset-json-labels-a-list")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(labels=["background", "spleen"]), "labels")


@case("prepare", "dataset-json-training-not-a-list")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(training={"a": 1}), "training")


@case("prepare", "dataset-json-test-not-a-list")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(test=5), "'test'")


@case("prepare", "dataset-json-entry-without-label")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds["training"][0].pop("label"), "training[0]")


@case("prepare", "dataset-json-entry-path-not-a-string")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds["training"][0].update(image=5), "training[0]")


@case("prepare", "dataset-json-numtraining-mismatch")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(numTraining=9), "numTraining")


@case("prepare", "dataset-json-path-outside-task")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds["training"][0].update(image="../../etc/passwd"), "outside")


@case("prepare", "dataset-json-lists-missing-file")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds["training"][0].update(image="./imagesTr/nope.nii.gz"), "does not exist")


@case("prepare", "dataset-json-labels-lack-target")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(labels={"0": "background", "2": "liver"}), "lacks")


@case("prepare", "dataset-json-no-training-cases")
def _(fx, tmp):
    return _ds_case(fx, tmp, lambda ds: ds.update(training=[], numTraining=0), "no training cases")


@case("prepare", "image-random-bytes")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "cannot read", raw=garbage)


@case("prepare", "image-truncated")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "corrupt", raw=lambda p: truncate(p, p))


@case("prepare", "image-text-file")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "cannot read", raw=lambda p: p.write_text("patient 1, spleen\n"))


@case("prepare", "image-is-a-directory")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    img, _ = first_case_rel(task)
    img.unlink()
    img.mkdir()
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(task / "dataset.json", "imagesTr/spleen_0.nii.gz"), problem="is a folder", out=out)


@case("prepare", "image-2d")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "3D", fn=lambda a: a[:, :, 0])


@case("prepare", "image-4d-two-channels")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "3D", fn=lambda a: np.stack([a, a], axis=-1))


@case("prepare", "image-zero-size-axis")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "empty", fn=lambda a: a[:, :, :0])


@case("prepare", "image-nan-voxels")
def _(fx, tmp):
    def nan(a):
        a[5, 5, 5] = np.nan
        return a
    return _prep_bad_image(fx, tmp, "NaN", fn=nan)


@case("prepare", "image-inf-voxels")
def _(fx, tmp):
    def inf(a):
        a[5, 5, 5] = -np.inf
        return a
    return _prep_bad_image(fx, tmp, "inf", fn=inf)


@case("prepare", "image-all-constant")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "constant", fn=lambda a: np.full_like(a, -1000.0))


@case("prepare", "image-shape-mismatch")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    img, lab = first_case_rel(task)
    nifti_like(img, img, fn=lambda a: a[:-2], dtype=np.int16)
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(lab,), problem="differs from image shape", out=out)


@case("prepare", "accepted-image-huge-values-clipped")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    img, _ = first_case_rel(task)

    def huge(a):
        a[10:20, 10:20, 5:10] = 1e30
        a[0:3, 0:3, 0:3] = -1e30
        return a
    nifti_like(img, img, fn=huge, dtype=np.float32)
    argv, out = _prep(fx, tmp, task)

    def ok(stdout):
        fp = json.loads((out / "fingerprint.json").read_text())  # strict JSON: no NaN/inf
        assert fp["summary"]["n_cases"] == 4
        for d in out.glob("cases/*/image.npy"):
            a = np.load(d).astype(np.float32)
            assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    return Spec(argv, out=out, code=0, accepted=ok)


@case("prepare", "label-random-bytes")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "cannot read", raw=garbage, label=True)


@case("prepare", "label-2d")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "3D", fn=lambda a: a[:, :, 3], label=True, dtype=np.uint8)


@case("prepare", "label-shape-mismatch")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "differs from image shape", fn=lambda a: a[:, :-1], label=True, dtype=np.uint8)


@case("prepare", "label-affine-mismatch")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    _, lab = first_case_rel(task)
    aff = nib.load(str(lab)).affine.copy()
    aff[0, 3] += 4.0
    nifti_like(lab, lab, affine=aff, dtype=np.uint8)
    argv, out = _prep(fx, tmp, task)
    return Spec(argv, names=(lab,), problem="affine differs", out=out)


def _set(value, where=(slice(0, 2), slice(0, 2), slice(0, 2))):
    def fn(a):
        a[where] = value
        return a
    return fn


@case("prepare", "label-value-not-in-label-map")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "[3]", fn=_set(3), label=True, dtype=np.uint8)


@case("prepare", "label-fractional-values")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "non-integer", fn=_set(0.5), label=True, dtype=np.float32)


@case("prepare", "label-negative-values")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "[-1]", fn=_set(-1), label=True, dtype=np.int16)


@case("prepare", "label-nan-voxels")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "NaN", fn=_set(np.nan), label=True, dtype=np.float32)


@case("prepare", "label-huge-values")
def _(fx, tmp):
    return _prep_bad_image(fx, tmp, "label map", fn=_set(1e30), label=True, dtype=np.float32)


@case("prepare", "accepted-label-without-foreground-counted")
def _(fx, tmp):
    task = task_copy(fx, tmp)
    _, lab = first_case_rel(task)
    nifti_like(lab, lab, fn=np.zeros_like, dtype=np.uint8)
    argv, out = _prep(fx, tmp, task)

    def ok(stdout):
        fp = json.loads((out / "fingerprint.json").read_text())
        assert fp["summary"]["n_empty_labels"] == 1 and fp["summary"]["empty_label_cases"] == ["spleen_0"]
    return Spec(argv, out=out, code=0, accepted=ok)


@case("prepare", "config-missing")
def _(fx, tmp):
    argv, out = _prep(fx, tmp, fx.task, config=False)
    return Spec(argv + ["--config", tmp / "nope.yaml"], names=(tmp / "nope.yaml",), out=out)


@case("prepare", "config-unknown-key")
def _(fx, tmp):
    cfg = merged_config(tmp, {"prepare": {"crop_to_bodyy": True}})
    argv, out = _prep(fx, tmp, fx.task, config=False)
    return Spec(argv + ["--config", cfg], names=(cfg, "prepare.crop_to_bodyy"), problem="unknown key", out=out)


@case("prepare", "config-wrong-type")
def _(fx, tmp):
    cfg = merged_config(tmp, {"targets": {"spleen": {"spacing_mm": "fine"}}})
    argv, out = _prep(fx, tmp, fx.task, config=False)
    return Spec(argv + ["--config", cfg], names=(cfg, "targets.spleen.spacing_mm"), out=out)


@case("prepare", "unknown-target")
def _(fx, tmp):
    out = tmp / "prepared" / "liver"
    return Spec(["prepare", fx.task, "--target", "liver", "--out", out], names=("liver",),
                problem="unknown target", out=out)


@case("prepare", "target-of-another-task")
def _(fx, tmp):
    out = tmp / "prepared" / "pancreas"
    return Spec(["prepare", fx.task, "--target", "pancreas", "--out", out], names=(fx.task, "Task07_Pancreas"),
                out=out)


@case("prepare", "too-many-folds-for-the-cases")
def _(fx, tmp):
    cfg = merged_config(tmp, {"splits": {"folds": 10}})
    argv, out = _prep(fx, tmp, fx.task, config=False)
    return Spec(argv + ["--config", cfg], names=("splits.folds",), problem="too few", out=out)


@case("prepare", "usage-missing-target")
def _(fx, tmp):
    out = tmp / "prepared" / "spleen"
    return Spec(["prepare", fx.task, "--out", out], names=("--target",), out=out, code=2)


@case("prepare", "existing-output-kept")
def _(fx, tmp):
    argv, out = _prep(fx, tmp, fx.task)
    garbage(out / "fingerprint.json", b"the user's")
    return Spec(argv, names=(out,), problem="already exists", out=out, keep=True)


@case("prepare", "overwrite-with-bad-image-keeps-existing")
def _(fx, tmp):
    spec = _prep_bad_image(fx, tmp, "NaN", fn=_set(np.nan))
    shutil.copytree(fx.prepared, spec.out)
    spec.argv.append("--overwrite")
    spec.keep = True
    return spec


@case("prepare", "output-is-a-file")
def _(fx, tmp):
    argv, out = _prep(fx, tmp, fx.task, "--overwrite")
    garbage(out, b"a file where the output folder goes")
    return Spec(argv, names=(out,), out=out, keep=True)


# ----------------------------------------------------------------------------- train
def _train(fx, tmp, *extra, prepared=None, config=None):
    out = tmp / "run"
    return ["train", "--config", config or fx.cfg, "--target", "spleen", "--out", out,
            "--prepared", prepared or fx.prepared, "--device", "cpu", *extra], out


def _prepared_copy(fx, tmp) -> Path:
    return Path(shutil.copytree(fx.prepared, tmp / "prepared" / "spleen"))


@case("train", "config-missing")
def _(fx, tmp):
    argv, out = _train(fx, tmp, config=tmp / "nope.yaml")
    return Spec(argv, names=(tmp / "nope.yaml",), problem="does not exist", out=out)


@case("train", "config-wrong-type")
def _(fx, tmp):
    cfg = merged_config(tmp, {"train": {"lr": "fast"}})
    argv, out = _train(fx, tmp, config=cfg)
    return Spec(argv, names=(cfg, "train.lr"), out=out)


@case("train", "config-unknown-key")
def _(fx, tmp):
    cfg = merged_config(tmp, {"train": {"stepz": 3}})
    argv, out = _train(fx, tmp, config=cfg)
    return Spec(argv, names=(cfg, "train.stepz"), problem="unknown key", out=out)


@case("train", "unknown-target")
def _(fx, tmp):
    argv, out = _train(fx, tmp)
    argv[argv.index("spleen")] = "liver"
    return Spec(argv, names=("liver",), problem="unknown target", out=out)


@case("train", "unknown-variant")
def _(fx, tmp):
    argv, out = _train(fx, tmp, "--variant", "bogus")
    return Spec(argv, names=("bogus",), problem="unknown variant", out=out)


@case("train", "fold-out-of-range")
def _(fx, tmp):
    argv, out = _train(fx, tmp, "--fold", "5")
    return Spec(argv, names=(fx.prepared / "splits.json",), problem="out of range", out=out)


@case("train", "usage-fold-negative")
def _(fx, tmp):
    argv, out = _train(fx, tmp, "--fold", "-1")
    return Spec(argv, names=("--fold",), out=out, code=2)


@case("train", "device-unknown")
def _(fx, tmp):
    argv, out = _train(fx, tmp)
    argv[argv.index("cpu")] = "tpu"
    return Spec(argv, names=("tpu",), problem="device", out=out)


@case("train", "prepared-folder-missing")
def _(fx, tmp):
    argv, out = _train(fx, tmp, prepared=tmp / "nowhere")
    return Spec(argv, names=(tmp / "nowhere" / "splits.json",), out=out)


def _bad_prepared_file(fx, tmp, name, content, problem=""):
    prep = _prepared_copy(fx, tmp)
    p = prep / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv, out = _train(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), problem=problem, out=out)


def _prepared_for_another_target(fx, tmp) -> Path:
    """A copy of the prepared spleen whose plan.json says it was prepared for lung_tumour."""
    prep = _prepared_copy(fx, tmp)
    plan = json.loads((prep / "plan.json").read_text())
    (prep / "plan.json").write_text(json.dumps({**plan, "target": "lung_tumour"}))
    return prep


@case("train", "prepared-for-another-target")
def _(fx, tmp):
    prep = _prepared_for_another_target(fx, tmp)
    argv, out = _train(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep / "plan.json", "lung_tumour"), problem="prepared for target", out=out)


@case("train", "plan-json-not-json")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "plan.json", GARBAGE, "plan.json")


@case("train", "splits-json-not-json")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", '{"folds": [', "splits")


@case("train", "splits-json-binary")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", GARBAGE, "splits")


@case("train", "splits-json-not-an-object")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", "[1, 2]", "splits")


@case("train", "splits-json-without-folds")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", '{"test": []}', "folds")


@case("train", "splits-json-fold-without-train")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", '{"folds": [{"val": ["spleen_0"]}]}', "train")


@case("train", "splits-json-case-ids-not-strings")
def _(fx, tmp):
    return _bad_prepared_file(fx, tmp, "splits.json", '{"folds": [{"train": [1, 2], "val": 3}]}', "splits")


@case("train", "splits-json-unknown-case")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    (prep / "splits.json").write_text(json.dumps({"folds": [{"train": ["spleen_0", "nope"], "val": ["spleen_1"]}]}))
    argv, out = _train(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep, "nope"), out=out)


@case("train", "prepared-image-npy-corrupt")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    train_ids = json.loads((prep / "splits.json").read_text())["folds"][0]["train"]
    p = garbage(prep / "cases" / train_ids[0] / "image.npy")
    argv, out = _train(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), out=out)


@case("train", "prepared-geometry-json-missing")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    train_ids = json.loads((prep / "splits.json").read_text())["folds"][0]["train"]
    p = prep / "cases" / train_ids[0] / "geometry.json"
    p.unlink()
    argv, out = _train(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), out=out)


@case("train", "output-is-a-file")
def _(fx, tmp):
    argv, out = _train(fx, tmp)
    garbage(out, b"a file where the run folder goes")
    return Spec(argv, names=(out,), out=out, keep=True)


def _resume_with(fx, tmp, write_last):
    argv, out = _train(fx, tmp)
    out.mkdir()
    write_last(out / "last.pt")
    (out / "train_log.csv").write_text("step,loss\n1,0.5\n")
    return argv, out


@case("train", "resume-from-corrupt-last-pt")
def _(fx, tmp):
    argv, out = _resume_with(fx, tmp, garbage)
    return Spec(argv, names=(out / "last.pt",), problem="corrupt", out=out, keep=True)


@case("train", "resume-from-truncated-last-pt")
def _(fx, tmp):
    argv, out = _resume_with(fx, tmp, lambda p: truncate(fx.ckpt, p))
    return Spec(argv, names=(out / "last.pt",), out=out, keep=True)


@case("train", "resume-from-non-checkpoint-pt")
def _(fx, tmp):
    argv, out = _resume_with(fx, tmp, lambda p: torch.save({"weights": torch.zeros(2)}, p))
    return Spec(argv, names=(out / "last.pt",), problem="not a sam2-3dmed checkpoint", out=out, keep=True)


@case("train", "resume-from-checkpoint-of-another-target")
def _(fx, tmp):
    argv, out = _resume_with(fx, tmp, lambda p: retarget(fx.ckpt, p, "pancreas"))
    return Spec(argv, names=(out, "pancreas"), out=out, keep=True)


def retarget(src: Path, dst: Path, target: str) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=False)
    state["target"] = target
    torch.save(state, dst)
    return dst


# ----------------------------------------------------------------------------- predict
def _pred(fx, tmp, inp=None, *extra, model=None, out=None):
    out = out or tmp / "pred.nii.gz"
    return ["predict", model or fx.ckpt, inp or fx.image, out, "--device", "cpu", *extra], out


def _pred_bad_input(fx, tmp, problem, fn=None, raw=None, name="scan.nii.gz", dtype=np.float32):
    p = tmp / name
    if raw is not None:
        shutil.copy(fx.image, p)
        raw(p)
    else:
        nifti_like(fx.image, p, fn=fn, dtype=dtype)
    argv, out = _pred(fx, tmp, p)
    return Spec(argv, names=(p,), problem=problem, out=out)


def _pred_bad_model(fx, tmp, make, problem=""):
    m = tmp / "model.pt"
    make(m)
    argv, out = _pred(fx, tmp, model=m)
    return Spec(argv, names=(m,), problem=problem, out=out)


def _model_variant(fx, dst: Path, fn) -> Path:
    state = torch.load(fx.ckpt, map_location="cpu", weights_only=False)
    fn(state)
    torch.save(state, dst)
    return dst


@case("predict", "checkpoint-missing")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: None, "does not exist")


@case("predict", "checkpoint-random-bytes")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, garbage, "corrupt")


@case("predict", "checkpoint-truncated")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: truncate(fx.ckpt, m), "corrupt")


@case("predict", "checkpoint-empty-file")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: m.write_bytes(b""), "empty")


@case("predict", "checkpoint-text-file")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: m.write_text("best model ever\n"), "corrupt")


@case("predict", "checkpoint-is-a-directory")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: m.mkdir(), "folder")


@case("predict", "checkpoint-not-sam2-3dmed")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: torch.save({"w": torch.zeros(3)}, m), "not a sam2-3dmed checkpoint")


@case("predict", "checkpoint-holds-code")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: torch.save({"f": print}, m), "refused")


@case("predict", "checkpoint-of-another-model")
def _(fx, tmp):
    def bigger(state):
        state["config"]["model"]["adapter_blocks"] = 2
    return _pred_bad_model(fx, tmp, lambda m: _model_variant(fx, m, bigger), "does not match the model")


@case("predict", "checkpoint-tensor-shape-mismatch")
def _(fx, tmp):
    def reshape(state):
        name = next(iter(state["trainable"]))
        state["trainable"][name] = torch.zeros(3, 1, 1, 1, 1)
    return _pred_bad_model(fx, tmp, lambda m: _model_variant(fx, m, reshape), "shape")


@case("predict", "checkpoint-without-config")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: _model_variant(fx, m, lambda s: s.pop("config")), "config")


@case("predict", "checkpoint-target-unknown")
def _(fx, tmp):
    return _pred_bad_model(fx, tmp, lambda m: retarget(fx.ckpt, m, "liver"), "liver")


@case("predict", "input-missing")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, tmp / "nope.nii.gz")
    return Spec(argv, names=(tmp / "nope.nii.gz",), problem="does not exist", out=out)


@case("predict", "input-random-bytes")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "cannot read", raw=garbage)


@case("predict", "input-truncated")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "corrupt", raw=lambda p: truncate(p, p))


@case("predict", "input-text-file")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "cannot read", raw=lambda p: p.write_text("not a scan\n"))


@case("predict", "input-unsupported-suffix")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "unsupported file type", raw=lambda p: None, name="scan.png")


@case("predict", "input-folder-without-dicom")
def _(fx, tmp):
    d = tmp / "series"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    argv, out = _pred(fx, tmp, d)
    return Spec(argv, names=(d,), problem="no DICOM series", out=out)


@case("predict", "input-2d")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "3D", fn=lambda a: a[:, :, 2])


@case("predict", "input-4d-two-channels")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "3D", fn=lambda a: np.stack([a, a], -1))


@case("predict", "input-zero-size-axis")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "empty", fn=lambda a: a[:0])


@case("predict", "input-nan-voxels")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "NaN", fn=_set(np.nan))


@case("predict", "input-inf-voxels")
def _(fx, tmp):
    return _pred_bad_input(fx, tmp, "inf", fn=_set(np.inf))


@case("predict", "input-nrrd-nan-voxels")
def _(fx, tmp):
    from sam2_3dmed.data.readers import write_sitk

    a = np.asarray(nib.load(str(fx.image)).dataobj, dtype=np.float32)
    a[1, 1, 1] = np.nan
    p = write_sitk(a, AFFINE, tmp / "scan.nrrd")
    argv, out = _pred(fx, tmp, p)
    return Spec(argv, names=(p,), problem="NaN", out=out)


def _pred_accepted(fx, tmp, fn):
    p = nifti_like(fx.image, tmp / "scan.nii.gz", fn=fn, dtype=np.float32)
    argv, out = _pred(fx, tmp, p)

    def ok(stdout):
        img, ref = nib.load(str(out)), nib.load(str(p))
        a = np.asarray(img.dataobj)
        assert a.shape == ref.shape and np.allclose(img.affine, ref.affine)
        assert set(np.unique(a).tolist()) <= {0, 1}
    return Spec(argv, out=out, code=0, accepted=ok)


@case("predict", "accepted-input-huge-values-clipped")
def _(fx, tmp):
    return _pred_accepted(fx, tmp, _set(1e30, (slice(5, 15), slice(5, 15), slice(1, 3))))


@case("predict", "accepted-input-all-constant")
def _(fx, tmp):
    return _pred_accepted(fx, tmp, lambda a: np.full_like(a, 40.0))


def _prompt(fx, tmp, flag, value, problem="", names=None, code=1):
    argv, out = _pred(fx, tmp, None, flag, value)
    return Spec(argv, names=names or (flag,), problem=problem, out=out, code=code)


@case("predict", "prompt-box-too-few-numbers")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-box", "3,1,2,4", "5 comma-separated numbers")


@case("predict", "prompt-box-not-numbers")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-box", "a,b,c,d,e", "numbers")


@case("predict", "prompt-box-nan")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-box", "3,nan,1,10,10", "numbers")


@case("predict", "prompt-box-empty-string")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-box", "", "numbers")


@case("predict", "prompt-box-inverted")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-box", "3,20,20,10,10", "x0 <= x1", names=("prompt box",))


@case("predict", "prompt-box-outside-image")
def _(fx, tmp):
    spec = _prompt(fx, tmp, "--prompt-box", "3,10,10,500,20", "outside the image")
    spec.names = (fx.image,)
    return spec


@case("predict", "prompt-point-slice-outside-image")
def _(fx, tmp):
    spec = _prompt(fx, tmp, "--prompt-point", "99,10,10", "outside the image")
    spec.names = (fx.image,)
    return spec


@case("predict", "prompt-point-too-many-numbers")
def _(fx, tmp):
    return _prompt(fx, tmp, "--prompt-point", "1,2,3,4", "3 comma-separated numbers")


@case("predict", "prompt-two-boxes-on-one-slice")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, None, "--prompt-box", "3,1,1,9,9", "--prompt-box", "3,2,2,8,8")
    return Spec(argv, names=(argv[2],), problem="at most one box per slice", out=out)


@case("predict", "usage-prompt-box-without-value")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, None, "--prompt-box")
    return Spec(argv, names=("--prompt-box",), out=out, code=2)


@case("predict", "passes-unknown")
def _(fx, tmp):
    return _prompt(fx, tmp, "--passes", "twice", "half or full")


@case("predict", "device-unknown")
def _(fx, tmp):
    argv, out = _pred(fx, tmp)
    argv[argv.index("cpu")] = "tpu"
    return Spec(argv, names=("tpu",), problem="device", out=out)


@case("predict", "output-not-nifti")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, out=tmp / "pred.png")
    return Spec(argv, names=(out,), problem=".nii", out=out)


@case("predict", "output-folder-missing")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, out=tmp / "nowhere" / "pred.nii.gz")
    return Spec(argv, names=(tmp / "nowhere",), problem="does not exist", out=out)


@case("predict", "existing-output-kept")
def _(fx, tmp):
    argv, out = _pred(fx, tmp)
    shutil.copy(fx.mask, out)
    return Spec(argv, names=(out,), problem="--overwrite", out=out, keep=True)


@case("predict", "overwrite-with-bad-input-keeps-existing")
def _(fx, tmp):
    spec = _pred_bad_input(fx, tmp, "NaN", fn=_set(np.nan))
    shutil.copy(fx.mask, spec.out)
    spec.argv.append("--overwrite")
    spec.keep = True
    return spec


@case("predict", "overwrite-with-bad-checkpoint-keeps-existing")
def _(fx, tmp):
    spec = _pred_bad_model(fx, tmp, garbage, "corrupt")
    shutil.copy(fx.mask, spec.out)
    spec.argv.append("--overwrite")
    spec.keep = True
    return spec


@case("predict", "output-is-a-directory")
def _(fx, tmp):
    argv, out = _pred(fx, tmp, None, "--overwrite")
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    return Spec(argv, names=(out,), problem="folder", out=out, keep=True)


# ----------------------------------------------------------------------------- evaluate
def _eval(fx, tmp, *extra, prepared=None, run=None, config=None):
    out = tmp / "eval"
    return ["evaluate", "--config", config or fx.cfg, "--target", "spleen", "--run", run or fx.run,
            "--out", out, "--prepared", prepared or fx.prepared, "--device", "cpu", *extra], out


def _eval_ckpt(fx, tmp, make, problem=""):
    run = tmp / "run"
    run.mkdir()
    make(run / "best.pt")
    argv, out = _eval(fx, tmp, run=run)
    return Spec(argv, names=(run / "best.pt",), problem=problem, out=out)


def _eval_prepared(fx, tmp, name, content, problem=""):
    prep = _prepared_copy(fx, tmp)
    p = prep / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), problem=problem, out=out)


def _fingerprint_with(fx, tmp, fn) -> tuple[Path, Path]:
    prep = _prepared_copy(fx, tmp)
    p = prep / "fingerprint.json"
    fp = json.loads(p.read_text())
    fn(fp)
    p.write_text(json.dumps(fp))
    return prep, p


def _first_val_case(fx) -> str:
    return json.loads((fx.prepared / "splits.json").read_text())["folds"][0]["val"][0]


@case("evaluate", "config-unknown-key")
def _(fx, tmp):
    cfg = merged_config(tmp, {"evaluate": {"splitt": "val"}})
    argv, out = _eval(fx, tmp, config=cfg)
    return Spec(argv, names=(cfg, "evaluate.splitt"), problem="unknown key", out=out)


@case("evaluate", "unknown-target")
def _(fx, tmp):
    argv, out = _eval(fx, tmp)
    argv[argv.index("spleen")] = "liver"
    return Spec(argv, names=("liver",), problem="unknown target", out=out)


@case("evaluate", "run-folder-without-checkpoint")
def _(fx, tmp):
    (tmp / "run").mkdir()
    argv, out = _eval(fx, tmp, run=tmp / "run")
    return Spec(argv, names=(tmp / "run" / "best.pt",), problem="does not exist", out=out)


@case("evaluate", "checkpoint-random-bytes")
def _(fx, tmp):
    return _eval_ckpt(fx, tmp, garbage, "corrupt")


@case("evaluate", "checkpoint-not-sam2-3dmed")
def _(fx, tmp):
    return _eval_ckpt(fx, tmp, lambda p: torch.save([1, 2, 3], p), "not a sam2-3dmed checkpoint")


@case("evaluate", "checkpoint-of-another-target")
def _(fx, tmp):
    spec = _eval_ckpt(fx, tmp, lambda p: retarget(fx.ckpt, p, "pancreas"), "pancreas model, not spleen")
    return spec


@case("evaluate", "checkpoint-option-path-missing")
def _(fx, tmp):
    argv, out = _eval(fx, tmp, "--checkpoint", tmp / "nope.pt")
    return Spec(argv, names=(tmp / "nope.pt",), problem="does not exist", out=out)


@case("evaluate", "split-unknown")
def _(fx, tmp):
    argv, out = _eval(fx, tmp, "--split", "train")
    return Spec(argv, names=("--split",), out=out)


@case("evaluate", "modes-unknown")
def _(fx, tmp):
    argv, out = _eval(fx, tmp, "--modes", "auto,magic")
    return Spec(argv, names=("magic",), problem="mode", out=out)


@case("evaluate", "fold-out-of-range")
def _(fx, tmp):
    argv, out = _eval(fx, tmp, "--fold", "3")
    return Spec(argv, names=(fx.prepared / "splits.json",), problem="out of range", out=out)


@case("evaluate", "usage-max-cases-zero")
def _(fx, tmp):
    argv, out = _eval(fx, tmp, "--max-cases", "0")
    return Spec(argv, names=("--max-cases",), out=out, code=2)


@case("evaluate", "fingerprint-json-missing")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    (prep / "fingerprint.json").unlink()
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep / "fingerprint.json",), problem="not found", out=out)


@case("evaluate", "fingerprint-json-not-json")
def _(fx, tmp):
    return _eval_prepared(fx, tmp, "fingerprint.json", '{"cases": [', "JSON")


@case("evaluate", "fingerprint-json-binary")
def _(fx, tmp):
    return _eval_prepared(fx, tmp, "fingerprint.json", GARBAGE, "JSON")


@case("evaluate", "fingerprint-json-not-an-object")
def _(fx, tmp):
    return _eval_prepared(fx, tmp, "fingerprint.json", "[]", "fingerprint")


@case("evaluate", "fingerprint-json-without-cases")
def _(fx, tmp):
    prep, p = _fingerprint_with(fx, tmp, lambda fp: fp.pop("cases"))
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), problem="cases", out=out)


@case("evaluate", "fingerprint-json-case-without-label")
def _(fx, tmp):
    prep, p = _fingerprint_with(fx, tmp, lambda fp: [c.pop("label") for c in fp["cases"]])
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), problem="label", out=out)


@case("evaluate", "fingerprint-json-case-missing")
def _(fx, tmp):
    vid = _first_val_case(fx)
    prep, p = _fingerprint_with(fx, tmp, lambda fp: fp.update(cases=[c for c in fp["cases"] if c["case_id"] != vid]))
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(p, vid), problem="does not list case", out=out)


@case("evaluate", "fingerprint-task-dir-moved")
def _(fx, tmp):
    prep, p = _fingerprint_with(fx, tmp, lambda fp: fp.update(task_dir=str(tmp / "moved")))
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(tmp / "moved",), problem="does not exist", out=out)


def _eval_with_bad_label(fx, tmp, damage, problem, names_label=True):
    task = task_copy(fx, tmp)
    vid = _first_val_case(fx)
    lab = task / "labelsTr" / f"{vid}.nii.gz"
    damage(lab)
    prep, _ = _fingerprint_with(fx, tmp, lambda fp: fp.update(task_dir=str(task)))
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(lab,) if names_label else (prep / "cases" / vid,), problem=problem, out=out)


@case("evaluate", "original-label-random-bytes")
def _(fx, tmp):
    return _eval_with_bad_label(fx, tmp, garbage, "cannot read")


@case("evaluate", "original-label-nan-voxels")
def _(fx, tmp):
    return _eval_with_bad_label(fx, tmp, lambda p: nifti_like(p, p, fn=_set(np.nan), dtype=np.float32), "NaN")


@case("evaluate", "original-label-shape-changed")
def _(fx, tmp):
    return _eval_with_bad_label(fx, tmp, lambda p: nifti_like(p, p, fn=lambda a: a[:-1], dtype=np.uint8),
                                "re-run prepare", names_label=False)


@case("evaluate", "prepared-for-another-target")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    plan = json.loads((prep / "plan.json").read_text())
    (prep / "plan.json").write_text(json.dumps({**plan, "target": "pancreas"}))
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep / "plan.json", "pancreas"), problem="prepared for target", out=out)


@case("evaluate", "splits-json-not-json")
def _(fx, tmp):
    return _eval_prepared(fx, tmp, "splits.json", "{", "splits")


@case("evaluate", "prepared-case-missing")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    vid = _first_val_case(fx)
    shutil.rmtree(prep / "cases" / vid)
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep, vid), out=out)


@case("evaluate", "prepared-label-npy-corrupt")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    p = garbage(prep / "cases" / _first_val_case(fx) / "label.npy")
    argv, out = _eval(fx, tmp, prepared=prep)
    return Spec(argv, names=(p,), out=out)


@case("evaluate", "accepted-label-without-foreground-prompted-mode")
def _(fx, tmp):
    """No organ: no prompt can be simulated; the case is predicted unprompted and scored by the empty-mask policy."""
    task = task_copy(fx, tmp)
    vid = _first_val_case(fx)
    lab = task / "labelsTr" / f"{vid}.nii.gz"
    nifti_like(lab, lab, fn=np.zeros_like, dtype=np.uint8)
    prep, _ = _fingerprint_with(fx, tmp, lambda fp: fp.update(task_dir=str(task)))
    np.save(prep / "cases" / vid / "label.npy", np.zeros_like(np.load(prep / "cases" / vid / "label.npy")))
    argv, out = _eval(fx, tmp, "--modes", "prompted", "--prompt-counts", "1", "--max-cases", "1", prepared=prep)

    def ok(stdout):
        rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
        assert (rows[0]["case_id"], rows[0]["mode"], rows[0]["prompt"]) == (vid, "prompted", "none (empty label)")
        # the prompt-robustness modes cannot place a prompt either
        assert {r["mode"] for r in rows[1:]} and all(r["prompt"] == "none (empty label)" for r in rows), rows
        assert rows[0]["gt_voxels"] == "0" and float(rows[0]["dice"]) in (0.0, 1.0)
        json.loads((out / "summary.json").read_text())
    return Spec(argv, out=out, code=0, accepted=ok)


@case("evaluate", "existing-output-kept")
def _(fx, tmp):
    argv, out = _eval(fx, tmp)
    garbage(out / "metrics.csv", b"the user's")
    return Spec(argv, names=(out,), problem="already exists", out=out, keep=True)


@case("evaluate", "overwrite-with-bad-checkpoint-keeps-existing")
def _(fx, tmp):
    spec = _eval_ckpt(fx, tmp, garbage, "corrupt")
    garbage(spec.out / "metrics.csv", b"the user's")
    spec.argv.append("--overwrite")
    spec.keep = True
    return spec


# ----------------------------------------------------------------------------- metrics
def _metrics(pred, gt, *extra):
    return ["metrics", pred, gt, "--json", *extra]


def _met_bad(fx, tmp, problem, fn=None, raw=None, dtype=np.float32, which="pred"):
    p = tmp / f"{which}.nii.gz"
    if raw is not None:
        shutil.copy(fx.mask, p)
        raw(p)
    else:
        nifti_like(fx.mask, p, fn=fn, dtype=dtype)
    argv = _metrics(p, fx.mask) if which == "pred" else _metrics(fx.mask, p)
    return Spec(argv, names=(p,), problem=problem)


@case("metrics", "pred-missing")
def _(fx, tmp):
    return Spec(_metrics(tmp / "nope.nii.gz", fx.mask), names=(tmp / "nope.nii.gz",), problem="does not exist")


@case("metrics", "pred-random-bytes")
def _(fx, tmp):
    return _met_bad(fx, tmp, "cannot read", raw=garbage)


@case("metrics", "pred-truncated")
def _(fx, tmp):
    big = save(tmp / "big.nii.gz", np.random.default_rng(1).integers(0, 2, (64, 64, 32)).astype(np.uint8), AFFINE)
    return _met_bad(fx, tmp, "corrupt", raw=lambda p: truncate(big, p))


@case("metrics", "pred-text-file")
def _(fx, tmp):
    return _met_bad(fx, tmp, "cannot read", raw=lambda p: p.write_text("dice: 1.0\n"))


@case("metrics", "pred-is-a-directory")
def _(fx, tmp):
    d = tmp / "pred.nii.gz"
    d.mkdir()
    return Spec(_metrics(d, fx.mask), names=(d,), problem="folder")


@case("metrics", "pred-2d")
def _(fx, tmp):
    return _met_bad(fx, tmp, "3D", fn=lambda a: a[:, :, 2], dtype=np.uint8)


@case("metrics", "pred-4d-two-channels")
def _(fx, tmp):
    return _met_bad(fx, tmp, "3D", fn=lambda a: np.stack([a, a], -1), dtype=np.uint8)


@case("metrics", "pred-zero-size-axis")
def _(fx, tmp):
    return _met_bad(fx, tmp, "empty", fn=lambda a: a[:, :0], dtype=np.uint8)


@case("metrics", "pred-nan-voxels")
def _(fx, tmp):
    return _met_bad(fx, tmp, "NaN", fn=_set(np.nan))


@case("metrics", "gt-inf-voxels")
def _(fx, tmp):
    return _met_bad(fx, tmp, "inf", fn=_set(np.inf), which="gt")


@case("metrics", "gt-random-bytes")
def _(fx, tmp):
    return _met_bad(fx, tmp, "cannot read", raw=garbage, which="gt")


@case("metrics", "shape-mismatch")
def _(fx, tmp):
    return _met_bad(fx, tmp, "shape", fn=lambda a: a[:-1], dtype=np.uint8)


@case("metrics", "affine-mismatch")
def _(fx, tmp):
    aff = AFFINE.copy()
    aff[:3, 3] = [2.0, 0, 0]
    p = nifti_like(fx.mask, tmp / "pred.nii.gz", affine=aff, dtype=np.uint8)
    return Spec(_metrics(p, fx.mask), names=(p, fx.mask.name), problem="different grids")


@case("metrics", "tolerance-negative")
def _(fx, tmp):
    return Spec(_metrics(fx.mask, fx.mask, "--tolerance-mm", "-1"), names=("--tolerance-mm",))


@case("metrics", "tolerance-nan")
def _(fx, tmp):
    return Spec(_metrics(fx.mask, fx.mask, "--tolerance-mm", "nan"), names=("--tolerance-mm",))


@case("metrics", "usage-tolerance-not-a-number")
def _(fx, tmp):
    return Spec(_metrics(fx.mask, fx.mask, "--tolerance-mm", "one"), names=("--tolerance-mm",), code=2)


def _met_accepted(fx, tmp, fn, dtype, check):
    p = nifti_like(fx.mask, tmp / "pred.nii.gz", fn=fn, dtype=dtype)
    return Spec(_metrics(p, fx.mask), code=0, accepted=lambda stdout: check(finite_json(stdout)))


@case("metrics", "accepted-fractional-values-are-foreground")
def _(fx, tmp):
    return _met_accepted(fx, tmp, lambda a: a * 0.25, np.float32, lambda r: r["dice"] == 1.0)


@case("metrics", "accepted-negative-values-are-background")
def _(fx, tmp):
    return _met_accepted(fx, tmp, lambda a: a - 1.0, np.int16, lambda r: r["pred_voxels"] == 0 and r["dice"] == 0.0)


@case("metrics", "accepted-huge-values-are-foreground")
def _(fx, tmp):
    return _met_accepted(fx, tmp, lambda a: a * 1e30, np.float32, lambda r: r["dice"] == 1.0)


@case("metrics", "accepted-both-masks-empty")
def _(fx, tmp):
    e = nifti_like(fx.mask, tmp / "empty.nii.gz", fn=np.zeros_like, dtype=np.uint8)

    def ok(stdout):
        r = finite_json(stdout)
        assert r["dice"] == 1.0 and r["hd95"] == 0.0 and r["gt_voxels"] == 0
    return Spec(_metrics(e, e), code=0, accepted=ok)


@case("metrics", "accepted-gt-without-foreground")
def _(fx, tmp):
    e = nifti_like(fx.mask, tmp / "empty.nii.gz", fn=np.zeros_like, dtype=np.uint8)

    def ok(stdout):
        r = finite_json(stdout)
        assert r["dice"] == 0.0 and r["nsd"] == 0.0 and r["hd95"] > 0
    return Spec(_metrics(fx.mask, e), code=0, accepted=ok)


# ----------------------------------------------------------------------------- report
def _report(fx, tmp, runs=None, *extra, config=None):
    out = tmp / "reports"
    return ["report", "--config", config or fx.report_cfg, "--runs", runs or fx.runs, "--out", out, *extra], out


def _runs_copy(fx, tmp) -> tuple[Path, Path]:
    runs = Path(shutil.copytree(fx.runs, tmp / "runs"))
    return runs, runs / "spleen" / "full" / "fold0"


def _report_bad(fx, tmp, rel, content, problem=""):
    runs, run = _runs_copy(fx, tmp)
    p = run / rel
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv, out = _report(fx, tmp, runs)
    return Spec(argv, names=(p,), problem=problem, out=out)


HEADER = ",".join(METRIC_FIELDS)
ROW = "spleen_0,auto,,0.5,0.4,3,0.6,1,100,110,1,1,10,10,100,1,cpu"


@case("report", "metrics-csv-random-bytes")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", GARBAGE, "malformed")


@case("report", "metrics-csv-empty-file")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", "", "malformed")


@case("report", "metrics-csv-header-only")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n", "no case rows")


@case("report", "metrics-csv-missing-columns")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", "case_id,mode,dice\nspleen_0,auto,0.5\n", "missing column")


@case("report", "metrics-csv-non-numeric")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n" + ROW.replace("0.5", "good", 1) + "\n",
                       "non-numeric")


@case("report", "metrics-csv-nan-metric")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n" + ROW.replace("0.5", "nan", 1) + "\n", "nan")


@case("report", "metrics-csv-inf-metric")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n" + ROW.replace(",3,", ",inf,", 1) + "\n", "inf")


@case("report", "metrics-csv-first-row-too-long")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n" + ROW + ",extra,fields\n", "more fields")


@case("report", "metrics-csv-later-row-too-long")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", f"{HEADER}\n{ROW}\n{ROW},extra\n", "malformed CSV")


@case("report", "metrics-csv-row-too-short")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", f"{HEADER}\nspleen_0,auto\n", "non-numeric")


@case("report", "metrics-csv-empty-case-id")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/metrics.csv", HEADER + "\n" + ROW.replace("spleen_0", "") + "\n",
                       "empty case_id")


@case("report", "train-log-without-step")
def _(fx, tmp):
    return _report_bad(fx, tmp, "train_log.csv", "loss\n0.5\n", "step")


@case("report", "train-log-non-numeric")
def _(fx, tmp):
    return _report_bad(fx, tmp, "train_log.csv", "step,loss\n1,low\n", "non-numeric")


@case("report", "val-log-random-bytes")
def _(fx, tmp):
    return _report_bad(fx, tmp, "val_log.csv", GARBAGE, "malformed")


@case("report", "train-summary-not-json")
def _(fx, tmp):
    return _report_bad(fx, tmp, "train_summary.json", '{"steps": ', "JSON")


@case("report", "eval-summary-not-an-object")
def _(fx, tmp):
    return _report_bad(fx, tmp, "eval/val/summary.json", "[1, 2]", "JSON object")


@case("report", "runs-folder-missing")
def _(fx, tmp):
    argv, out = _report(fx, tmp, tmp / "nowhere")
    return Spec(argv, names=(tmp / "nowhere",), problem="no run folders", out=out)


@case("report", "targets-unknown")
def _(fx, tmp):
    argv, out = _report(fx, tmp, None, "--targets", "liver")
    return Spec(argv, names=("liver",), problem="unknown target", out=out)


@case("report", "config-invalid-yaml")
def _(fx, tmp):
    cfg = write_config(tmp, "run: [\n")
    argv, out = _report(fx, tmp, config=cfg)
    return Spec(argv, names=(cfg,), problem="YAML", out=out)


@case("report", "accepted-fingerprint-json-malformed-noted-on-page")
def _(fx, tmp):
    prep = tmp / "report_prepared" / "spleen"
    garbage(prep / "fingerprint.json", b"{not json")
    cfg = yaml.safe_load(fx.report_cfg.read_text())
    cfg["data"]["prepared"] = str(tmp / "report_prepared")
    cfg_path = write_config(tmp, cfg)
    argv, out = _report(fx, tmp, config=cfg_path)

    def ok(stdout):
        html = (out / "spleen.html").read_text()
        assert "could not be read" in html and (out / "index.html").is_file()
    return Spec(argv, out=out, code=0, accepted=ok)


# ----------------------------------------------------------------------------- nnunet-plan
def _nnplan(fx, tmp, *extra, prepared=None, config=None, target="spleen"):
    out = tmp / "nnunet" / "spleen"
    return ["nnunet-plan", "--config", config or fx.cfg, "--target", target, "--prepared", prepared or fx.prepared,
            "--out", out, *extra], out


@case("nnunet-plan", "prepared-folder-missing")
def _(fx, tmp):
    argv, out = _nnplan(fx, tmp, prepared=tmp / "nowhere")
    return Spec(argv, names=(tmp / "nowhere",), problem="run `sam2-3dmed prepare` first", out=out)


@case("nnunet-plan", "prepared-for-another-target")
def _(fx, tmp):
    prep = _prepared_for_another_target(fx, tmp)
    argv, out = _nnplan(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep / "plan.json", "lung_tumour"), problem="prepared for target", out=out)


@case("nnunet-plan", "target-unknown")
def _(fx, tmp):
    argv, out = _nnplan(fx, tmp, target="liver")
    return Spec(argv, names=("liver",), problem="unknown target", out=out)


@case("nnunet-plan", "config-epochs-zero")
def _(fx, tmp):
    cfg = merged_config(tmp, {"nnunet": {"epochs": 0}})
    argv, out = _nnplan(fx, tmp, config=cfg)
    return Spec(argv, names=(cfg, "nnunet.epochs"), out=out)


@case("nnunet-plan", "fold-holds-a-test-case")
def _(fx, tmp):
    prep = _prepared_copy(fx, tmp)
    splits = json.loads((prep / "splits.json").read_text())
    leaked = splits["folds"][0]["val"][0]
    splits["test"] = [leaked]
    (prep / "splits.json").write_text(json.dumps(splits))
    argv, out = _nnplan(fx, tmp, prepared=prep)
    return Spec(argv, names=(prep / "splits.json", leaked), problem="held-out test case", out=out)


@case("nnunet-plan", "output-exists-without-overwrite")
def _(fx, tmp):
    argv, out = _nnplan(fx, tmp)
    garbage(out / "raw" / "mine.txt", b"the user's file")
    return Spec(argv, names=(out,), problem="already exists", out=out, keep=True)


# ----------------------------------------------------------------------------- the tests
COMMANDS = ("validate-config", "synth", "fetch-msd", "fetch-weights", "prepare", "train", "predict", "evaluate",
            "metrics", "report", "nnunet-plan")


def command_of(cid: str) -> str:
    return next(c for c in sorted(COMMANDS, key=len, reverse=True) if cid.startswith(c + "-"))


COUNTS = Counter(command_of(cid) for cid in CASES)


# the ids carry the counts, so `pytest --collect-only -q` shows the size of the matrix per command
@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c}-{COUNTS[c]}-cases" for c in COMMANDS])
def test_matrix_covers_command(command):
    assert COUNTS[command] >= 3


@pytest.mark.parametrize("total", [len(CASES)], ids=[f"{len(CASES)}-cases-in-all"])
def test_matrix_size(total):
    print(f"\nbad-input matrix: {total} cases: " + ", ".join(f"{c} {COUNTS[c]}" for c in COMMANDS))
    assert set(COUNTS) == set(COMMANDS) and sum(COUNTS.values()) == total


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SAM2_3DMED_NO_PROGRESS", "1")


@pytest.mark.parametrize("cid", list(CASES))
def test_bad_input(cid, fx, tmp_path):
    spec = prepare_spec(fx, tmp_path, cid)
    code, stdout, stderr = run_in_process(spec.argv)
    check(spec, code, stdout, stderr)


# the real console entry point, one case per kind of failure: config, input file, checkpoint, usage
REAL_PROCESS = ["validate-config-unknown-key", "prepare-image-nan-voxels", "predict-checkpoint-random-bytes",
                "metrics-shape-mismatch", "train-usage-fold-negative"]


def error_line(stderr: str) -> str:
    return next(ln for ln in stderr.splitlines() if ln.lower().startswith("error: "))


@pytest.mark.parametrize("cid", REAL_PROCESS)
def test_real_process(cid, fx, tmp_path):
    """``python -m sam2_3dmed.cli`` in a subprocess keeps the contract, and says exactly what the
    in-process run of the same (failing, hence repeatable) command says."""
    spec = prepare_spec(fx, tmp_path, cid)
    proc = run_cli(*spec.argv, env={"OMP_NUM_THREADS": "1"})
    check(spec, proc.returncode, proc.stdout, proc.stderr)
    code, stdout, stderr = run_in_process(spec.argv)
    check(spec, code, stdout, stderr)
    assert (code, error_line(stderr)) == (proc.returncode, error_line(proc.stderr))
