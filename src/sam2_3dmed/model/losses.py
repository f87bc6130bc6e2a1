"""The training losses: segmentation, object presence, and the weighted total of method.md.

L = L_seg + w_obj * L_obj + w_srpp * L_srpp + w_bd * L_bd   (:func:`compute_losses`)

Beside the terms, :func:`compute_losses` returns ``srpp_mae_mm`` (:func:`srpp_mae_mm`), the SRPP
head's error in mm, for the training log; it is detached and not part of L.

The two new terms live beside their heads: the SRPP loss and its targets in
``model/srpp.py`` (:func:`~.srpp.srpp_loss`, :func:`~.srpp.srpp_targets`), the class-balanced
boundary loss in ``model/boundary.py`` (:func:`~.boundary.bd_loss`,
:func:`~.boundary.boundary_targets`).

``seg_loss="bce_dice"`` [ours, decision 5]: BCE + soft Dice on slices where the organ is
present; absent slices are learned through SAM2's object-score loss instead of pushing an
empty mask through Dice. ``seg_loss="bce"`` is the paper's L_seg: BCE on every slice.
A network without an object score (the ``unet3d`` reference) passes ``absent_bce=True``:
BCE on every slice (so it learns empty slices), Dice on the present ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .boundary import bd_loss, boundary_targets
from .srpp import srpp_loss, srpp_targets


def _weighted_mean(per_item: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_item`` over the items with weight 1 (0 when there is none): the mean over
    a boolean selection, computed with weights instead of indexing, so no step waits for the
    device to count the selection (and the backward pass needs no scatter)."""
    return (per_item * weight).sum() / weight.sum().clamp_min(1.0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slice soft Dice loss, averaged (over the slices of ``weight`` 1 when given).
    logits/target (N, H, W)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    per_slice = 1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)
    return per_slice.mean() if weight is None else _weighted_mean(per_slice, weight)


def seg_loss(logits, target, present, valid, kind: str = "bce_dice", absent_bce: bool = False) -> torch.Tensor:
    """logits/target (N, H, W); present/valid (N,) bool. ``absent_bce``: with ``bce_dice``,
    BCE on every valid slice and Dice on the present ones (a model with no object score).
    Each term is the mean over its slices, 0 when it has none."""
    valid = valid.to(logits.device).float()
    if kind == "bce":
        sel = valid
    elif kind == "bce_dice":
        sel = valid * present.to(logits.device).float()
    else:
        raise ValueError(f"unknown seg_loss {kind!r}")
    bce_sel = valid if absent_bce else sel
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    loss = _weighted_mean(bce, bce_sel)
    if kind == "bce_dice":
        loss = loss + soft_dice_loss(logits, target, weight=sel)
    return loss


def object_loss(obj_logits, present, valid) -> torch.Tensor:
    """BCE of SAM2's object score (N,) against presence of the organ in the slice, over the
    valid slices (0 without one)."""
    bce = F.binary_cross_entropy_with_logits(obj_logits, present.to(obj_logits.dtype), reduction="none")
    return _weighted_mean(bce, valid.to(obj_logits.device).float())


def srpp_mae_mm(pred: torch.Tensor, target: torch.Tensor, z_mm: torch.Tensor, slice_index: torch.Tensor,
                valid: torch.Tensor | None, mode: str = "mm", scale_mm: float = 10.0) -> torch.Tensor:
    """The SRPP head's mean absolute error in mm over the pairs :func:`~.srpp.srpp_loss` uses
    (ordered pairs i != j of valid slices, pooled over the batch); detached, 0-dim.

    ``mode="mm"``: targets are (z_j - z_i) / scale_mm, so errors are scaled by ``scale_mm``;
    ``"index"``: targets are index differences, so each clip's errors are scaled by its slice
    spacing, sum |z_j - z_i| / sum |index_j - index_i| over its pairs. NaN without any pair.
    """
    with torch.no_grad():
        pred = pred.detach().float()
        target = target.to(pred.device).float()
        b, d, _ = pred.shape
        pair = ~torch.eye(d, dtype=torch.bool, device=pred.device).expand(b, d, d)
        if valid is not None:
            v = valid.to(pred.device).bool()
            pair = pair & v[:, :, None] & v[:, None, :]
        err = (pred - target).abs()
        if mode == "mm":
            err = err * scale_mm
        elif mode == "index":
            z = z_mm.to(pred.device).double()
            idx = slice_index.to(pred.device).double()
            dz = (z[:, None, :] - z[:, :, None]).abs()
            di = (idx[:, None, :] - idx[:, :, None]).abs()
            spacing = (dz * pair).sum((1, 2)) / (di * pair).sum((1, 2)).clamp_min(1.0)  # (B,)
            err = err * spacing.float()[:, None, None]
        else:
            raise ValueError(f"unknown SRPP target mode {mode!r}")
        # sum / count instead of err[pair].mean(): no host sync; 0 / 0 = NaN without a pair
        return (err * pair).sum() / pair.sum()


def compute_losses(out: dict, batch: dict, cfg: dict) -> dict:
    """Every loss term of one clip batch (``loss`` = their weighted total), from the model's
    outputs (heads it lacks are None) and the batch of ``train/dataset.py``."""
    mcfg, lcfg = cfg["model"], cfg["train"]["loss"]
    mask = batch["mask"]
    valid = batch["valid"]
    present = mask.flatten(2).amax(-1) > 0.5
    logits = out["mask_logits"]
    terms = {
        # without an object score (the U-Net) empty slices are learned through BCE
        "seg": seg_loss(logits.flatten(0, 1), mask.flatten(0, 1), present.flatten(), valid.flatten(), lcfg["seg"],
                        absent_bce=out["obj_logits"] is None),
    }
    total = terms["seg"]
    if out["obj_logits"] is not None:  # the U-Net reference has no object-score head
        terms["obj"] = object_loss(out["obj_logits"].flatten(), present.flatten(), valid.flatten())
        total = total + lcfg["w_obj"] * terms["obj"]
    if out["srpp"] is not None:
        tgt = srpp_targets(batch["z_mm"], batch["slice_index"], mcfg["srpp_target"], mcfg["srpp_scale_mm"])
        tgt = tgt.to(out["srpp"].device)
        terms["srpp"] = srpp_loss(out["srpp"], tgt, valid)
        total = total + lcfg["w_srpp"] * terms["srpp"]
        # a statistic for the logs, not a loss term: never part of ``total``
        terms["srpp_mae_mm"] = srpp_mae_mm(out["srpp"], tgt, batch["z_mm"], batch["slice_index"], valid,
                                           mcfg["srpp_target"], mcfg["srpp_scale_mm"])
    if out["bd_logits"] is not None:
        bt = boundary_targets(mask.flatten(0, 1)[:, None], mcfg["bd_width_px"])
        terms["bd"] = bd_loss(out["bd_logits"].flatten(0, 1)[:, None], bt, valid.flatten())
        total = total + lcfg["w_bd"] * terms["bd"]
    terms["loss"] = total
    return terms
