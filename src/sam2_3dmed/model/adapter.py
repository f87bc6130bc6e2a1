"""Trainable slice adapter [ours, method.md decision 1].

The SAM2 image encoder is frozen, so heads that read its raw output could never change
segmentation. A small residual conv adapter sits on the encoder's lowest-resolution
features; SRPP, BD and memory attention all read the adapted features. The last conv of
each block is zero-initialised, so at step 0 the adapter is the identity and a
pretrained SAM2 behaves exactly as before.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int, groups: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.norm = nn.GroupNorm(groups, hidden)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.norm(self.conv1(x))))


class SliceAdapter(nn.Module):
    def __init__(self, dim: int = 256, hidden: int = 256, blocks: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*[_Block(dim, hidden) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        return self.blocks(x)
