"""Whole-volume inference with either kind of model, and what follows it.

:func:`predict_prepared` predicts a prepared (z, y, x) volume with the model's own method
(``model.inference``: SAM2 memory propagation both ways, ``infer/propagation.py``, or the
U-Net's sliding windows, ``infer/sliding_window.py``); :func:`predict_volume` maps the
probabilities back to the original grid, thresholds and post-processes them. How is set by
:class:`InferenceSettings`, built from a config's ``infer`` section and the target, and
passed in by the caller (training validation, ``evaluate``, ``predict``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ..config import target_config
from ..console import new_progress
from ..data.preprocess import CaseGeometry, to_original
from ..model.checkpoint import LoadedModel
from ..model.factory import VolumeModel
from ..model.prompts import Prompt
from .propagation import predict_by_propagation
from .sliding_window import predict_by_sliding_window


@dataclass(frozen=True)
class InferenceSettings:
    """The ``infer`` section of a config, plus the target's post-processing."""

    threshold: float = 0.5
    chunk: int | None = None            # encoder batch; None = auto (propagation.auto_chunk)
    feature_dtype: str = "float16"
    prompted_passes: str = "half"
    largest_component: bool = False

    @classmethod
    def from_config(cls, cfg: dict, target: str) -> "InferenceSettings":
        icfg = cfg["infer"]
        return cls(threshold=float(icfg["threshold"]), chunk=None if icfg["chunk"] == "auto" else int(icfg["chunk"]),
                   feature_dtype=icfg["feature_dtype"], prompted_passes=icfg["prompted_passes"],
                   largest_component=bool(target_config(cfg, target).get("largest_component", False)))

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
    return predict_by_propagation(model, image_zyx, prompt, chunk=settings.chunk, device=device,
                                  feature_dtype=settings.feature_dtype, passes=settings.prompted_passes,
                                  progress=progress, stats=stats)


def predict_volume(lm: LoadedModel, image_zyx: np.ndarray, geom: CaseGeometry, settings: InferenceSettings,
                   prompt: Prompt | None = None, label: str = "predict", stats: dict | None = None) -> np.ndarray:
    """Prepared image + geometry -> uint8 mask on the original grid (with a progress bar)."""
    with new_progress() as progress:
        bar = progress.add_task(label, total=None)
        prob = predict_prepared(lm.model, image_zyx, prompt, settings, device=lm.device, stats=stats,
                                progress=lambda done, total: progress.update(bar, completed=done, total=total))
    mask = to_original(prob, geom, kind="prob") >= settings.threshold
    return largest_component(mask) if settings.largest_component else mask.astype(np.uint8)


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
