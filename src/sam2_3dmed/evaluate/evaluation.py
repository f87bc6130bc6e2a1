"""``sam2-3dmed evaluate``: score a trained run on its validation or held-out test cases.

For each case and mode (``auto``; ``prompted`` with a box or point simulated from the
ground truth on the organ's largest cross-section in the prepared grid; ``prompted_k<k>``
with k of them on k slices spread over the organ, ``evaluate.prompt_counts``, so the
report shows how accuracy grows with prompts) the prepared image is predicted (``infer/inference.py``, :func:`evaluate_case`), mapped back to the original grid through the
case's recorded geometry, post-processed as ``predict`` does, and scored against the
ORIGINAL label file in 3D, in mm (``evaluate/metrics.py``; NSD at the target's tolerance).

Outputs (written to a temp folder, then renamed into place)::

    OUT/metrics.csv     a row per case and mode: metrics, voxel counts, timings, memory
    OUT/summary.json    per mode and metric: mean, std, median, min, max, n; plus provenance
    OUT/predictions/<case>_<mode>.nii.gz   the masks, on the original grid (evaluate.save_predictions)

Several run folders make an ensemble (``infer/ensemble.py``: probabilities averaged before
thresholding), scored on the held-out test split only; summary.json's ``ensemble`` block
says which models are behind the numbers (size 1 for one fold's model).

Timings per case: seconds for the whole volume (prediction + mapping back, not scoring),
slices per second (prepared slices / seconds), and peak memory: CUDA peak allocated bytes
on a GPU, otherwise the process's peak resident set size so far (a high-water mark).
"""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_dir
from ..config import mode_prompts, target_config
from ..console import log
from ..data.prepared import PreparedTarget
from ..data.readers import write_nifti_like
from ..device import peak_memory_mb
from ..errors import InputFileError, UserError
from ..infer.ensemble import Ensemble, as_ensemble, load_ensemble
from ..infer.inference import InferenceSettings, predict_prepared_modes, to_mask
from ..model.checkpoint import LoadedModel
from ..model.prompts import prompts_from_label
from .metrics import compute_metrics

METRICS = ("dice", "iou", "hd95", "nsd", "assd")
FIELDS = ["case_id", "mode", "prompt", "n_prompts", *METRICS, "pred_voxels", "gt_voxels", "gt_volume_ml",
          "seconds", "slices", "slices_per_s", "peak_mem_mb", "feature_cache_mb", "device"]


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max())}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for mode in sorted({r["mode"] for r in rows}):
        rs = [r for r in rows if r["mode"] == mode]
        out[mode] = {m: _stats([float(r[m]) for r in rs]) for m in (*METRICS, "seconds", "slices_per_s")}
    return out


def mode_names(modes, prompt_counts) -> list[str]:
    """``auto`` and ``prompted`` with ``prompt_counts`` -> the evaluated modes: ``auto``,
    ``prompted`` (one simulated prompt) and ``prompted_k<k>`` (k prompts on k slices)."""
    out = []
    for m in modes:
        if m == "auto":
            out.append("auto")
        elif m == "prompted":
            out += ["prompted" if k == 1 else f"prompted_k{k}" for k in prompt_counts]
        else:
            raise UserError(f"unknown mode {m!r}: use auto and/or prompted (evaluate.prompt_counts sets how many "
                            f"prompts)")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: which run(s), on what, how (CLI options; None = the config's evaluate.*).

    ``run_dir``: a fold's run folder, or several (an ensemble: probabilities averaged; the
    held-out test split only, since each fold's validation cases are the others' training
    cases)."""

    target: str
    variant: str
    fold: int
    run_dir: Path | tuple[Path, ...]
    out: Path
    prepared: Path | None = None         # default: data.prepared/<target>
    split: str | None = None             # val | test
    modes: tuple[str, ...] | None = None  # auto and/or prompted
    checkpoint: str | None = None        # best | last | a path
    device: str | None = None
    base_weights: Path | None = None
    max_cases: int | None = None
    overwrite: bool = False
    save_predictions: bool | None = None
    prompt_counts: tuple[int, ...] | None = None  # default: evaluate.prompt_counts

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        return (Path(self.run_dir),) if isinstance(self.run_dir, (str, Path)) else tuple(map(Path, self.run_dir))


def evaluate_case(models: Ensemble | LoadedModel, prepared: PreparedTarget, case_id: str, modes: list[str],
                  settings: InferenceSettings, labels: list[int], tolerance_mm: float, prompt_kind: str,
                  predictions: Path | None = None, progress_label: str = "") -> list[dict]:
    """Predict one case in each mode, map it back, score it against its ORIGINAL label
    file; one metrics row per mode (masks written to ``predictions/`` when given).

    The volume is encoded once per model and propagated once per mode; a row's ``seconds``
    is what that mode alone costs (the encoding, its propagation, mapping back)."""
    ens = as_ensemble(models)
    device = ens.device
    # memory-mapped, in its storage dtype: inference reads it a chunk of slices at a time
    image, label, geom = prepared.case(case_id, mmap=True)
    gt, gt_vol = prepared.original_label(case_id, labels)
    spacing = gt_vol.spacing
    if gt.shape != tuple(geom.original_shape):
        raise InputFileError(f"label shape {gt.shape} differs from the prepared geometry "
                             f"{tuple(geom.original_shape)}: re-run prepare", prepared.path / "cases" / case_id)
    prompts = {m: (prompts_from_label(label, prompt_kind, mode_prompts(m)) or None) if m != "auto" else None
               for m in modes}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats: dict = {}
    probs = predict_prepared_modes(ens, image, prompts, settings, f"{case_id} {progress_label}".strip(), stats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = peak_memory_mb(device)
    rows = []
    for mode in modes:
        t0 = time.perf_counter()
        mask, _ = to_mask(probs.pop(mode), geom, settings)
        seconds = stats[mode]["seconds"] + time.perf_counter() - t0
        m = compute_metrics(mask, gt, spacing, tolerance_mm)
        if predictions is not None:
            write_nifti_like(mask, gt_vol, predictions / f"{case_id}_{mode}.nii.gz")
        n_prompts = len(prompts[mode] or [])
        rows.append({
            "case_id": case_id, "mode": mode,
            "prompt": "" if mode == "auto" else (prompt_kind if prompts[mode] else "none (empty label)"),
            "n_prompts": n_prompts,
            **{k: m[k] for k in METRICS}, "pred_voxels": m["pred_voxels"], "gt_voxels": m["gt_voxels"],
            "gt_volume_ml": m["gt_voxels"] * float(np.prod(spacing)) / 1000.0,
            "seconds": seconds, "slices": image.shape[0], "slices_per_s": image.shape[0] / seconds,
            "peak_mem_mb": peak, "feature_cache_mb": stats[mode]["feature_cache_bytes"] / 2 ** 20,
            "device": str(device),
        })
        log.info("%s %s: Dice %.4f, HD95 %.2f mm, NSD %.4f, %.1f s", case_id, mode, m["dice"], m["hd95"], m["nsd"],
                 seconds)
    return rows


def evaluate_run(cfg: dict, job: EvalJob) -> Path:
    """Score a trained run (or an ensemble of runs) on its fold's validation (or the
    held-out test) cases."""
    ecfg = cfg["evaluate"]
    split = job.split or ecfg["split"]
    counts = tuple(job.prompt_counts or ecfg["prompt_counts"])
    modes = mode_names(job.modes or ecfg["modes"], counts)
    target, fold = job.target, job.fold
    tcfg = target_config(cfg, target)
    prepared = PreparedTarget(job.prepared or Path(cfg["data"]["prepared"]) / target)
    which = job.checkpoint or ecfg["checkpoint"]
    runs = job.run_dirs
    if len(runs) > 1 and split != "test":
        raise UserError(f"an ensemble of {len(runs)} runs can be scored on the held-out test split only (--split "
                        f"test): each fold's {split} cases are the other folds' training cases")
    if which in ("best", "last"):
        ckpts = [Path(r) / f"{which}.pt" for r in runs]
    elif len(runs) == 1:
        ckpts = [Path(which)]
    else:
        raise UserError(f"--checkpoint {which}: with several --run give best or last, not a path")
    synthetic = prepared.synthetic  # fingerprint.json read and checked first: the cheap checks before the model
    prepared.check_target(target)
    cases = prepared.cases(fold, split)
    n_split = len(cases)
    max_cases = job.max_cases or ecfg["max_cases"]
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise UserError(f"the {split} split of fold {fold} has no cases", prepared.path / "splits.json")
    for c in ckpts:
        if not c.is_file():
            raise UserError("does not exist: has this run been trained?", c)
    # the models last: the prepared data's checks above are cheap, loading models is not
    ens = load_ensemble(ckpts, job.device, job.base_weights)
    skipped = {}
    prompted = [m for m in modes if m != "auto"]
    if not ens.accepts_prompts and prompted:
        modes = [m for m in modes if m == "auto"]
        for m in prompted:
            skipped[m] = "a unet3d model takes no prompts"
        log.info("a unet3d model takes no prompts; prompted mode skipped (%s)", ", ".join(prompted))
        if not modes:
            raise UserError("a unet3d model takes no prompts, and --modes asks for prompted only", ckpts[0])
    for lm in ens.members:
        if lm.target != target:
            raise UserError(f"checkpoint is a {lm.target} model, not {target}", lm.path)
        if split == "val" and lm.fold is not None and lm.fold != fold:
            raise UserError(f"checkpoint was trained on fold {lm.fold}: fold {fold}'s validation cases include its "
                            f"training cases, so the scores would be inflated", lm.path)
    # inference and post-processing settings come from the evaluating config, not the checkpoint's
    settings = InferenceSettings.from_config(cfg, target)
    tol = float(tcfg["nsd_tolerance_mm"])
    save = bool(ecfg["save_predictions"]) if job.save_predictions is None else job.save_predictions
    lm = ens.first

    rows = []
    with atomic_dir(Path(job.out), overwrite=job.overwrite) as tmp:
        for i, cid in enumerate(cases):
            rows += evaluate_case(ens, prepared, cid, modes, settings, tcfg["labels"], tol, ecfg["prompt"],
                                  tmp / "predictions" if save else None, f"({i + 1}/{len(cases)})")
        with (tmp / "metrics.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        summary = {
            "target": target, "variant": job.variant, "fold": fold if len(ens) == 1 else None, "split": split,
            "modes": modes, "prompt": ecfg["prompt"], "prompt_counts": list(counts),
            "checkpoint": str(ckpts[0]), "checkpoint_step": lm.step, "ensemble": ens.summary(),
            "nsd_tolerance_mm": tol, "n_cases": len(cases), "n_cases_in_split": n_split, "space": "original image grid, 3D, mm",
            "synthetic": synthetic,
            **({"modes_skipped": skipped} if skipped else {}),
            "arch": lm.config["model"].get("arch", "sam2_3dmed"),
            "pretrained": bool(lm.config["model"]["pretrained"]), "backbone": lm.config["model"]["backbone"],
            "image_size": lm.config["model"]["image_size"], "infer": cfg["infer"],
            "device": str(lm.device), "torch": torch.__version__, "python": platform.python_version(),
            "metrics": summarise(rows),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    what = f"fold {fold}" if len(ens) == 1 else ens.describe()
    for mode, s in summary["metrics"].items():
        log.info("%s/%s/%s %s (%s, %d cases): Dice %.4f +- %.4f, HD95 %.2f mm", target, job.variant, what, mode,
                 split, s["dice"]["n"], s["dice"]["mean"], s["dice"]["std"], s["hd95"]["mean"])
    return Path(job.out)
