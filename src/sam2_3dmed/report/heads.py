"""Report section *What the new heads learned*: the BD-fusion gate and the SRPP error over training.

Read from each run's train_log.csv (``train/trainer.py``), one row per optimiser step:

* ``bd_gate``          mean |gate| of BD-fusion after the step
* ``bd_fusion_ratio``  ||gate * CrossAttn|| / ||pix||: how much fusion changed the pixel
                       features the mask decoder reads, mean over the step's fusion calls
* ``srpp_mae_mm``      the SRPP head's mean absolute error in mm over the clip's slice pairs

The gate counts as open from the first step whose ``bd_fusion_ratio`` reaches
``report.gate_open_ratio``; a run where it never does gets a plain statement saying so. Runs
whose log predates these columns get a note; variants without a head get "n/a".
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .collect import Run, TargetResults
from .figures import EXTRA_COLOURS, _smooth, _step_axis, _thin, to_data_uri

HEAD_COLUMNS = ("bd_gate", "bd_fusion_ratio", "srpp_mae_mm")
#: the share of a run's steps the first and last SRPP error are averaged over
EDGE_SHARE = 0.10
RUN_COLOURS = ["#1f77b4", "#d62728", *EXTRA_COLOURS, "#ff7f0e", "#e377c2", "#7f7f7f", "#bcbd22"]
#: line style per fold (not dashed: that is the open threshold's)
FOLD_STYLES = ["-", (0, (1, 1)), "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2))]
NA = "n/a"


def _series(run: Run, col: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of a column, sorted by step, without empty cells; None if it has none."""
    tl = run.train_log
    if tl is None or col not in tl.columns:
        return None
    step = tl["step"].to_numpy(dtype=float)
    y = tl[col].to_numpy(dtype=float)
    ok = np.isfinite(y)
    if not ok.any():
        return None
    order = np.argsort(step[ok], kind="stable")
    return step[ok][order], y[ok][order]


def _edge_means(y: np.ndarray, share: float = EDGE_SHARE) -> tuple[float, float]:
    """Means over the first and the last ``share`` of the values (at least one value each)."""
    n = max(1, math.ceil(share * len(y)))
    return float(np.mean(y[:n])), float(np.mean(y[-n:]))


def _cell(value, spec: str) -> dict:
    """A table cell: its text and the full-precision value (data-value), "n/a" without one."""
    if value is None:
        return {"text": NA, "value": ""}
    return {"text": format(value, spec), "value": repr(float(value))}


def run_stats(run: Run, threshold: float) -> dict:
    """The table row and statements of one run (whose log has the head columns)."""
    gate, ratio, srpp = (_series(run, c) for c in HEAD_COLUMNS)
    row: dict = {"name": run.name, "variant": run.variant, "fold": run.fold, "has_fusion": ratio is not None}
    row["ratio_final"] = float(ratio[1][-1]) if ratio else None
    row["ratio_max"] = float(ratio[1].max()) if ratio else None
    opened = np.flatnonzero(ratio[1] >= threshold) if ratio else np.array([], int)
    row["open_step"] = int(ratio[0][opened[0]]) if len(opened) else None
    row["gate_final"] = float(gate[1][-1]) if gate else None
    row["srpp_first"], row["srpp_last"] = _edge_means(srpp[1]) if srpp else (None, None)
    row["srpp_n"] = max(1, math.ceil(EDGE_SHARE * len(srpp[1]))) if srpp else None
    vl = run.val_log
    row["dice_last"], row["dice_step"] = None, None
    if vl is not None and len(vl) and "mean_dice" in vl.columns:
        v = vl.sort_values("step", kind="stable")
        row["dice_last"], row["dice_step"] = float(v["mean_dice"].iloc[-1]), int(v["step"].iloc[-1])
    if ratio is None:
        open_text = NA
    else:
        open_text = "never" if row["open_step"] is None else str(row["open_step"])
    row["cells"] = {
        "ratio_final": _cell(row["ratio_final"], ".3g"),
        "ratio_max": _cell(row["ratio_max"], ".3g"),
        "open_step": {"text": open_text, "value": "" if row["open_step"] is None else str(row["open_step"])},
        "gate_final": _cell(row["gate_final"], ".3g"),
        "srpp_first": _cell(row["srpp_first"], ".2f"),
        "srpp_last": _cell(row["srpp_last"], ".2f"),
        "dice_last": _cell(row["dice_last"], ".3f"),
    }
    if row["dice_step"] is not None:
        row["cells"]["dice_last"]["text"] += f" (step {row['dice_step']})"
    row["never_opened"] = ratio is not None and row["open_step"] is None
    row["steps"] = int(ratio[0][-1]) if ratio else None
    return row


def _statement(row: dict, threshold: float) -> str:
    if row["never_opened"]:
        return (f"{row['variant']}/fold{row['fold']}: the BD-fusion gate never opened: its largest ratio was "
                f"{row['ratio_max']:.3g} (threshold {threshold:.3g}), so the boundary branch barely changed "
                f"the masks in this run.")
    return (f"{row['variant']}/fold{row['fold']}: the BD-fusion gate opened at step {row['open_step']} "
            f"(ratio {threshold:.3g} or more), and its largest ratio was {row['ratio_max']:.3g}.")


def heads_figure(runs: list[Run], threshold: float) -> str | None:
    """Four panels vs step, a line per run: mean |gate|, fusion ratio (with the open threshold),
    SRPP error in mm, validation Dice."""
    if not runs:
        return None
    fig = Figure(figsize=(9.5, 5.6), layout="constrained")
    ax_g, ax_r, ax_s, ax_d = fig.subplots(2, 2).ravel()
    variants = list(dict.fromkeys(r.variant for r in runs))
    folds = sorted({r.fold for r in runs})
    handles = []
    drawn = {"g": False, "r": False, "s": False, "d": False}
    positive = {"g": True, "r": True, "s": True}
    for r in runs:
        colour = RUN_COLOURS[variants.index(r.variant) % len(RUN_COLOURS)]
        style = FOLD_STYLES[folds.index(r.fold) % len(FOLD_STYLES)]
        kw = {"color": colour, "linestyle": style, "linewidth": 1.2}
        for key, ax, col, smooth in (("g", ax_g, "bd_gate", False), ("r", ax_r, "bd_fusion_ratio", True),
                                     ("s", ax_s, "srpp_mae_mm", True)):
            s = _series(r, col)
            if s is None:
                continue
            x, y = s
            positive[key] &= bool(np.all(y >= 0) and np.any(y > 0))
            if smooth:
                ax.plot(*_thin(x, y), color=colour, alpha=0.18, linewidth=0.6)
                ax.plot(*_thin(x, _smooth(y)), **kw)
            else:
                ax.plot(*_thin(x, y), **kw)
            drawn[key] = True
        vl = r.val_log
        if vl is not None and len(vl) and "mean_dice" in vl.columns:
            v = vl.sort_values("step", kind="stable")
            ax_d.plot(v["step"].to_numpy(dtype=float), v["mean_dice"].to_numpy(dtype=float), marker="o",
                      markersize=3, **kw)
            drawn["d"] = True
        handles.append(Line2D([], [], label=r.name, **kw))
    if drawn["r"]:
        ax_r.axhline(threshold, color="black", linestyle="--", linewidth=1.0)
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.0,
                              label=f"gate open: ratio {threshold:.3g}"))
    for key, ax, label, what in (("g", ax_g, "mean |gate| (BD-fusion)", "no BD-fusion in these runs"),
                                 ("r", ax_r, "||gate\u00b7attn|| / ||pix||", "no BD-fusion in these runs"),
                                 ("s", ax_s, "SRPP error (mm)", "no SRPP head in these runs"),
                                 ("d", ax_d, "validation 3D Dice", "no val_log.csv")):
        if not drawn[key]:
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=8)
        elif key in positive and positive[key]:
            ax.set_yscale("log", nonpositive="mask")  # spans decades; exact zeros (a closed gate) not drawn
        _step_axis(ax, label)
    if drawn["d"]:
        ax_d.set_ylim(-0.02, 1.02)
    fig.legend(handles=handles, loc="outside lower center", fontsize=7, ncols=min(6, len(handles)))
    return to_data_uri(fig, palette=True)


def context(res: TargetResults, gate_open_ratio: float) -> dict:
    threshold = float(gate_open_ratio)
    reference = [r for r in res.runs if (r.train_summary or {}).get("arch") == "nnunet"]
    with_log = [r for r in res.runs if r.train_log is not None and r not in reference]
    current = [r for r in with_log if any(c in r.train_log.columns for c in HEAD_COLUMNS)]
    older = [r for r in with_log if r not in current]
    notes = []
    if reference:
        notes.append(", ".join(r.name for r in reference) + ": nnU-Net, which has no SRPP or BD heads")
    if older:
        notes.append("no head statistics (" + ", ".join(HEAD_COLUMNS) + ") in the train_log.csv of "
                     + ", ".join(r.name for r in older) + ": logs written before they were recorded")
    missing = [r.name for r in res.runs if r.train_log is None and r not in reference]
    if missing:
        notes.append("no train_log.csv for " + ", ".join(missing))
    if not current:
        return {"show": False, "note": "; ".join(notes) if notes else "no head statistics in these training logs"}
    rows = [run_stats(r, threshold) for r in current]
    never = [_statement(r, threshold) for r in rows if r["never_opened"]]
    opened = [_statement(r, threshold) for r in rows if r["has_fusion"] and not r["never_opened"]]
    n_edge = sorted({r["srpp_n"] for r in rows if r["srpp_n"] is not None})
    return {
        "show": True,
        "threshold": threshold,
        "threshold_text": f"{threshold:.3g}",
        "figure": heads_figure(current, threshold),
        "rows": rows,
        "never": never,
        "opened": opened,
        "notes": notes,
        "edge_percent": f"{100 * EDGE_SHARE:.0f}",
        "edge_steps": ", ".join(str(n) for n in n_edge),
        "any_fusion": any(r["has_fusion"] for r in rows),
    }
