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
    OUT/metrics.json    the same statistics, numbers only (what `dvc metrics show` reads)
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
from ..config import PERTURBATIONS, mode_info, robustness_mode, target_config
from ..console import log
from ..data.prepared import PreparedTarget
from ..data.readers import write_nifti_like
from ..device import peak_memory_mb
from ..errors import InputFileError, UserError
from ..infer.ensemble import Ensemble, as_ensemble, load_ensemble
from ..infer.inference import InferenceSettings, predict_prepared_modes, to_mask
from ..model.checkpoint import LoadedModel
from ..model.prompts import perturbation_draw, perturbed_prompt, prompts_from_label
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


def study_modes(ecfg: dict, modes: list[str]) -> list[str]:
    """The studies' modes a single model's evaluation adds to ``modes`` (config.mode_info):
    ``auto_forward``/``auto_backward`` (``evaluate.directions``, with ``auto``) and one
    prompt-robustness mode per level of ``evaluate.robustness`` (with a prompted mode)."""
    out = []
    if ecfg["directions"] and "auto" in modes:
        out += ["auto_forward", "auto_backward"]
    if any(m != "auto" for m in modes):
        for name in PERTURBATIONS:
            out += [robustness_mode(name, level) for level in ecfg["robustness"][name]]
    return [m for m in dict.fromkeys(out) if m not in modes]


def case_prompts(mode: str, label, kind: str, draw) -> list | None:
    """The simulated prompts of one case in one mode (None: no prompt, auto mode or an
    empty label): evaluate.prompt's ``kind`` on 1 or k slices (main modes), or a perturbed
    prompt (robustness modes: box_jitter a box, point_offset a click, key_slice ``kind``)."""
    info = mode_info(mode)
    if info is None:
        raise UserError(f"unknown evaluation mode {mode!r}")
    if info.family == "robustness":
        p = perturbed_prompt(label, PERTURBATIONS[info.perturbation] or kind, info.perturbation, info.level, draw)
        return None if p is None else [p]
    if info.n_prompts == 0:
        return None
    return prompts_from_label(label, kind, info.n_prompts) or None


def boundary_columns(bands_mm, percentiles) -> list[str]:
    """metrics.csv's boundary-analysis columns for ``evaluate.boundary_bands_mm`` and
    ``evaluate.surface_percentiles`` (the names evaluate/metrics.py gives them)."""
    def edge(v: float) -> str:
        return "inf" if v == float("inf") else f"{v:g}".replace(".", "p")

    edges = [0.0, *map(float, bands_mm), float("inf")]
    return ([f"err_mm_{edge(a)}_{edge(b)}" for a, b in zip(edges, edges[1:])]
            + [f"sd_p{edge(float(q))}" for q in percentiles])


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
    studies: bool | None = None          # direction and prompt-robustness modes (single models); default: on

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        return (Path(self.run_dir),) if isinstance(self.run_dir, (str, Path)) else tuple(map(Path, self.run_dir))


def select_cases(prepared: PreparedTarget, target: str, fold: int, split: str,
                 max_cases: int | None) -> tuple[list[str], int]:
    """The cases an evaluation scores (the split's first ``max_cases``, all when None) and the
    size of the split; the folder checked to be the target's, a split without cases refused."""
    prepared.check_target(target)
    cases = prepared.cases(fold, split)
    n_split = len(cases)
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise UserError(f"the {split} split of fold {fold} has no cases", prepared.path / "splits.json")
    return cases, n_split


def check_member(model_target: str, model_fold: int | None, path: Path, target: str, fold: int, split: str) -> None:
    """A model may score the target's cases: trained on that target, and on ``fold`` when it
    scores the fold's validation cases (another fold's model has trained on them)."""
    if model_target != target:
        raise UserError(f"checkpoint is a {model_target} model, not {target}", path)
    if split == "val" and model_fold is not None and model_fold != fold:
        raise UserError(f"checkpoint was trained on fold {model_fold}: fold {fold}'s validation cases include its "
                        f"training cases, so the scores would be inflated", path)


def case_metrics(mask: np.ndarray, gt: np.ndarray, spacing, tolerance_mm: float, bands_mm=(),
                 percentiles=()) -> dict:
    """Every metric of one predicted mask against its ground truth (both on the original
    grid), the boundary analysis included."""
    return compute_metrics(mask, gt, spacing, tolerance_mm, bands_mm=bands_mm or None, percentiles=percentiles or None)


def metrics_row(case_id: str, mode: str, m: dict, voxel_ml: float, *, seconds: float, slices: int, device,
                prompt: str = "", n_prompts: int = 0, feature_cache_mb: float = 0.0) -> dict:
    """One metrics.csv row (``FIELDS`` + the boundary columns) from :func:`case_metrics`'s
    result: error bands in mL, surface-distance percentiles in mm. ``peak_mem_mb`` is set
    by the caller once the case is done (a high-water mark over all its modes)."""
    extra = {k: (v * voxel_ml if k.startswith("err_mm_") else v) for k, v in m.items()
             if k.startswith(("err_mm_", "sd_p"))}
    log.info("%s %s: Dice %.4f, HD95 %.2f mm, NSD %.4f, %.1f s", case_id, mode, m["dice"], m["hd95"], m["nsd"],
             seconds)
    return {
        "case_id": case_id, "mode": mode, "prompt": prompt, "n_prompts": n_prompts,
        **{k: m[k] for k in METRICS}, "pred_voxels": m["pred_voxels"], "gt_voxels": m["gt_voxels"],
        "gt_volume_ml": m["gt_voxels"] * voxel_ml,
        "seconds": seconds, "slices": slices, "slices_per_s": slices / seconds if seconds > 0 else None,
        "peak_mem_mb": None, "feature_cache_mb": feature_cache_mb,
        "device": str(device), **extra,
    }


def write_evaluation(folder: Path, rows: list[dict], summary: dict, bands_mm, percentiles, step) -> None:
    """metrics.csv (a row per case and mode), summary.json (``summary`` + the per-mode
    statistics under ``metrics``) and metrics.json (those statistics only, for ``dvc
    metrics show``) in ``folder``. Fills ``summary["metrics"]``."""
    with (folder / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS + boundary_columns(bands_mm, percentiles))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    summary["metrics"] = summarise(rows)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    # numbers only, for `dvc metrics show` (the workflow copies it out of the run folder)
    numbers = {"n_cases": summary["n_cases"], "checkpoint_step": step, **summary["metrics"]}
    (folder / "metrics.json").write_text(json.dumps(numbers, indent=2, allow_nan=False) + "\n")


def evaluate_case(models: Ensemble | LoadedModel, prepared: PreparedTarget, case_id: str, modes: list[str],
                  settings: InferenceSettings, labels: list[int], tolerance_mm: float, prompt_kind: str,
                  predictions: Path | None = None, progress_label: str = "", seed: int = 0,
                  bands_mm=(), percentiles=()) -> list[dict]:
    """Predict one case in each mode, map it back, score it against its ORIGINAL label
    file; one metrics row per mode, in the order of ``modes`` (masks written to
    ``predictions/`` when given).

    The volume is encoded once per model and propagated once per distinct prediction:
    modes asking for the same one (the same prompts and passes, e.g. ``box_jitter0`` and
    ``prompted`` with a box) share it. A row's ``seconds`` is what that mode alone costs
    (the encoding, its propagation, mapping back). With one model each mode is mapped
    back and scored as soon as it is propagated, so one mode's probabilities are held at
    a time; an ensemble accumulates every mode over its members first."""
    ens = as_ensemble(models)
    device = ens.device
    # memory-mapped, in its storage dtype: inference reads it a chunk of slices at a time
    image, label, geom = prepared.case(case_id, mmap=True)
    gt, gt_vol = prepared.original_label(case_id, labels)
    spacing = gt_vol.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if gt.shape != tuple(geom.original_shape):
        raise InputFileError(f"label shape {gt.shape} differs from the prepared geometry "
                             f"{tuple(geom.original_shape)}: re-run prepare", prepared.path / "cases" / case_id)
    draw = perturbation_draw(seed, case_id)
    prompts = {m: case_prompts(m, label, prompt_kind, draw) for m in modes}
    passes = {m: mode_info(m).direction for m in modes if mode_info(m).direction}
    source: dict[str, str] = {}
    first: dict = {}
    for m in modes:  # the first mode of each distinct (prompts, passes) predicts for all of them
        source[m] = first.setdefault((repr(prompts[m]), passes.get(m)), m)
    unique = [m for m in modes if source[m] == m]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows: dict[str, dict] = {}

    def score(mode: str, prob: np.ndarray, seconds: float, cache_bytes: int) -> None:
        t0 = time.perf_counter()
        mask, _ = to_mask(prob, geom, settings)
        del prob
        seconds += time.perf_counter() - t0
        m = case_metrics(mask, gt, spacing, tolerance_mm, bands_mm, percentiles)
        for alias in (a for a in modes if source[a] == mode):
            if predictions is not None:
                write_nifti_like(mask, gt_vol, predictions / f"{case_id}_{alias}.nii.gz")
            kind = mode_kind(alias, prompt_kind)
            rows[alias] = metrics_row(
                case_id, alias, m, voxel_ml, seconds=seconds, slices=image.shape[0], device=device,
                prompt="" if kind is None else (kind if prompts[alias] else "none (empty label)"),
                n_prompts=len(prompts[alias] or []), feature_cache_mb=cache_bytes / 2 ** 20)

    stats: dict = {}
    label_text = f"{case_id} {progress_label}".strip()
    prompts_unique = {m: prompts[m] for m in unique}
    if len(ens) == 1:
        predict_prepared_modes(ens, image, prompts_unique, settings, label_text, stats, passes=passes,
                               on_mode=lambda m, p, s: score(m, p, s["seconds"], s["feature_cache_bytes"]))
    else:
        probs = predict_prepared_modes(ens, image, prompts_unique, settings, label_text, stats, passes=passes)
        for m in unique:
            score(m, probs.pop(m), stats[m]["seconds"], stats[m]["feature_cache_bytes"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = peak_memory_mb(device)  # a high-water mark over the case: prediction and scoring
    out = [rows[m] for m in modes]
    for r in out:
        r["peak_mem_mb"] = peak
    return out


def mode_kind(mode: str, prompt_kind: str) -> str | None:
    """The prompt a mode gives: None (auto modes), ``box`` or ``point``."""
    info = mode_info(mode)
    if info.n_prompts == 0:
        return None
    if info.family == "robustness":
        return PERTURBATIONS[info.perturbation] or prompt_kind
    return prompt_kind


def evaluate_run(cfg: dict, job: EvalJob) -> Path:
    """Score a trained run (or an ensemble of runs) on its fold's validation (or the
    held-out test) cases."""
    ecfg = cfg["evaluate"]
    split = job.split or ecfg["split"]
    counts = tuple(job.prompt_counts or ecfg["prompt_counts"])
    modes = mode_names(job.modes or ecfg["modes"], counts)
    bands = [float(b) for b in ecfg["boundary_bands_mm"]]
    if bands != sorted(bands):
        raise UserError(f"evaluate.boundary_bands_mm must be increasing, got {ecfg['boundary_bands_mm']}")
    pcts = [float(q) for q in ecfg["surface_percentiles"]]
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
    cases, n_split = select_cases(prepared, target, fold, split, job.max_cases or ecfg["max_cases"])
    for c in ckpts:
        if not c.is_file():
            raise UserError("does not exist: has this run been trained?", c)
    # the models last: the prepared data's checks above are cheap, loading models is not
    ens = load_ensemble(ckpts, job.device, job.base_weights)
    skipped = {}
    studies = job.studies if job.studies is not None else True
    if studies and len(ens) == 1 and ens.first.model.inference == "propagation":
        modes = modes + study_modes(ecfg, modes)
    elif studies and len(ens) > 1 and study_modes(ecfg, modes):
        log.info("an ensemble is scored in the main modes only: the direction and prompt-robustness studies "
                 "are per-fold evaluations (one checkpoint)")
    elif studies and study_modes(ecfg, modes):
        log.info("a unet3d model has no propagation directions or prompts: the studies' modes are skipped")
    prompted = [m for m in modes if mode_info(m).n_prompts > 0]
    if not ens.accepts_prompts and prompted:
        modes = [m for m in modes if m == "auto"]
        for m in prompted:
            skipped[m] = "a unet3d model takes no prompts"
        log.info("a unet3d model takes no prompts; prompted mode skipped (%s)", ", ".join(prompted))
        if not modes:
            raise UserError("a unet3d model takes no prompts, and --modes asks for prompted only", ckpts[0])
    for lm in ens.members:
        check_member(lm.target, lm.fold, lm.path, target, fold, split)
    # inference and post-processing settings come from the evaluating config, not the checkpoint's
    settings = InferenceSettings.from_config(cfg, target)
    tol = float(tcfg["nsd_tolerance_mm"])
    save = bool(ecfg["save_predictions"]) if job.save_predictions is None else job.save_predictions
    lm = ens.first

    rows = []
    with atomic_dir(Path(job.out), overwrite=job.overwrite) as tmp:
        for i, cid in enumerate(cases):
            rows += evaluate_case(ens, prepared, cid, modes, settings, tcfg["labels"], tol, ecfg["prompt"],
                                  tmp / "predictions" if save else None, f"({i + 1}/{len(cases)})",
                                  seed=int(ecfg["robustness"]["seed"]), bands_mm=bands, percentiles=pcts)
        summary = {
            "target": target, "variant": job.variant, "fold": fold if len(ens) == 1 else None, "split": split,
            "modes": modes, "prompt": ecfg["prompt"], "prompt_counts": list(counts),
            "robustness": dict(ecfg["robustness"]), "boundary_bands_mm": bands, "surface_percentiles": pcts,
            "checkpoint": str(ckpts[0]), "checkpoint_step": lm.step, "ensemble": ens.summary(),
            "nsd_tolerance_mm": tol, "n_cases": len(cases), "n_cases_in_split": n_split, "space": "original image grid, 3D, mm",
            "synthetic": synthetic,
            **({"modes_skipped": skipped} if skipped else {}),
            "arch": lm.config["model"].get("arch", "sam2_3dmed"),
            "pretrained": bool(lm.config["model"]["pretrained"]), "backbone": lm.config["model"]["backbone"],
            "image_size": lm.config["model"]["image_size"], "infer": cfg["infer"],
            "device": str(lm.device), "torch": torch.__version__, "python": platform.python_version(),
        }
        write_evaluation(tmp, rows, summary, bands, pcts, lm.step)
    what = f"fold {fold}" if len(ens) == 1 else ens.describe()
    for mode, s in summary["metrics"].items():
        log.info("%s/%s/%s %s (%s, %d cases): Dice %.4f +- %.4f, HD95 %.2f mm", target, job.variant, what, mode,
                 split, s["dice"]["n"], s["dice"]["mean"], s["dice"]["std"], s["hd95"]["mean"])
    return Path(job.out)
