"""Boundary Detection (BD) branch and BD-fusion [ours in detail, decision 4].

BD head: reads the adapted low-resolution features plus the encoder's high-resolution
FPN features (already projected by the mask decoder's conv_s0/conv_s1) and predicts
boundary logits at full input resolution through a small top-down decoder.

Ground truth: the morphological gradient of the mask (dilation XOR erosion) with a
square structuring element of radius ``width_px``.

BD-fusion: cross-attention with queries from the boundary-aware features (pooled to the
low-resolution grid) and keys/values from the slice features; its output is added to the
image embedding the mask decoder reads through a zero-initialised gate, so at step 0 the
model equals SAM2 and boundary learning reaches segmentation as the gate opens. How far it
opens is measured in training (:meth:`BDFusion.pop_fusion_ratio`, logged per step as
``bd_fusion_ratio``): ||gate * CrossAttn|| / ||pix||.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import adaptive_avg_pool, resize_bilinear


def boundary_targets(mask: torch.Tensor, width_px: int = 1) -> torch.Tensor:
    """(N, 1, H, W) binary mask -> (N, 1, H, W) float boundary map (morphological gradient)."""
    k = 2 * width_px + 1
    m = mask.float()
    dil = F.max_pool2d(m, k, stride=1, padding=width_px)
    ero = -F.max_pool2d(-m, k, stride=1, padding=width_px)
    return (dil - ero).clamp_(0, 1)


def _conv_gn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU())


class BDHead(nn.Module):
    def __init__(self, dim: int = 256, s1_dim: int = 64, s0_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.low = _conv_gn(dim, hidden)
        self.mid = _conv_gn(hidden + s1_dim, hidden)
        self.high = _conv_gn(hidden + s0_dim, hidden)
        self.out = nn.Conv2d(hidden, 1, 1)
        self.to_query = nn.Conv2d(hidden, dim, 1)

    def forward(self, low: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor, out_size: int):
        """low (N, C, h, w), s1 (N, 64, 2h, 2w), s0 (N, 32, 4h, 4w) ->
        (boundary logits (N, 1, S, S), boundary features for fusion (N, C, h, w))."""
        x = self.low(low)
        x = self.mid(torch.cat([resize_bilinear(x, s1.shape[-2:]), s1], 1))
        x = self.high(torch.cat([resize_bilinear(x, s0.shape[-2:]), s0], 1))
        logits = resize_bilinear(self.out(x), (out_size, out_size))
        query = self.to_query(adaptive_avg_pool(x, low.shape[-2:]))
        return logits, query


class BDFusion(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 8):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))
        # how much the fusion changes the pixel features, summed over the training-mode calls
        # since the last :meth:`pop_fusion_ratio` (a detached device scalar: no host sync per call)
        self._ratio_sum: torch.Tensor | None = None
        self._ratio_calls = 0

    def forward(self, pix: torch.Tensor, bd_query: torch.Tensor, slice_feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """All (N, C, h, w). Returns pix + gate * CrossAttn(q=bd_query, k=v=slice_feat)."""
        n, c, h, w = pix.shape
        tok = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  (N, hw, C)
        p = tok(pos)
        q = self.norm_q(tok(bd_query)) + p
        kv = self.norm_kv(tok(slice_feat))
        out, _ = self.attn(q, kv + p, kv, need_weights=False)
        out = self.proj(out).transpose(1, 2).reshape(n, c, h, w)
        delta = self.gate.view(1, c, 1, 1) * out
        if self.training:
            with torch.no_grad():
                r = fusion_ratio(pix, delta)
                self._ratio_sum = r if self._ratio_sum is None else self._ratio_sum + r
                self._ratio_calls += 1
        return pix + delta

    def gate_magnitude(self) -> torch.Tensor:
        """Mean |gate| over the channels (a detached 0-dim tensor on the gate's device: reading
        it does not wait for the device; ``float()`` it to use it)."""
        return self.gate.detach().abs().mean()

    def pop_fusion_ratio(self) -> torch.Tensor | None:
        """Mean :func:`fusion_ratio` over the training-mode calls since the last pop (a detached
        0-dim tensor on the device, None if there was none); resets the running sum."""
        total, calls = self._ratio_sum, self._ratio_calls
        self._ratio_sum, self._ratio_calls = None, 0
        return None if total is None else total / calls


def fusion_ratio(pix: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||delta|| / ||pix||, Frobenius norms over the whole batch (float32; 0-dim, detached):
    the relative change BD-fusion makes to the pixel features it is given."""
    return delta.detach().float().norm() / pix.detach().float().norm().clamp_min(torch.finfo(torch.float32).tiny)


def bd_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Class-balanced BCE: boundary pixels weighted by the non-boundary fraction and vice versa
    (fractions over the valid frames of the batch, so frames without boundary still count).
    logits/target (N, 1, H, W), valid (N,); frames outside ``valid`` get weight 0 (weights,
    not indexing: nothing waits for the device). 0 without a valid frame."""
    frame = torch.ones(logits.shape[0], device=logits.device) if valid is None \
        else valid.to(logits.device).float()
    frame = frame.view(-1, *([1] * (logits.dim() - 1))).expand_as(target)
    pos_frac = ((target * frame).sum() / frame.sum().clamp_min(1.0)).clamp(1e-6, 1 - 1e-6)
    weight = torch.where(target > 0.5, 1.0 - pos_frac, pos_frac) * frame
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)
