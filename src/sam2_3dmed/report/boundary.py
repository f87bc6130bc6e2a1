"""Report section *Boundary*: where each variant's errors lie.

``metrics.csv`` of newer evaluations has, per case and mode, the error volume (false
positives and false negatives together, mL) in bands of distance to the ground-truth
surface, columns ``err_mm_<lo>_<hi>`` (``evaluate.boundary_bands_mm``: ``err_mm_0_1``,
``err_mm_1_3``, ``err_mm_3_inf`` by default), and percentiles of the pooled surface
distances, columns ``sd_p<q>`` in mm (``evaluate.surface_percentiles``); see
``evaluate/metrics.py``. The columns are found by name, whatever the bands.

Per main mode, a table per variant: the mean error volume per band and each band's
share of all errors, the mean of each percentile, and every other variant's difference
from ``full`` (lower is better for all of them). With both ``full`` and ``no_bd``, one
sentence answers whether BD helps at the boundary, on the cases both evaluated (same fold
and case id). Rows of older evaluations (no such columns, or empty cells) are left out
and counted in a note.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from .collect import TargetResults
from .tables import fmt, fmt_signed

_NAME = r"[0-9][0-9a-z+-]*"  # an edge or percentile as evaluate writes it: %g, "p" for the point
BAND_RE = re.compile(rf"err_mm_({_NAME})_({_NAME}|inf)")
PCT_RE = re.compile(rf"sd_p({_NAME})")
ML_DECIMALS = 3     # error volumes (mL)
MM_DECIMALS = 2     # surface distances (mm), as HD95 and ASSD elsewhere
SHARE_DECIMALS = 1  # shares of all errors (%)


def _value(name: str) -> float:
    return math.inf if name == "inf" else float(name.replace("p", "."))


def _text(x: float) -> str:
    return f"{x:g}"


def discover(columns) -> tuple[list[dict], list[dict]]:
    """(bands, percentiles) among ``columns``: dicts with key, label and the edge/percentile
    values, bands by (lower, upper) edge, percentiles by value."""
    bands, pcts = [], []
    for c in columns:
        m = BAND_RE.fullmatch(str(c))
        if m:
            try:
                lo, hi = _value(m[1]), _value(m[2])
            except ValueError:
                continue
            bands.append({"key": c, "lo": lo, "hi": hi})
            continue
        m = PCT_RE.fullmatch(str(c))
        if m:
            try:
                q = _value(m[1])
            except ValueError:
                continue
            pcts.append({"key": c, "q": q,
                         "label": "p100 = max" if q == 100 else f"p{_text(q)}"})
    bands.sort(key=lambda b: (b["lo"], b["hi"]))
    pcts.sort(key=lambda p: p["q"])
    for b in bands:
        if b["lo"] == 0 and math.isinf(b["hi"]):
            b["label"], b["phrase"] = "any distance", "at any distance from the surface"
        elif b["lo"] == 0:
            b["label"], b["phrase"] = f"\u2264 {_text(b['hi'])} mm", f"within {_text(b['hi'])} mm of the surface"
        elif math.isinf(b["hi"]):
            b["label"], b["phrase"] = f"> {_text(b['lo'])} mm", f"beyond {_text(b['lo'])} mm"
        else:
            b["label"] = f"{_text(b['lo'])}\u2013{_text(b['hi'])} mm"
            b["phrase"] = f"between {_text(b['lo'])} and {_text(b['hi'])} mm"
    return bands, pcts


def _is_chain(bands: list[dict]) -> bool:
    """True when the bands tile [0, inf) without gaps or overlaps (one evaluate setting)."""
    if not bands or bands[0]["lo"] != 0 or not math.isinf(bands[-1]["hi"]):
        return False
    return all(a["hi"] == b["lo"] for a, b in zip(bands, bands[1:]))


def _numeric(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """The columns as float (empty text or missing = NaN; non-finite values count as missing)."""
    out = pd.DataFrame(index=df.index)
    for c in cols:
        v = df[c]
        if v.dtype == object:
            v = v.astype(str).str.strip().replace({"": np.nan, "nan": np.nan, "None": np.nan})
        v = pd.to_numeric(v, errors="coerce").astype(float)
        out[c] = v.where(np.isfinite(v))
    return out


def _mean(values: pd.Series) -> float:
    a = values.to_numpy(dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def _signed(delta: float, decimals: int) -> str:
    """fmt_signed, with a difference that rounds to zero shown as +0 (never a rounding-noise minus)."""
    return fmt_signed(0.0 if abs(delta) < 0.5 * 10 ** -decimals else delta, decimals)


def _cls(delta: float, decimals: int) -> str:
    if math.isnan(delta) or abs(delta) <= 10 ** -(decimals + 1):
        return ""
    return "worse" if delta > 0 else "better"  # lower is better for error volumes and distances


def _rows(df: pd.DataFrame, vals: pd.DataFrame, res: TargetResults, mode: str, bands, pcts, chain) -> list[dict]:
    band_keys = [b["key"] for b in bands]
    stats = {}
    for variant in res.variants:
        idx = df.index[(df["variant"] == variant) & (df["mode"] == mode)]
        sub = vals.loc[idx]
        if sub.empty:
            continue
        folds = sorted(int(f) for f in df.loc[idx, "fold"].unique())
        means = {c: _mean(sub[c]) for c in vals.columns}
        complete = bool(band_keys) and not sub[band_keys].isna().any().any()
        total = sum(means[k] for k in band_keys) if complete and chain else float("nan")
        stats[variant] = {"n_cases": int(len(sub)), "folds": folds, "means": means, "total": total}
    ref = stats.get("full")
    rows = []
    for variant, st in stats.items():
        cells = []
        for kind, items, d in (("band", bands, ML_DECIMALS), ("pct", pcts, MM_DECIMALS)):
            for it in items:
                k = it["key"]
                mean = st["means"][k]
                cell = {"key": k, "kind": kind, "mean": mean, "mean_text": fmt(mean, d),
                        "share": None, "share_text": "", "delta": None, "delta_text": "", "cls": ""}
                if kind == "band":
                    tot = st["total"]
                    if not math.isnan(tot) and tot > 0:
                        cell["share"] = 100.0 * mean / tot
                        cell["share_text"] = f"{fmt(cell['share'], SHARE_DECIMALS)}%"
                    elif not math.isnan(tot):
                        cell["share_text"] = "no errors"
                if ref is not None and variant != "full":
                    delta = mean - ref["means"][k]
                    if not math.isnan(delta):
                        cell["delta"], cell["delta_text"], cell["cls"] = delta, _signed(delta, d), _cls(delta, d)
                cells.append(cell)
        rows.append({"variant": variant, "is_full": variant == "full", "n_folds": len(st["folds"]),
                     "n_cases": st["n_cases"], "folds": st["folds"],
                     "same_folds": ref is None or st["folds"] == ref["folds"], "cells": cells})
    return rows


def _answer(df: pd.DataFrame, vals: pd.DataFrame, mode: str, bands) -> dict:
    """Paired full vs no_bd in ``mode``: per band the mean over the shared cases, the
    difference full - no_bd, how often full is lower; and the sentence saying it."""
    keys = [b["key"] for b in bands]
    frames = {}
    for variant in ("full", "no_bd"):
        sel = (df["variant"] == variant) & (df["mode"] == mode)
        sub = pd.concat([df.loc[sel, ["fold", "case_id"]].astype(str), vals.loc[sel, keys]], axis=1).dropna()
        frames[variant] = sub.drop_duplicates(["fold", "case_id"])
    pairs = frames["full"].merge(frames["no_bd"], on=["fold", "case_id"], suffixes=("_full", "_no_bd"))
    n = int(len(pairs))
    out = {"mode": mode, "pairs": n, "bands": [], "text": ""}
    if n == 0:
        out["text"] = (f"full and no_bd have no case in common in mode {mode} (the same fold and case id, "
                       "both with boundary columns): no paired comparison.")
        return out
    parts = []
    for i, b in enumerate(bands):
        f = pairs[f"{b['key']}_full"].to_numpy(dtype=float)
        nb = pairs[f"{b['key']}_no_bd"].to_numpy(dtype=float)
        mf, mn = float(f.mean()), float(nb.mean())
        diff = mf - mn
        lower, equal = int(np.count_nonzero(f < nb)), int(np.count_nonzero(f == nb))
        out["bands"].append({"key": b["key"], "full": mf, "no_bd": mn, "diff": diff, "full_lower": lower,
                             "equal": equal})
        d = ML_DECIMALS
        count = f"full lower in {lower} of {n}" + (f", equal in {equal}" if equal else "")
        if i == 0:
            parts.append(f"{b['phrase']}, full errs on {fmt(mf, d)} mL per case and no_bd on {fmt(mn, d)} mL "
                         f"(difference full \u2212 no_bd {_signed(diff, d)} mL; {count})")
        else:
            parts.append(f"{b['phrase']}: {fmt(mf, d)} vs {fmt(mn, d)} mL (difference {_signed(diff, d)} mL; {count})")
    first = out["bands"][0]["diff"]
    if abs(first) <= 10 ** -(ML_DECIMALS + 1):
        verdict = "No measurable difference at the boundary here"
    elif first < 0:
        verdict = "BD helps at the boundary here"
    else:
        verdict = "BD does not help at the boundary here"
    out["verdict"] = verdict
    out["text"] = (f"{verdict} (mode {mode}, {n} paired case{'s' if n != 1 else ''}: the same fold and case id "
                   f"in both variants): {'; '.join(parts)}.")
    return out


def context(res: TargetResults) -> dict:
    df = res.metrics
    bands, pcts = discover(df.columns)
    cols = [b["key"] for b in bands] + [p["key"] for p in pcts]
    off = {"show": False, "note": ("no boundary analysis in these evaluations (older evaluations: metrics.csv has "
                                   "no err_mm_* or sd_p* columns; re-run evaluate to add them)")}
    if df.empty or not cols:
        return off
    vals = _numeric(df, cols)
    has = vals.notna().any(axis=1)
    if not has.any():
        return off
    notes = []
    n_old = int((~has).sum())
    if n_old:
        notes.append(f"{n_old} case row{'s' if n_old != 1 else ''} from older evaluations (no boundary columns) "
                     f"left out; re-run evaluate to include {'them' if n_old != 1 else 'it'}.")
    chain = _is_chain(bands)
    if bands and not chain:
        notes.append("the distance bands come from different evaluate.boundary_bands_mm settings: "
                     "no shares of all errors.")
    df, vals = df[has], vals[has]
    variants = set(df["variant"])
    compare = "full" in variants and "no_bd" in variants and bool(bands)
    modes = []
    for mode in res.modes:
        rows = _rows(df, vals, res, mode, bands, pcts, chain)
        if not rows:
            continue
        block = {"mode": mode, "rows": rows, "has_full": any(r["is_full"] for r in rows), "answer": None}
        if compare and {"full", "no_bd"} <= {r["variant"] for r in rows}:
            block["answer"] = _answer(df, vals, mode, bands)
        modes.append(block)
    if not compare:
        missing = [v for v in ("full", "no_bd") if v not in variants]
        why = f"no {' or '.join(missing)} run with boundary columns here" if missing else "no distance bands"
        compare_note = (f"Does BD help at the boundary? That needs a full and a no_bd run ({why}): "
                        "set run.variants: [full, no_bd] and evaluate both.")
    else:
        compare_note = None
    return {"show": True, "note": None, "notes": notes, "bands": bands, "percentiles": pcts, "modes": modes,
            "has_full": "full" in variants, "compare_note": compare_note}
