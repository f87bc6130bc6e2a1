"""Segmentation and object-presence losses, and the weighted total of method.md.

L = L_seg + w_obj * L_obj + w_srpp * L_srpp + w_bd * L_bd.

``seg_loss="bce_dice"`` [ours, decision 5]: BCE + soft Dice on slices where the organ is
present; absent slices are learned through SAM2's object-score loss instead of pushing an
empty mask through Dice. ``seg_loss="bce"`` is the paper's L_seg: BCE on every slice.
A network without an object score (the ``unet3d`` reference) passes ``absent_bce=True``:
BCE on every slice (so it learns empty slices), Dice on the present ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-slice soft Dice loss, averaged. logits/target (N, H, W)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def seg_loss(logits, target, present, valid, kind: str = "bce_dice", absent_bce: bool = False) -> torch.Tensor:
    """logits/target (N, H, W); present/valid (N,) bool. ``absent_bce``: with ``bce_dice``,
    BCE on every valid slice and Dice on the present ones (a model with no object score)."""
    valid = valid.bool()
    if kind == "bce":
        sel = valid
    elif kind == "bce_dice":
        sel = valid & present.bool()
    else:
        raise ValueError(f"unknown seg_loss {kind!r}")
    bce_sel = valid if absent_bce else sel
    if not bce_sel.any():
        return logits.sum() * 0.0
    loss = F.binary_cross_entropy_with_logits(logits[bce_sel], target[bce_sel])
    if kind == "bce_dice" and sel.any():
        loss = loss + soft_dice_loss(logits[sel], target[sel])
    return loss


def object_loss(obj_logits, present, valid) -> torch.Tensor:
    """BCE of SAM2's object score (N,) against presence of the organ in the slice."""
    valid = valid.bool()
    if not valid.any():
        return obj_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(obj_logits[valid], present[valid].float())
