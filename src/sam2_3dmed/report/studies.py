"""Report sections *Prompt robustness* and *Direction*: the studies' evaluation modes.

Both read ``TargetResults.study_metrics`` (every case row, the studies' modes too; the
other sections see the main modes only) and pool, per variant, the per-case rows of
every fold, as the headline does.

* Prompt robustness (``evaluate.robustness``): per perturbation (box jitter, click offset,
  key slice away from the largest cross-section) and level, Dice and HD95 against the
  level, per variant; each level's change from the unperturbed prompt is the mean of the
  per-case differences (the same case and fold evaluated both ways: paired).
* Direction (``evaluate.directions``): auto mode forward only, backward only and both
  (``auto``, the average of the two), per variant; the gain of both directions over each
  single one, paired per case, with how many cases it helps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import PERTURBATIONS, mode_info
from .collect import TargetResults
from .figures import EXTRA_COLOURS, to_data_uri
from .tables import METRIC_DECIMALS, fmt, fmt_signed, mean_pm_std, stats

PERTURBATION_TEXT = {
    "box_jitter": ("box jitter", "each box side moved by up to this % of the box side",
                   "% of the box side"),
    "point_offset": ("click offset", "the click moved off the organ's most interior point by this % of its radius",
                     "% of the radius"),
    "key_slice": ("prompted slice", "the prompt on the slice at this % of the organ's extent instead of its largest "
                  "cross-section (the unperturbed prompt)", "% of the organ's extent"),
}
VARIANT_COLOURS = ["#1f77b4", "#d62728", *EXTRA_COLOURS]
ROBUSTNESS_METRICS = ("dice", "hd95")
DIRECTION_METRICS = ("dice", "nsd", "hd95")
DIRECTION_ROWS = (("auto_forward", "forward only"), ("auto_backward", "backward only"), ("auto", "both (averaged)"))


def _frame(res: TargetResults) -> pd.DataFrame:
    df = res.study_metrics if res.study_metrics is not None else res.metrics
    return df


def _baseline(perturbation: str, df: pd.DataFrame, variant: str) -> str | None:
    """The unperturbed mode a perturbation's levels are compared with: its level 0
    (box_jitter0, point_offset0), or, for the prompted slice, ``prompted`` when its prompt
    is of the same kind (the largest cross-section)."""
    sub = df[df["variant"] == variant]
    if perturbation == "key_slice":
        return "prompted" if "prompted" in set(sub["mode"]) else None
    zero = f"{perturbation}0"
    return zero if zero in set(sub["mode"]) else None


def _paired_delta(df: pd.DataFrame, variant: str, mode: str, base: str, metric: str) -> tuple[float, int]:
    """Mean of (mode - base) over the cases (fold, case_id) evaluated in both; and how many."""
    sub = df[df["variant"] == variant]
    a = sub[sub["mode"] == mode].set_index(["fold", "case_id"])[metric]
    b = sub[sub["mode"] == base].set_index(["fold", "case_id"])[metric]
    both = a.index.intersection(b.index)
    if len(both) == 0:
        return float("nan"), 0
    return float((a.loc[both] - b.loc[both]).mean()), int(len(both))


def robustness(res: TargetResults, labels: dict) -> dict:
    """Per perturbation: a table (variant x level: cases, Dice and HD95 mean +- std, paired
    change from the unperturbed prompt) and one figure (Dice and HD95 against the level)."""
    df = _frame(res)
    info = {m: mode_info(m) for m in dict.fromkeys(df["mode"])}
    rob = {m: i for m, i in info.items() if i is not None and i.family == "robustness"}
    if not rob:
        return {"show": False, "note": "No prompt-robustness modes in these evaluations (evaluate.robustness, "
                "per-fold evaluations of SAM2-3dMed models; older evaluations have none)."}
    blocks = []
    for pert in PERTURBATIONS:
        modes = sorted((m for m, i in rob.items() if i.perturbation == pert), key=lambda m: rob[m].level)
        if not modes:
            continue
        name, meaning, unit = PERTURBATION_TEXT[pert]
        rows, series = [], []
        for variant in res.variants:
            sub = df[df["variant"] == variant]
            vmodes = [m for m in modes if m in set(sub["mode"])]
            if not vmodes:
                continue
            base = _baseline(pert, df, variant)
            points = []
            shown = ([base] if pert == "key_slice" and base else []) + vmodes
            for m in shown:
                ms = sub[sub["mode"] == m]
                level = "largest" if m == base and pert == "key_slice" else f"{round(rob[m].level * 100):d} %"
                cells = []
                for metric in ROBUSTNESS_METRICS:
                    s = stats(ms[metric])
                    d, n = (float("nan"), 0) if (base is None or m == base) else _paired_delta(df, variant, m, base,
                                                                                            metric)
                    cells.append({"metric": metric, "mean": s["mean"], "text": mean_pm_std(s, METRIC_DECIMALS[metric]),
                                  "delta": None if np.isnan(d) else d,
                                  "delta_text": "" if np.isnan(d) else fmt_signed(d, METRIC_DECIMALS[metric]),
                                  "cls": "" if np.isnan(d) else _better_cls(metric, d)})
                kinds = sorted({str(k) for k in ms.get("prompt", pd.Series(dtype=str)) if str(k)})
                rows.append({"variant": variant, "mode": m, "level": level, "n_cases": int(len(ms)),
                             "prompt": ", ".join(kinds), "cells": cells, "is_base": m == base})
                points.append((level, {metric: c["mean"] for metric, c in zip(ROBUSTNESS_METRICS, cells)}))
            series.append((variant, points))
        base_text = ("the prompt on the largest cross-section (mode prompted)" if pert == "key_slice"
                     else f"level 0 ({pert}0: the unperturbed {PERTURBATIONS[pert]})")
        blocks.append({"perturbation": pert, "name": name, "meaning": meaning, "unit": unit, "rows": rows,
                       "baseline": base_text,
                       "figure": _robustness_figure(name, unit, series, labels)})
    return {"show": True, "blocks": blocks, "metrics": list(ROBUSTNESS_METRICS)}


def _better_cls(metric: str, delta: float) -> str:
    higher = metric in ("dice", "iou", "nsd")
    if delta == 0:
        return ""
    return "better" if (delta > 0) == higher else "worse"


def _robustness_figure(name: str, unit: str, series, labels: dict) -> str | None:
    if not series:
        return None
    fig = Figure(figsize=(7.2, 2.8))
    axes = fig.subplots(1, len(ROBUSTNESS_METRICS))
    for ax, metric in zip(axes, ROBUSTNESS_METRICS):
        for i, (variant, points) in enumerate(series):
            xs = list(range(len(points)))
            ys = [p[1][metric] for p in points]
            ax.plot(xs, ys, marker="o", color=VARIANT_COLOURS[i % len(VARIANT_COLOURS)], label=variant)
            ax.set_xticks(xs, [p[0] for p in points])
        ax.set_xlabel(f"{name} ({unit})")
        ax.set_ylabel(f"{labels.get(metric, metric)} (mean)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig, palette=True)


def directions(res: TargetResults, labels: dict) -> dict:
    """Per variant: auto mode forward only, backward only and both (cases, Dice, NSD, HD95
    mean +- std), and the paired gain of both directions over each single one."""
    df = _frame(res)
    present = set(df["mode"])
    if not {"auto_forward", "auto_backward"} & present:
        return {"show": False, "note": "No direction modes in these evaluations (evaluate.directions: auto_forward "
                "and auto_backward, per-fold evaluations of SAM2-3dMed models; older evaluations have none)."}
    blocks = []
    for variant in res.variants:
        sub = df[df["variant"] == variant]
        if not {"auto_forward", "auto_backward"} & set(sub["mode"]):
            continue
        rows = []
        for mode, text in DIRECTION_ROWS:
            ms = sub[sub["mode"] == mode]
            if ms.empty:
                continue
            cells = [{"metric": m, "text": mean_pm_std(stats(ms[m]), METRIC_DECIMALS[m]),
                      "mean": stats(ms[m])["mean"]} for m in DIRECTION_METRICS]
            rows.append({"mode": mode, "text": text, "n_cases": int(len(ms)), "cells": cells})
        gains = []
        for single, text in DIRECTION_ROWS[:2]:
            if single not in set(sub["mode"]) or "auto" not in set(sub["mode"]):
                continue
            cells = []
            for m in DIRECTION_METRICS:
                d, n = _paired_delta(df, variant, "auto", single, m)
                a = sub[sub["mode"] == "auto"].set_index(["fold", "case_id"])[m]
                b = sub[sub["mode"] == single].set_index(["fold", "case_id"])[m]
                both = a.index.intersection(b.index)
                diff = (a.loc[both] - b.loc[both]).to_numpy()
                higher = m in ("dice", "iou", "nsd")
                helped = int(np.sum(diff > 0) if higher else np.sum(diff < 0))
                cells.append({"metric": m, "delta": d, "text": fmt_signed(d, METRIC_DECIMALS[m]),
                              "cls": "" if np.isnan(d) else _better_cls(m, d), "helped": helped, "n": n})
            gains.append({"against": single, "text": text, "cells": cells, "n": cells[0]["n"] if cells else 0})
        blocks.append({"variant": variant, "rows": rows, "gains": gains})
    summary = []
    for b in blocks:
        for g in b["gains"]:
            c = g["cells"][0]
            summary.append(f"{b['variant']}: both directions {('gain' if c['delta'] >= 0 else 'lose')} "
                           f"{fmt(abs(c['delta']), 3)} Dice over {g['text']} on average "
                           f"(better on {c['helped']} of {c['n']} cases)")
    return {"show": True, "blocks": blocks, "metrics": list(DIRECTION_METRICS), "summary": summary}
