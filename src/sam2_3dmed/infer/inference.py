"""Whole-volume inference with either kind of model, and what follows it.

:func:`predict_prepared` predicts a prepared (z, y, x) volume with the model's own method
(``model.inference``: SAM2 memory propagation both ways, ``infer/propagation.py``, or the
U-Net's sliding windows, ``infer/sliding_window.py``); :func:`predict_volume` maps the
probabilities back to the original grid, thresholds and post-processes them. How is set by
:class:`InferenceSettings`, built from a config's ``infer`` section and the target, and
passed in by the caller (training validation, ``evaluate``, ``predict``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import Progress
from scipy import ndimage

from ..config import target_config
from ..console import new_progress
from ..data.preprocess import CaseGeometry, to_original
from ..device import amp_dtype, enable_tf32
from ..model.checkpoint import LoadedModel
from ..model.factory import VolumeModel
from ..model.prompts import Prompt
from .ensemble import as_ensemble
from .propagation import encode_volume, feature_bytes, predict_by_propagation, propagate_volume
from .sliding_window import predict_by_sliding_window

if TYPE_CHECKING:
    from .ensemble import Ensemble


@dataclass(frozen=True)
class InferenceSettings:
    """The ``infer`` section of a config, plus the target's post-processing."""

    threshold: float = 0.5
    chunk: int | None = None            # encoder batch; None = auto (propagation.auto_chunk)
    feature_dtype: str = "float16"      # or auto: bfloat16 on a GPU, float16 on a CPU
    prompted_passes: str = "half"
    largest_component: bool = False
    amp: bool = True                    # bf16 autocast on a GPU that has native bf16 (never on a CPU)
    lockstep: str | bool = "auto"       # two equal passes as one batch of two: auto = on a GPU
    tf32: bool = True                   # TF32 matmuls on a GPU

    @classmethod
    def from_config(cls, cfg: dict, target: str) -> "InferenceSettings":
        icfg = cfg["infer"]
        return cls(threshold=float(icfg["threshold"]), chunk=None if icfg["chunk"] == "auto" else int(icfg["chunk"]),
                   feature_dtype=icfg["feature_dtype"], prompted_passes=icfg["prompted_passes"],
                   largest_component=bool(target_config(cfg, target).get("largest_component", False)),
                   amp=bool(icfg.get("amp", True)), lockstep=icfg.get("lockstep", "auto"),
                   tf32=bool(icfg.get("tf32", True)))

    def on(self, device) -> tuple[torch.dtype | None, bool]:
        """What these settings mean on ``device``: (autocast dtype or None, lockstep); on a GPU
        also switches TF32 on when asked (a process-wide setting, as in nnU-Net's predictor)."""
        dev = torch.device(device)
        if self.tf32:
            enable_tf32(dev)
        lockstep = dev.type == "cuda" if self.lockstep == "auto" else bool(self.lockstep)
        return amp_dtype(dev, self.amp, "infer.amp"), lockstep

    def but(self, **changes) -> "InferenceSettings":
        """A copy with some settings changed (None leaves a setting as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def predict_prepared(model: VolumeModel, image_zyx: np.ndarray, prompt: Prompt | None = None,
                     settings: InferenceSettings = InferenceSettings(), device="cpu", progress=None,
                     stats: dict | None = None) -> np.ndarray:
    """Probability map (z, y, x) float32 on the prepared grid, by the model's own method."""
    if prompt is not None and not model.accepts_prompts:
        raise ValueError(f"a {type(model).__name__} model takes no prompts")
    if model.inference == "sliding_window":
        return predict_by_sliding_window(model, image_zyx, device=device, progress=progress, stats=stats)
    amp, lockstep = settings.on(device)
    return predict_by_propagation(model, image_zyx, prompt, chunk=settings.chunk, device=device,
                                  feature_dtype=settings.feature_dtype, passes=settings.prompted_passes,
                                  progress=progress, stats=stats, amp=amp, lockstep=lockstep)


@torch.no_grad()
def predict_prepared_modes(models: "Ensemble | LoadedModel", image_zyx: np.ndarray, prompts_by_mode: dict,
                           settings: InferenceSettings, label: str = "predict", stats: dict | None = None,
                           progress: Progress | None = None, passes: dict | None = None,
                           on_mode=None) -> dict[str, np.ndarray]:
    """Probability maps (z, y, x) float32 on the prepared grid, one per mode, averaged over
    the members of ``models`` (one model or an :class:`~.ensemble.Ensemble`).

    ``prompts_by_mode`` maps a mode name to its prompts (None, one Prompt or several).
    A SAM2-3dMed member encodes the volume ONCE and propagates it once per mode (the
    features are shared); a U-Net member (no prompts) predicts once. ``stats`` receives,
    per mode, ``seconds`` (what predicting that mode alone costs: the shared encoding plus
    its propagation, summed over members), ``slices`` and ``feature_cache_bytes`` (largest
    member). Memory: one accumulator per mode plus one member's features and output.
    ``passes`` maps a mode to its propagation passes when not ``settings.prompted_passes``
    (e.g. ``forward`` for auto mode one direction only; a U-Net member has no directions).
    ``on_mode(mode, prob, stats)``, with one model only: each mode's map is handed over as
    soon as it is propagated (with that mode's stats) and not kept, so one mode's map is in
    memory at a time; the returned dict is then empty.
    """
    ens = as_ensemble(models)
    modes = list(prompts_by_mode)
    if on_mode is not None and len(ens) > 1:
        raise ValueError("on_mode needs one model: an ensemble averages every mode over its members first")
    if any(prompts_by_mode[m] for m in modes) and not ens.accepts_prompts:
        raise ValueError("a unet3d model takes no prompts")
    acc: dict[str, np.ndarray] = {}
    seconds = {m: 0.0 for m in modes}
    cache = 0
    n = int(image_zyx.shape[0])
    own = progress is None
    progress = new_progress() if own else progress
    try:
        if own:
            progress.start()
        for i, lm in enumerate(ens.members):
            tag = f"{label} [{i + 1}/{len(ens)}]" if len(ens) > 1 else label
            bar = progress.add_task(tag, total=None)

            def report(done: int, total: int, bar=bar) -> None:
                progress.update(bar, completed=done, total=total)

            model = lm.model
            was_training = model.training
            model.eval()  # no dropout/drop-path, as in every inference path (restored below)
            if model.inference == "propagation":
                t0 = time.perf_counter()
                amp, lockstep = settings.on(lm.device)
                progress.update(bar, description=f"{tag} encode", total=n)
                feats, query, info = encode_volume(model, image_zyx, settings.chunk, lm.device,
                                                   settings.feature_dtype, progress=lambda d: report(d, n), amp=amp)
                t_enc = time.perf_counter() - t0
                cache = max(cache, feature_bytes(feats, query))
                for m in modes:
                    progress.reset(bar, total=None, description=f"{tag} {m}" if len(modes) > 1 else tag)
                    t1 = time.perf_counter()
                    p = propagate_volume(model, feats, query, info, n, prompts_by_mode[m],
                                         (passes or {}).get(m, settings.prompted_passes), lm.device,
                                         progress=report, chunk=settings.chunk, amp=amp, lockstep=lockstep)
                    seconds[m] += t_enc + time.perf_counter() - t1
                    if on_mode is not None:
                        on_mode(m, p, {"seconds": seconds[m], "slices": n, "feature_cache_bytes": cache})
                        p = None  # not kept: the next mode's propagation starts without it
                    else:
                        _accumulate(acc, m, p)
                del feats, query
            else:
                t0 = time.perf_counter()
                p = predict_by_sliding_window(model, image_zyx, device=lm.device, progress=report)
                dt = time.perf_counter() - t0
                for m in modes:
                    seconds[m] += dt
                    if on_mode is not None:
                        on_mode(m, p, {"seconds": seconds[m], "slices": n, "feature_cache_bytes": cache})
                    else:
                        _accumulate(acc, m, p if len(modes) == 1 else p.copy())
            del p
            model.train(was_training)
            progress.remove_task(bar)
    finally:
        if own:
            progress.stop()
    if len(ens) > 1:
        for m in modes:
            acc[m] /= np.float32(len(ens))
    if stats is not None:
        for m in modes:
            stats[m] = {"seconds": seconds[m], "slices": n, "feature_cache_bytes": cache}
    return acc


def _accumulate(acc: dict, mode: str, p: np.ndarray) -> None:
    if mode in acc:
        acc[mode] += p
    else:
        acc[mode] = p


def to_mask(prob_zyx: np.ndarray, geom: CaseGeometry, settings: InferenceSettings,
            keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Prepared-grid probabilities -> (uint8 mask on the original grid, the probabilities
    there as float32 when ``keep_probabilities``, else None)."""
    prob = to_original(prob_zyx, geom, kind="prob")
    mask = prob >= settings.threshold
    mask = largest_component(mask) if settings.largest_component else mask.astype(np.uint8)
    return mask, (prob if keep_probabilities else None)


def predict_volume(models: "Ensemble | LoadedModel", image_zyx: np.ndarray, geom: CaseGeometry,
                   settings: InferenceSettings, prompt=None, label: str = "predict", stats: dict | None = None,
                   keep_probabilities: bool = False, progress: Progress | None = None):
    """Prepared image + geometry -> uint8 mask on the original grid (with a progress bar).

    ``prompt``: None, one Prompt or several. With ``keep_probabilities`` returns
    (mask, float32 probabilities on the original grid) instead of the mask alone."""
    per_mode: dict = {}
    prob = predict_prepared_modes(models, image_zyx, {"predict": prompt}, settings, label, per_mode,
                                  progress)["predict"]
    if stats is not None:
        stats.update(per_mode["predict"])
    mask, prob_orig = to_mask(prob, geom, settings, keep_probabilities)
    return (mask, prob_orig) if keep_probabilities else mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary volume (empty stays empty)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(np.uint8, copy=False)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (lab == int(sizes.argmax())).astype(np.uint8)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """3D Dice of two binary volumes; both empty counts as 1 (training's validation score;
    the full metrics are in ``evaluate/metrics.py``)."""
    p, r = pred.astype(bool), ref.astype(bool)
    denom = p.sum() + r.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & r).sum() / denom)
