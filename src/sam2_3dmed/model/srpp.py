"""Slice Relative Position Prediction (SRPP), training only.

Each slice's adapted features are global-pooled to a token; a small Transformer encoder
runs over the clip's D tokens WITHOUT positional encoding [ours, decision 2]. Without
positional encoding the encoder is permutation-equivariant, so the order of the tokens
carries no information: any position signal must come from slice content (this is what
the shuffled order of method.md achieves; the test checks the equivariance directly).
Every ordered pair (i, j), i != j, is scored by an MLP on (e_i, e_j, e_i - e_j).

Targets [decision 3]: ``mm`` (default) gives (z_j - z_i) / scale_mm along the slice axis,
robust to varying slice thickness; ``index`` gives the paper's signed index difference.
Both follow clip order, so a reversed clip has targets of opposite sign.
"""

from __future__ import annotations

import torch
from torch import nn


class SRPPHead(nn.Module):
    def __init__(self, dim: int = 256, token_dim: int = 128, layers: int = 2, heads: int = 4, hidden: int = 256):
        super().__init__()
        self.proj = nn.Linear(dim, token_dim)
        layer = nn.TransformerEncoderLayer(
            d_model=token_dim, nhead=heads, dim_feedforward=2 * token_dim, dropout=0.0,
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.pair_mlp = nn.Sequential(nn.Linear(3 * token_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, D, C, H, W) -> predicted relative positions P (B, D, D), P[b, i, j] ~ j - i."""
        tokens = self.proj(feats.mean(dim=(-2, -1)))
        pad = None if valid is None else ~valid.bool()
        e = self.encoder(tokens, src_key_padding_mask=pad)
        d = e.shape[1]
        ei = e[:, :, None, :].expand(-1, -1, d, -1)
        ej = e[:, None, :, :].expand(-1, d, -1, -1)
        return self.pair_mlp(torch.cat([ei, ej, ei - ej], dim=-1)).squeeze(-1)


def srpp_targets(z_mm: torch.Tensor, slice_index: torch.Tensor, mode: str = "mm", scale_mm: float = 10.0) -> torch.Tensor:
    """(B, D) slice positions in clip order -> (B, D, D) targets T[b, i, j] = pos_j - pos_i."""
    if mode == "mm":
        pos = z_mm.float() / scale_mm
    elif mode == "index":
        pos = slice_index.float()
    else:
        raise ValueError(f"unknown SRPP target mode {mode!r}")
    return pos[:, None, :] - pos[:, :, None]


def srpp_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over all ordered pairs i != j of valid slices."""
    b, d, _ = pred.shape
    pair = ~torch.eye(d, dtype=torch.bool, device=pred.device).expand(b, d, d)
    if valid is not None:
        v = valid.bool()
        pair = pair & v[:, :, None] & v[:, None, :]
    if not pair.any():
        return pred.sum() * 0.0
    return ((pred - target) ** 2)[pair].mean()
