"""Headline, ablation, per-case and cost tables as plain dicts for the templates.

Statistics pool the per-case rows of every fold of a variant (one row per case and
mode); the standard deviation is the population one (``ddof=0``), as in
``evaluate``'s summary.json, so a single-fold report matches that file.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from .collect import HIGHER_IS_BETTER, METRICS, TargetResults, mode_prompts, mode_sort_key

METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)", "nsd": "NSD", "assd": "ASSD (mm)"}
METRIC_DECIMALS = {"dice": 3, "iou": 3, "nsd": 3, "hd95": 2, "assd": 2}
BEST_MARK = "\u2605"  # a star beside the best value of each column


def metric_label(metric: str, tolerance_mm=None) -> str:
    if metric == "nsd" and tolerance_mm is not None:
        return f"NSD @ {tolerance_mm:g} mm"
    return METRIC_LABELS[metric]


def fmt(value, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def fmt_signed(value, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{decimals}f}".replace("-", "\u2212")


def fmt_int(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{int(value):,}"


def stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan")}
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a))}


def mean_pm_std(s: dict, decimals: int) -> str:
    return f"{fmt(s['mean'], decimals)} \u00b1 {fmt(s['std'], decimals)}"


# ---------------------------------------------------------------- paper numbers
def paper_reference() -> dict:
    text = resources.files("sam2_3dmed.report").joinpath("paper_reference.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def reference_rows(target: str) -> tuple[list[dict], dict]:
    ref = paper_reference()
    rows = []
    for entry in (ref.get("targets") or {}).get(target, []) or []:
        cells = []
        for m in METRICS:
            v = entry.get(m)
            cells.append({"metric": m, "text": "\u2014" if v is None else fmt(float(v), 4)})
        rows.append({"variant": entry.get("variant", ""), "label": entry.get("label", ""), "mode": entry.get("mode"),
                     "cells": cells})
    return rows, {"source": ref.get("source", ""), "note": ref.get("note", "")}


# ---------------------------------------------------------------- headline
def variant_notes(res: TargetResults) -> dict[str, dict]:
    """{variant: {"text", "reduced"}} for the reference arms whose runs say what they are:
    nnU-Net runs (train_summary.json ``arch: nnunet``) with their trainer, configuration
    and budget, flagged ``reduced`` when any fold trained on less than the trainer's own
    epochs x iterations (a demo or test budget: its numbers are no measure of nnU-Net)."""
    out = {}
    for variant in res.variants:
        ts = [r.train_summary for r in res.runs_of(variant) if r.train_summary]
        nn = [t for t in ts if t.get("arch") == "nnunet"]
        if not nn:
            continue
        info = nn[0].get("nnunet") or {}
        reduced = [t for t in nn if t.get("budget_reduced")]
        what = (f"nnU-Net v{info.get('nnunetv2', '?')} {info.get('configuration', '?')}, {info.get('trainer', '?')}, "
                f"nnU-Net's own plans (patch {'x'.join(map(str, info.get('patch_size') or [])) or '?'}, "
                f"batch {info.get('batch_size', '?')})")
        if reduced:
            b, own = info.get("budget") or {}, info.get("trainer_defaults") or {}
            text = (f"{what}. SMALL BUDGET: {b.get('epochs', '?')} epochs x {b.get('iterations_per_epoch', '?')} "
                    f"iterations instead of the trainer's {own.get('epochs', '?')} x "
                    f"{own.get('iterations_per_epoch', '?')}; not a measure of nnU-Net's accuracy")
        else:
            text = f"{what}, the trainer's default budget"
        out[variant] = {"text": text, "reduced": bool(reduced)}
    return out


def headline(res: TargetResults) -> list[dict]:
    """Per variant and mode: n folds, n cases, and mean/std/median of each metric; best marked."""
    df = res.metrics
    rows = []
    for variant in res.variants:
        for mode in res.modes:
            sub = df[(df["variant"] == variant) & (df["mode"] == mode)]
            if sub.empty:
                continue
            row = {"variant": variant, "mode": mode, "n_folds": int(sub["fold"].nunique()),
                   "n_cases": int(len(sub)), "folds": sorted(int(f) for f in sub["fold"].unique()), "cells": {}}
            for m in METRICS:
                s = stats(sub[m].to_numpy())
                d = METRIC_DECIMALS[m]
                row["cells"][m] = {**s, "text": mean_pm_std(s, d), "median_text": fmt(s["median"], d), "best": False}
            rows.append(row)
    for m in METRICS:
        means = [r["cells"][m]["mean"] for r in rows if not math.isnan(r["cells"][m]["mean"])]
        if not means:
            continue
        best = max(means) if HIGHER_IS_BETTER[m] else min(means)
        for r in rows:
            if np.isclose(r["cells"][m]["mean"], best, rtol=0, atol=1e-12):
                r["cells"][m]["best"] = True
    for r in rows:
        r["cells"] = [{"metric": m, **r["cells"][m]} for m in METRICS]
    return rows


def headline_by(rows: list[dict]) -> dict:
    return {(r["variant"], r["mode"]): r for r in rows}


# ---------------------------------------------------------------- ablation
def ablation(res: TargetResults, rows: list[dict]) -> dict:
    """Every variant's pooled means with deltas against ``full`` (same mode)."""
    by = headline_by(rows)
    has_full = any(v == "full" for v, _ in by)
    folds_full = {mode: by[("full", mode)]["folds"] for mode in res.modes if ("full", mode) in by}
    out = {"has_full": has_full, "modes": []}
    for mode in res.modes:
        ref = by.get(("full", mode))
        entries = []
        for variant in res.variants:
            r = by.get((variant, mode))
            if r is None:
                continue
            cells = []
            for c in r["cells"]:
                m, d = c["metric"], METRIC_DECIMALS[c["metric"]]
                cell = {"metric": m, "mean_text": fmt(c["mean"], d), "delta": None, "delta_text": "", "cls": ""}
                if ref is not None and variant != "full":
                    base = next(x for x in ref["cells"] if x["metric"] == m)["mean"]
                    delta = c["mean"] - base
                    cell["delta"] = delta
                    cell["delta_text"] = fmt_signed(delta, d)
                    if abs(delta) > 10 ** -(d + 1):
                        better = (delta > 0) == HIGHER_IS_BETTER[m]
                        cell["cls"] = "better" if better else "worse"
                cells.append(cell)
            same_folds = ref is None or r["folds"] == folds_full.get(mode)
            entries.append({"variant": variant, "is_full": variant == "full", "n_folds": r["n_folds"],
                            "n_cases": r["n_cases"], "folds": r["folds"], "same_folds": same_folds, "cells": cells})
        if entries:
            out["modes"].append({"mode": mode, "has_full": ref is not None, "rows": entries})
    return out


# ---------------------------------------------------------------- per case
CASE_COLUMNS = [("variant", "variant", False), ("fold", "fold", True), ("case_id", "case", False),
                ("mode", "mode", False), ("prompt", "prompt", False), ("n_prompts", "prompts", True),
                *[(m, METRIC_LABELS[m], True) for m in METRICS],
                ("gt_volume_ml", "GT volume (ml)", True), ("seconds", "seconds", True)]


def case_table(res: TargetResults) -> dict:
    df = res.metrics
    cols = [(k, label, num) for k, label, num in CASE_COLUMNS if k in df.columns]
    rows = []
    for _, r in df.iterrows():
        cells = []
        for k, _label, num in cols:
            v = r[k]
            if k == "n_prompts":  # a count; empty in rows of older evaluations
                v = float(v)
                cells.append({"text": "" if math.isnan(v) else fmt_int(v), "sort": "" if math.isnan(v) else repr(v)})
            elif num and k != "fold":
                v = float(v)
                d = METRIC_DECIMALS.get(k, 2)
                cells.append({"text": fmt(v, d), "sort": "" if math.isnan(v) else repr(v)})
            else:
                cells.append({"text": str(v), "sort": str(v)})
        rows.append(cells)
    return {"columns": [{"key": k, "label": lab, "numeric": num} for k, lab, num in cols], "rows": rows}


# ---------------------------------------------------------------- ensemble (held-out test split)
def _metric_cells(sub: pd.DataFrame) -> list[dict]:
    cells = []
    for m in METRICS:
        s = stats(sub[m].to_numpy())
        d = METRIC_DECIMALS[m]
        cells.append({"metric": m, **s, "text": mean_pm_std(s, d), "median_text": fmt(s["median"], d)})
    return cells


def _folds_text(folds) -> str:
    return ", ".join("?" if f is None else str(f) for f in folds)


def ensemble(res: TargetResults) -> list[dict]:
    """Per variant with an ensemble evaluation: what it combines (size, folds, checkpoints),
    the split and case count, and mean/std/median of each metric per mode. Never pooled
    with the per-fold numbers: other models (all folds at once) on other cases (test)."""
    out = []
    for e in res.ensembles:
        df = e.metrics
        modes = sorted(dict.fromkeys(df["mode"]), key=mode_sort_key)
        rows = []
        for mode in modes:
            sub = df[df["mode"] == mode]
            rows.append({"mode": mode, "n_prompts": mode_prompts(mode), "n_cases": int(len(sub)),
                         "cells": _metric_cells(sub)})
        size, folds = e.size, e.folds
        n_cases = int(df["case_id"].nunique())
        in_split = (e.summary or {}).get("n_cases_in_split")
        if size is None:
            what = "ensemble of folds (size not recorded in summary.json: an older evaluation)"
        elif folds:
            what = f"ensemble of {size} fold{'s' if size != 1 else ''} (fold{'s' if len(folds) != 1 else ''} " \
                   f"{_folds_text(folds)})"
        else:
            what = f"ensemble of {size} fold{'s' if size != 1 else ''}"
        out.append({
            "variant": e.variant, "size": size, "folds": folds, "folds_text": _folds_text(folds) if folds else "n/a",
            "what": what, "split": e.split, "n_cases": n_cases,
            "n_cases_in_split": in_split if isinstance(in_split, int) and in_split != n_cases else None,
            "checkpoints": e.checkpoints, "path": str(e.path),
            "checkpoint_step": (e.summary or {}).get("checkpoint_step", "n/a"), "rows": rows,
        })
    return out


# ---------------------------------------------------------------- accuracy vs number of prompts
PROMPT_METRICS = ("dice", "nsd", "hd95")


def prompt_counts(res: TargetResults) -> dict:
    """Dice, NSD and HD95 means per mode (auto, prompted, prompted_k3, ...), per variant,
    for the per-fold evaluations and the ensemble's apart. ``show`` is false unless some
    mode gives more than one prompt (a ``prompted_k<k>`` mode, evaluate.prompt_counts)."""
    sources = [("per fold", f"single model per fold, {res.split} split", res.metrics)]
    if res.ensembles:
        sources.append(("ensemble", "ensemble of folds, held-out test split", res.ensemble_metrics))
    rows = []
    ks = set()
    for key, label, df in sources:
        if df.empty:
            continue
        for variant in res.variants:
            vsub = df[df["variant"] == variant]
            modes = sorted((m for m in dict.fromkeys(vsub["mode"]) if mode_prompts(m) is not None), key=mode_sort_key)
            for mode in modes:
                sub = vsub[vsub["mode"] == mode]
                k = mode_prompts(mode)
                ks.add(k)
                given = float("nan")
                if "n_prompts" in sub.columns:
                    g = sub["n_prompts"].to_numpy(dtype=float)
                    g = g[~np.isnan(g)]
                    given = float(g.mean()) if g.size else float("nan")
                cells = []
                for m in PROMPT_METRICS:
                    st = stats(sub[m].to_numpy())
                    cells.append({"metric": m, "mean": st["mean"], "text": fmt(st["mean"], METRIC_DECIMALS[m])})
                rows.append({"source": key, "source_label": label, "variant": variant, "mode": mode, "k": k,
                             "given": fmt(given, 2) if not math.isnan(given) else "n/a",
                             "n_cases": int(len(sub)), "cells": cells})
    return {"show": any(k > 1 for k in ks), "metrics": list(PROMPT_METRICS), "rows": rows}


# ---------------------------------------------------------------- cost
def _nanmean(values) -> float:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    a = a[~np.isnan(a)] if a.size else a
    return float(a.mean()) if a.size else float("nan")


def cost(res: TargetResults) -> dict:
    rows, modules = [], []
    for variant in res.variants:
        runs = res.runs_of(variant)
        ts = [r.train_summary for r in runs if r.train_summary]
        first = ts[0] if ts else {}
        step_s = [t.get("median_step_seconds") for t in ts if t.get("median_step_seconds") is not None]
        step_src = "train_summary.json"
        if not step_s:  # older summaries: the per-step times are in train_log.csv
            step_s = [float(np.nanmedian(r.train_log["seconds"])) for r in runs
                      if r.train_log is not None and "seconds" in r.train_log.columns and r.train_log["seconds"].notna().any()]
            step_src = "train_log.csv"
        mem = [t.get("peak_memory_mb") for t in ts if t.get("peak_memory_mb") is not None]
        per_module = first.get("parameters_per_module") or {}
        for mod in per_module:
            if mod not in modules:
                modules.append(mod)
        train_dev = sorted({str(t.get("device")) for t in ts if t.get("device")})
        infer = []
        sub = res.metrics[res.metrics["variant"] == variant]
        for mode in res.modes:
            ms = sub[sub["mode"] == mode]
            if ms.empty:
                continue
            col = lambda c: ms[c].to_numpy(dtype=float) if c in ms.columns else np.array([])  # noqa: E731
            infer.append({
                "mode": mode,
                "seconds": fmt(_nanmean(col("seconds")), 2),
                "slices_per_s": fmt(_nanmean(col("slices_per_s")), 2),
                "feature_cache_mb": fmt(_nanmean(col("feature_cache_mb")), 1),
                "peak_mem_mb": fmt(float(np.nanmax(col("peak_mem_mb"))) if col("peak_mem_mb").size else float("nan"), 0),
                "device": ", ".join(sorted(set(ms["device"]))) if "device" in ms.columns else "n/a",
            })
        rows.append({
            "variant": variant,
            "total": fmt_int(first.get("total_parameters")),
            "trainable": fmt_int(first.get("trainable_parameters")),
            "encoder_frozen": {True: "yes", False: "no"}.get(first.get("encoder_frozen"), "n/a"),
            "pretrained": {True: "SAM2.1 weights", False: "random init"}.get(first.get("pretrained"), "n/a"),
            "median_step_s": fmt(float(np.median(step_s)), 3) if step_s else "n/a (not recorded)",
            "median_step_source": step_src if step_s else "",
            "peak_memory_mb": fmt(float(max(mem)), 0) if mem else "n/a (not recorded)",
            "train_device": ", ".join(train_dev) or "n/a",
            "n_summaries": len(ts),
            "infer": infer,
            "per_module": per_module,
        })
    module_rows = []
    for mod in modules:
        cells = []
        for r in rows:
            pm = r["per_module"].get(mod)
            cells.append("\u2014" if pm is None else f"{pm.get('trainable', 0):,} / {pm.get('total', 0):,}")
        module_rows.append({"module": mod, "cells": cells})
    return {"rows": rows, "modules": module_rows}


def ordered_case_rows(df: pd.DataFrame, variant: str, mode: str) -> pd.DataFrame:
    sub = df[(df["variant"] == variant) & (df["mode"] == mode)]
    return sub.sort_values(["dice", "fold", "case_id"], kind="mergesort").reset_index(drop=True)


def best_median_worst(df: pd.DataFrame, variant: str, mode: str) -> list[tuple[str, pd.Series]]:
    """(label, row) for the best, median and worst case by Dice; fewer when there are few cases."""
    sub = ordered_case_rows(df, variant, mode)
    n = len(sub)
    if n == 0:
        return []
    picks = [("best", n - 1), ("median", (n - 1) // 2), ("worst", 0)]
    out, seen = [], set()
    for label, i in picks:
        if i in seen:
            continue
        seen.add(i)
        out.append((label, sub.iloc[i]))
    return out
