"""``sam2-3dmed evaluate``: score a trained run on its validation or held-out test cases.

For each case and mode (``auto``; ``prompted`` with a box or point simulated from the
ground truth on the organ's largest cross-section in the prepared grid) the prepared
image is predicted (``infer/volume.py``), mapped back to the original grid through the
case's recorded geometry, post-processed as ``predict`` does, and scored against the
ORIGINAL label file in 3D, in mm (``evaluate/metrics.py``; NSD at the target's tolerance).

Outputs (written to a temp folder, then renamed into place)::

    OUT/metrics.csv     a row per case and mode: metrics, voxel counts, timings, memory
    OUT/summary.json    per mode and metric: mean, std, median, min, max, n; plus provenance
    OUT/predictions/<case>_<mode>.nii.gz   the masks, on the original grid (evaluate.save_predictions)

Timings per case: seconds for the whole volume (prediction + mapping back, not scoring),
slices per second (prepared slices / seconds), and peak memory: CUDA peak allocated bytes
on a GPU, otherwise the process's peak resident set size so far (a high-water mark).
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_dir
from ..config import target_config
from ..console import log
from ..data.io import load_nifti
from ..data.readers import write_nifti_like
from ..data.prepare import check_prepared_target, load_prepared_case
from ..errors import InputFileError, UserError
from ..infer.predict import load_model, predict_volume
from ..infer.volume import Prompt
from ..train.trainer import peak_memory_mb
from .metrics import compute_metrics

METRICS = ("dice", "iou", "hd95", "nsd", "assd")
FIELDS = ["case_id", "mode", "prompt", *METRICS, "pred_voxels", "gt_voxels", "gt_volume_ml",
          "seconds", "slices", "slices_per_s", "peak_mem_mb", "feature_cache_mb", "device"]


def simulated_prompt(label_zyx: np.ndarray, kind: str) -> Prompt | None:
    """Box or point from the ground truth on its largest cross-section (None if empty)."""
    from ..train.prompts import box_from_mask, key_slice, point_from_mask

    lab = np.asarray(label_zyx) > 0
    if not lab.any():
        return None
    k = key_slice(lab)
    if kind == "box":
        return Prompt(k, box=tuple(float(v) for v in box_from_mask(lab[k])))
    return Prompt(k, point=tuple(float(v) for v in point_from_mask(lab[k])))


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


def _read_fingerprint(path: Path) -> dict:
    """``fingerprint.json`` of a prepared target, with what evaluation needs checked (one-line errors)."""
    try:
        fp = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"not valid JSON ({type(exc).__name__}); re-run prepare", path) from None
    cases = fp.get("cases") if isinstance(fp, dict) else None
    if not isinstance(cases, list) or not isinstance(fp.get("task_dir"), str):
        raise InputFileError("not a prepare fingerprint: needs 'task_dir' and a list of 'cases'; re-run prepare", path)
    for i, c in enumerate(cases):
        if not (isinstance(c, dict) and isinstance(c.get("case_id"), str) and isinstance(c.get("label"), str)):
            raise InputFileError(f"cases[{i}] needs 'case_id' and 'label' strings; re-run prepare", path)
    return fp


def _original_label(fingerprint: dict, case_id: str, labels: list[int], prepared: Path):
    rec = next((c for c in fingerprint["cases"] if c["case_id"] == case_id), None)
    if rec is None:
        raise InputFileError(f"does not list case {case_id!r}", prepared / "fingerprint.json")
    path = Path(fingerprint["task_dir"]) / rec["label"]
    vol = load_nifti(path)
    return np.isin(np.rint(vol.data), labels).astype(np.uint8), vol


def evaluate_run(cfg: dict, target: str, variant: str, fold: int, run_dir, out, *, prepared=None,
                 split: str | None = None, modes=None, checkpoint: str | None = None, device: str | None = None,
                 base_weights=None, max_cases: int | None = None, overwrite: bool = False,
                 save_predictions: bool | None = None) -> Path:
    from ..train.dataset import list_cases

    ecfg = cfg["evaluate"]
    split = split or ecfg["split"]
    modes = list(modes or ecfg["modes"])
    bad = [m for m in modes if m not in ("auto", "prompted")]
    if bad:
        raise UserError(f"unknown mode(s) {bad}: use auto and/or prompted")
    tcfg = target_config(cfg, target)
    prepared = Path(prepared) if prepared else Path(cfg["data"]["prepared"]) / target
    which = checkpoint or ecfg["checkpoint"]
    ckpt = Path(run_dir) / f"{which}.pt" if which in ("best", "last") else Path(which)
    fp_path = prepared / "fingerprint.json"
    if not fp_path.is_file():
        raise UserError("not found; run `sam2-3dmed prepare` first", fp_path)
    fingerprint = _read_fingerprint(fp_path)
    check_prepared_target(prepared, target)
    cases = list_cases(prepared, fold, split)
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise UserError(f"the {split} split of fold {fold} has no cases", prepared / "splits.json")
    # the model last: the prepared data's checks above are cheap, loading a model is not
    lm = load_model(ckpt, device, base_weights)
    skipped = {}
    if getattr(lm.model, "is_unet", False) and "prompted" in modes:
        modes = [m for m in modes if m != "prompted"]
        skipped["prompted"] = "a unet3d model takes no prompts"
        log.info("%s: a unet3d model takes no prompts; prompted mode skipped", ckpt)
        if not modes:
            raise UserError("a unet3d model takes no prompts, and --modes asks for prompted only", ckpt)
    if lm.target != target:
        raise UserError(f"checkpoint is a {lm.target} model, not {target}", ckpt)
    if split == "val" and lm.fold is not None and lm.fold != fold:
        raise UserError(f"checkpoint was trained on fold {lm.fold}: fold {fold}'s validation cases include its "
                        f"training cases, so the scores would be inflated", ckpt)
    # inference and post-processing settings come from the evaluating config
    lm.config["infer"] = cfg["infer"]
    lm.config["targets"][target]["largest_component"] = tcfg.get("largest_component", False)
    tol = float(tcfg["nsd_tolerance_mm"])
    if save_predictions is None:
        save_predictions = bool(ecfg["save_predictions"])

    rows = []
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        for i, cid in enumerate(cases):
            image, label, geom = load_prepared_case(prepared, cid)
            image = np.asarray(image, dtype=np.float32)
            gt, gt_vol = _original_label(fingerprint, cid, tcfg["labels"], prepared)
            spacing = gt_vol.spacing
            if gt.shape != tuple(geom.original_shape):
                raise InputFileError(f"label shape {gt.shape} differs from the prepared geometry "
                                     f"{tuple(geom.original_shape)}: re-run prepare", prepared / "cases" / cid)
            for mode in modes:
                prompt = simulated_prompt(label, ecfg["prompt"]) if mode == "prompted" else None
                if lm.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(lm.device)
                stats: dict = {}
                t0 = time.perf_counter()
                mask = predict_volume(lm, image, geom, prompt, label=f"{cid} {mode} ({i + 1}/{len(cases)})", stats=stats)
                if lm.device.type == "cuda":
                    torch.cuda.synchronize(lm.device)
                seconds = time.perf_counter() - t0
                m = compute_metrics(mask, gt, spacing, tol)
                if save_predictions:
                    write_nifti_like(mask, gt_vol, tmp / "predictions" / f"{cid}_{mode}.nii.gz")
                rows.append({
                    "case_id": cid, "mode": mode,
                    "prompt": "" if mode == "auto" else (ecfg["prompt"] if prompt else "none (empty label)"),
                    **{k: m[k] for k in METRICS}, "pred_voxels": m["pred_voxels"], "gt_voxels": m["gt_voxels"],
                    "gt_volume_ml": m["gt_voxels"] * float(np.prod(spacing)) / 1000.0,
                    "seconds": seconds, "slices": image.shape[0], "slices_per_s": image.shape[0] / seconds,
                    "peak_mem_mb": peak_memory_mb(lm.device), "feature_cache_mb": stats.get("feature_cache_bytes", 0) / 2 ** 20,
                    "device": str(lm.device),
                })
                log.info("%s %s: Dice %.4f, HD95 %.2f mm, NSD %.4f, %.1f s", cid, mode, m["dice"], m["hd95"], m["nsd"], seconds)
        with (tmp / "metrics.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        summary = {
            "target": target, "variant": variant, "fold": fold, "split": split, "modes": modes,
            "prompt": ecfg["prompt"], "checkpoint": str(ckpt), "checkpoint_step": lm.step,
            "nsd_tolerance_mm": tol, "n_cases": len(cases), "space": "original image grid, 3D, mm",
            "synthetic": bool(fingerprint.get("synthetic", False)),
            **({"modes_skipped": skipped} if skipped else {}),
            "arch": lm.config["model"].get("arch", "sam2_3dmed"),
            "pretrained": bool(lm.config["model"]["pretrained"]), "backbone": lm.config["model"]["backbone"],
            "image_size": lm.config["model"]["image_size"], "infer": cfg["infer"],
            "device": str(lm.device), "torch": torch.__version__, "python": platform.python_version(),
            "metrics": summarise(rows),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    for mode, s in summary["metrics"].items():
        log.info("%s/%s/fold %d %s (%s, %d cases): Dice %.4f +- %.4f, HD95 %.2f mm", target, variant, fold, mode,
                 split, s["dice"]["n"], s["dice"]["mean"], s["dice"]["std"], s["hd95"]["mean"])
    return Path(out)
