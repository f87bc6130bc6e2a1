"""Read the pipeline's run folders into pandas tables.

Layout (``workflow/Snakefile``)::

    RUNS/<target>/<variant>/fold<k>/train_log.csv, val_log.csv, train_summary.json
    RUNS/<target>/<variant>/fold<k>/eval/<split>/metrics.csv, summary.json, predictions/

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

from ..errors import InputFileError

METRICS = ("dice", "iou", "hd95", "nsd", "assd")
HIGHER_IS_BETTER = {"dice": True, "iou": True, "nsd": True, "hd95": False, "assd": False}
LOSS_TERMS = ("loss", "seg", "obj", "srpp", "bd")
METRICS_REQUIRED = ("case_id", "mode", *METRICS)
METRICS_NUMERIC = (*METRICS, "pred_voxels", "gt_voxels", "gt_volume_ml", "seconds", "slices", "slices_per_s",
                   "peak_mem_mb", "feature_cache_mb")
VARIANT_ORDER = ("full", "no_srpp", "no_bd", "sam2_ft", "no_pretrain", "unet3d")

_VARIANT_RE = re.compile(r"[a-z][a-z0-9_]*")
_FOLD_RE = re.compile(r"fold([0-9]+)")


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
class TargetResults:
    target: str
    runs_dir: Path
    split: str
    runs: list[Run]
    metrics: pd.DataFrame  # every case row of every run: + variant, fold columns
    variants: list[str]
    modes: list[str]
    notes: list[str] = field(default_factory=list)

    def runs_of(self, variant: str) -> list[Run]:
        return [r for r in self.runs if r.variant == variant]


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
    df = _numeric(df, METRICS_NUMERIC, path, allow_empty=tuple(c for c in METRICS_NUMERIC if c not in METRICS))
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


def collect_target(runs_dir: Path, target: str, split: str, config_variants=()) -> TargetResults | None:
    """Everything under ``RUNS/<target>``; None if there is no run folder at all."""
    found = discover_runs(runs_dir, target)
    if not found:
        return None
    runs = [load_run(target, v, f, p, split) for v, f, p in found]
    runs.sort(key=lambda r: (variant_sort_key(r.variant, config_variants), r.fold))
    frames = [r.metrics for r in runs if r.metrics is not None]
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "fold", *METRICS_REQUIRED])
    variants = sorted({r.variant for r in runs}, key=lambda v: variant_sort_key(v, config_variants))
    modes = list(dict.fromkeys(m for r in runs if r.metrics is not None for m in r.metrics["mode"]))
    modes.sort(key=lambda m: (m != "auto", m != "prompted", m))
    notes = [n for r in runs for n in r.notes]
    return TargetResults(target, Path(runs_dir), split, runs, metrics, variants, modes, notes)
