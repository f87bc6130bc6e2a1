"""Whole-volume prediction on the prepared grid [ours, method.md decision 6].

Each slice is encoded ONCE (in batches) and its features cached; SAM2 memory propagation
then runs inferior->superior and superior->inferior over the cached features, and the two
probability maps are averaged. ``auto`` mode needs no prompt: the first slice of each
direction is an unprompted conditioning slice. ``prompted`` mode puts a box or point on a
key slice and propagates from it in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.slices import fit_to_square, to_sam_input, unfit
from ..model.network import SAM23dMed, SliceFeatures


@dataclass
class Prompt:
    """A prompt on one slice of the prepared grid, in that slice's pixel coordinates."""

    slice_index: int
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    point: tuple[float, float] | None = None  # x, y (positive click)


def _encode_all(model: SAM23dMed, images: torch.Tensor, chunk: int) -> tuple[SliceFeatures, torch.Tensor | None]:
    lows, s1s, s0s, queries, pos = [], [], [], [], None
    for i in range(0, images.shape[0], chunk):
        f = model.encode(images[i:i + chunk])
        _, q = model.boundary(f)
        lows.append(f.low)
        s1s.append(f.s1)
        s0s.append(f.s0)
        pos = f.pos
        if q is not None:
            queries.append(q)
    feats = SliceFeatures(torch.cat(lows), torch.cat(s1s), torch.cat(s0s), pos)
    return feats, (torch.cat(queries) if queries else None)


def _points(prompt: Prompt, info, device):
    from ..train.prompts import map_points

    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        coords = np.array([[x0, y0], [x1, y1]], dtype=np.float32)
        labels = [2, 3]
    elif prompt.point is not None:
        coords = np.array([prompt.point], dtype=np.float32)
        labels = [1]
    else:
        return None
    coords = map_points(coords, info)
    return (torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
            torch.tensor([labels], dtype=torch.int32, device=device))


@torch.no_grad()
def predict_prepared(model: SAM23dMed, image_zyx: np.ndarray, prompt: Prompt | None = None,
                     chunk: int = 16, device: str | torch.device = "cpu") -> np.ndarray:
    """Probability map (z, y, x) float32 on the prepared grid for a (z, y, x) image in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        size = model.image_size
        fitted, info = fit_to_square(np.asarray(image_zyx, dtype=np.float32), size, mode="bilinear")
        images = to_sam_input(fitted).to(device)
        feats, query = _encode_all(model, images, chunk)
        n = images.shape[0]
        if prompt is None:
            fwd, fo = model.propagate(feats, list(range(n)), query, None)
            bwd, bo = model.propagate(feats, list(range(n - 1, -1, -1)), query, None)
            p_fwd = _prob(fwd, fo)[0]
            p_bwd = _prob(bwd, bo)[0].flip(0)
            prob = 0.5 * (p_fwd + p_bwd)
        else:
            k = int(prompt.slice_index)
            if not 0 <= k < n:
                raise ValueError(f"prompt slice {k} outside the volume's {n} slices")
            pts = _points(prompt, info, device)
            fwd, fo = model.propagate(feats, list(range(k, n)), query, pts)
            bwd, bo = model.propagate(feats, list(range(k, -1, -1)), query, pts)
            p_fwd = _prob(fwd, fo)[0]
            p_bwd = _prob(bwd, bo)[0].flip(0)
            prob = torch.cat([p_bwd[:k], p_fwd], 0)
        return unfit(prob.float().cpu(), info, mode="bilinear").numpy().astype(np.float32)
    finally:
        model.train(was_training)


def _prob(logits: torch.Tensor, obj_logits: torch.Tensor) -> torch.Tensor:
    """Mask probability, zero on slices the object score calls absent (as SAM2 does)."""
    present = (obj_logits > 0).float()[..., None, None]
    return torch.sigmoid(logits) * present


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """3D Dice of two binary volumes; both empty counts as 1."""
    p, r = pred.astype(bool), ref.astype(bool)
    denom = p.sum() + r.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & r).sum() / denom)
