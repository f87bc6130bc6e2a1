"""Read the pipeline's run folders into pandas tables.

Layout (``workflow/Snakefile``)::

    RUNS/<target>/<variant>/fold<k>/train_log.csv, val_log.csv, train_summary.json
    RUNS/<target>/<variant>/fold<k>/eval/<split>/metrics.csv, summary.json, predictions/
    RUNS/<target>/<variant>/ensemble/eval/test/metrics.csv, summary.json   (every fold's model
        together on the held-out test split: rule evaluate_ensemble; absent in older runs)

Anything missing that a page can live without (a log, an unfinished evaluation, the
predictions) becomes a note shown on the page; a file that exists but cannot be read
raises a one-line :class:`InputFileError` naming it.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import mode_info, mode_prompts  # noqa: F401  (also used by tables)
from ..errors import InputFileError

METRICS = ("dice", "iou", "hd95", "nsd", "assd")
HIGHER_IS_BETTER = {"dice": True, "iou": True, "nsd": True, "hd95": False, "assd": False}
LOSS_TERMS = ("loss", "seg", "obj", "srpp", "bd")
METRICS_REQUIRED = ("case_id", "mode", *METRICS)
METRICS_NUMERIC = (*METRICS, "n_prompts", "pred_voxels", "gt_voxels", "gt_volume_ml", "seconds", "slices",
                   "slices_per_s",
                   "peak_mem_mb", "feature_cache_mb")
VARIANT_ORDER = ("full", "no_srpp", "no_bd", "sam2_ft", "no_pretrain", "unet3d", "nnunet")

_VARIANT_RE = re.compile(r"[a-z][a-z0-9_]*")
_FOLD_RE = re.compile(r"fold([0-9]+)")
ENSEMBLE_DIR = "ensemble"  # RUNS/<target>/<variant>/ensemble/: the folds' ensemble (never a fold<k>)
ENSEMBLE_SPLIT = "test"    # an ensemble is scored on the held-out test split only


def is_main_mode(mode: str) -> bool:
    """auto, prompted, prompted_k<k> (and names of no known family); not a study's mode."""
    info = mode_info(mode)
    return info is None or info.family == "main"


def mode_sort_key(mode: str) -> tuple:
    """auto, prompted, prompted_k3, prompted_k5, ... (by prompt count), then other names."""
    k = mode_prompts(mode)
    return (0, k, "") if k is not None else (1, 0, mode)


@dataclass
class Run:
    """One target x variant x fold folder and what was found in it."""

    target: str
    variant: str
    fold: int
    path: Path
    split: str
    train_summary: dict | None = None
    eval_summary: dict | None = None
    train_log: pd.DataFrame | None = None
    val_log: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.variant}/fold{self.fold}"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval" / self.split

    @property
    def predictions_dir(self) -> Path:
        return self.eval_dir / "predictions"


@dataclass
class EnsembleEval:
    """``RUNS/<target>/<variant>/ensemble/eval/test``: every fold's model together on the
    held-out test split, and what was found there."""

    target: str
    variant: str
    path: Path  # the eval folder
    summary: dict | None = None
    metrics: pd.DataFrame | None = None  # + variant column
    notes: list[str] = field(default_factory=list)

    @property
    def block(self) -> dict:
        """summary.json's "ensemble" block ({} when absent: an older evaluation)."""
        b = (self.summary or {}).get("ensemble")
        return b if isinstance(b, dict) else {}

    @property
    def size(self) -> int | None:
        size = self.block.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            return size
        folds = self.block.get("folds")
        return len(folds) if isinstance(folds, list) else None

    @property
    def folds(self) -> list | None:
        folds = self.block.get("folds")
        return folds if isinstance(folds, list) else None

    @property
    def checkpoints(self) -> list[str]:
        ck = self.block.get("checkpoints")
        return [str(c) for c in ck] if isinstance(ck, list) else []

    @property
    def split(self) -> str:
        return str((self.summary or {}).get("split") or ENSEMBLE_SPLIT)


@dataclass
class TargetResults:
    target: str
    runs_dir: Path
    split: str
    runs: list[Run]
    metrics: pd.DataFrame  # every case row of every run in a main mode (auto, prompted, prompted_k<k>): + variant, fold
    variants: list[str]
    modes: list[str]
    notes: list[str] = field(default_factory=list)
    ensembles: list[EnsembleEval] = field(default_factory=list)  # evaluated ones, in variant order
    # every case row in every mode, the studies' too (direction, prompt robustness: config.mode_info)
    study_metrics: pd.DataFrame | None = None

    def runs_of(self, variant: str) -> list[Run]:
        return [r for r in self.runs if r.variant == variant]

    @property
    def ensemble_metrics(self) -> pd.DataFrame:
        """Every case row of every ensemble evaluation (+ variant column); empty when none."""
        frames = [e.metrics for e in self.ensembles if e.metrics is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", *METRICS_REQUIRED])


def variant_sort_key(name: str, config_order=()) -> tuple:
    order = list(VARIANT_ORDER) + [v for v in config_order if v not in VARIANT_ORDER]
    return (order.index(name), "") if name in order else (len(order), name)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read as JSON ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict):
        raise InputFileError("expected a JSON object at the top level", path)
    return data


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():
            # without index_col=False, pandas silently turns the extra leading fields of a first
            # row longer than the header into an index, shifting every column
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        raise InputFileError("malformed CSV (a row has more fields than the header)", path) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"malformed CSV ({msg})", path) from None


def _numeric(df: pd.DataFrame, cols, path: Path, allow_empty=()) -> pd.DataFrame:
    for c in cols:
        if c not in df.columns:
            continue
        raw = df[c].astype(str).str.strip()
        vals = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
        bad = vals.isna() & ~((raw == "") & (c in allow_empty))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputFileError(f"malformed: column {c!r} has a non-numeric value {raw.iloc[i]!r} "
                                 f"on data row {i + 1}", path)
        df[c] = vals.astype(float)
    return df


def read_metrics(path: Path) -> pd.DataFrame:
    """``eval/<split>/metrics.csv``: a row per case and mode (``evaluate/evaluation.py``)."""
    df = _read_csv(path)
    missing = [c for c in METRICS_REQUIRED if c not in df.columns]
    if missing:
        raise InputFileError(f"malformed metrics.csv: missing column(s) {', '.join(missing)}", path)
    if df.empty:
        raise InputFileError("malformed metrics.csv: no case rows", path)
    if (df["case_id"].str.strip() == "").any() or (df["mode"].str.strip() == "").any():
        raise InputFileError("malformed metrics.csv: empty case_id or mode", path)
    # + the boundary analysis's columns (err_mm_<lo>_<hi> in mL, sd_p<q> in mm: report/boundary.py)
    numeric = (*METRICS_NUMERIC, *(c for c in df.columns if re.fullmatch(r"(err_mm_|sd_p)[0-9][0-9a-z+_-]*", c)))
    df = _numeric(df, numeric, path, allow_empty=tuple(c for c in numeric if c not in METRICS))
    for c in METRICS:  # evaluate never writes inf; tables and figures would show garbage
        bad = ~np.isfinite(df[c].to_numpy())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputFileError(f"malformed metrics.csv: column {c!r} has a non-finite value {df[c].iloc[i]} "
                                 f"on data row {i + 1}", path)
    return df


def read_train_log(path: Path) -> pd.DataFrame:
    df = _read_csv(path)
    if "step" not in df.columns or "loss" not in df.columns:
        raise InputFileError("malformed train_log.csv: needs step and loss columns", path)
    cols = [c for c in df.columns if c not in ("step",)]
    # srpp/bd are empty for variants without them; any other text is an error
    df = _numeric(df, ["step", *cols], path, allow_empty=tuple(cols))
    return df


def read_val_log(path: Path) -> pd.DataFrame:
    df = _read_csv(path)
    if "step" not in df.columns or "mean_dice" not in df.columns:
        raise InputFileError("malformed val_log.csv: needs step and mean_dice columns", path)
    return _numeric(df, list(df.columns), path, allow_empty=tuple(c for c in df.columns if c != "step"))


def discover_runs(runs_dir: Path, target: str) -> list[tuple[str, int, Path]]:
    """(variant, fold, path) of every ``RUNS/<target>/<variant>/fold<k>/`` folder (hidden ones skipped)."""
    base = Path(runs_dir) / target
    found = []
    if base.is_dir():
        for vdir in sorted(base.iterdir()):
            if not vdir.is_dir() or not _VARIANT_RE.fullmatch(vdir.name):
                continue
            for fdir in sorted(vdir.iterdir()):
                m = _FOLD_RE.fullmatch(fdir.name)
                if m and fdir.is_dir():
                    found.append((vdir.name, int(m[1]), fdir))
    return found


def load_run(target: str, variant: str, fold: int, path: Path, split: str) -> Run:
    run = Run(target, variant, fold, path, split)
    p = path / "train_summary.json"
    if p.is_file():
        run.train_summary = read_json(p)
    else:
        run.notes.append(f"{run.name}: no train_summary.json (training not finished?)")
    p = path / "train_log.csv"
    if p.is_file():
        run.train_log = read_train_log(p)
    else:
        run.notes.append(f"{run.name}: no train_log.csv")
    p = path / "val_log.csv"
    if p.is_file():
        run.val_log = read_val_log(p)
    p = run.eval_dir / "metrics.csv"
    if p.is_file():
        m = read_metrics(p)
        m.insert(0, "fold", fold)
        m.insert(0, "variant", variant)
        run.metrics = m
        s = run.eval_dir / "summary.json"
        run.eval_summary = read_json(s) if s.is_file() else None
        if run.eval_summary is None:
            run.notes.append(f"{run.name}: {s} is missing")
    else:
        run.notes.append(f"{run.name}: not evaluated on the {split} split yet ({p} is missing)")
    return run


def load_ensemble_eval(target: str, variant: str, path: Path) -> EnsembleEval | None:
    """The ensemble evaluation in PATH (``.../ensemble/eval/test``), or None when it has not
    been run (older runs, no test split). A folder without metrics.csv is a note."""
    if not path.is_dir():
        return None
    ens = EnsembleEval(target, variant, path)
    p = path / "metrics.csv"
    if not p.is_file():
        ens.notes.append(f"{variant}/{ENSEMBLE_DIR}: not evaluated on the test split yet ({p} is missing)")
        return ens
    m = read_metrics(p)
    m.insert(0, "variant", variant)
    ens.metrics = m
    s = path / "summary.json"
    if s.is_file():
        ens.summary = read_json(s)
        if not ens.block:
            ens.notes.append(f"{variant}/{ENSEMBLE_DIR}: {s} has no \"ensemble\" block (an older evaluation): "
                             "which folds it combines is not recorded")
    else:
        ens.notes.append(f"{variant}/{ENSEMBLE_DIR}: {s} is missing")
    return ens


def collect_target(runs_dir: Path, target: str, split: str, config_variants=()) -> TargetResults | None:
    """Everything under ``RUNS/<target>``; None if there is no run folder at all."""
    found = discover_runs(runs_dir, target)
    if not found:
        return None
    runs = [load_run(target, v, f, p, split) for v, f, p in found]
    runs.sort(key=lambda r: (variant_sort_key(r.variant, config_variants), r.fold))
    frames = [r.metrics for r in runs if r.metrics is not None]
    every = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "fold", *METRICS_REQUIRED])
    # the headline, ablation, distributions, per-case table and cost show the main modes; the
    # studies' modes (auto one direction at a time, perturbed prompts) have their own sections
    metrics = every[[is_main_mode(m) for m in every["mode"]]].reset_index(drop=True)
    variants = sorted({r.variant for r in runs}, key=lambda v: variant_sort_key(v, config_variants))
    modes = list(dict.fromkeys(metrics["mode"]))
    modes.sort(key=mode_sort_key)
    notes = [n for r in runs for n in r.notes]
    ensembles = []
    for variant in variants:
        ens = load_ensemble_eval(target, variant, Path(runs_dir) / target / variant / ENSEMBLE_DIR / "eval"
                                 / ENSEMBLE_SPLIT)
        if ens is not None:
            notes += ens.notes
            if ens.metrics is not None:
                ensembles.append(ens)
    return TargetResults(target, Path(runs_dir), split, runs, metrics, variants, modes, notes, ensembles, every)


def fingerprint(cfg: dict, target: str) -> tuple[dict | None, Path, str | None]:
    """The prepared target's fingerprint (through the one reader of prepared folders), or
    why the report goes without it."""
    from ..data.prepared import PreparedTarget
    from ..errors import UserError

    prepared = PreparedTarget(Path(cfg["data"]["prepared"]) / target)
    path = prepared.path / "fingerprint.json"
    if not path.is_file():
        return None, path, f"{path} not found: no images for qualitative figures"
    try:
        return prepared.fingerprint, path, None
    except (OSError, UserError) as exc:
        return None, path, f"{path} could not be read ({type(exc).__name__}): no qualitative figures"
