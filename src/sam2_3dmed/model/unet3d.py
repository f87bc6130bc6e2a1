"""The non-SAM reference: a MONAI 3D U-Net trained and scored by the same pipeline.

``model.arch: unet3d`` (variant ``unet3d``) builds this instead of SAM2-3dMed. It trains
on the same clips (D consecutive prepared slices, fitted to ``model.image_size``, same
augmentation), with the same segmentation loss, schedule, checkpoints and validation, and
is scored by the same ``evaluate``: only the network differs. Clips arrive as SAM2 input
(3 identical channels, ImageNet-normalised); the U-Net reads one channel with the
normalisation undone, i.e. the prepared [0, 1] intensities. Whole volumes are predicted
by Gaussian-weighted sliding windows of D slices (``infer/sliding_window.py``). It takes no prompts.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..data.slices import IMAGENET_MEAN, IMAGENET_STD


class UNet3DBaseline(nn.Module):
    accepts_prompts = False  # the model interface (model/factory.py)
    inference = "sliding_window"

    def __init__(self, image_size: int, clip_length: int, channels, strides):
        from monai.networks.nets import UNet

        super().__init__()
        self.image_size = int(image_size)
        self.roi_slices = int(clip_length)
        # geometry (strides per level, image size divisible by them) is checked with the config
        strides = [tuple(int(v) for v in s) for s in strides]
        self.z_multiple = math.prod(s[0] for s in strides)
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(int(c) for c in channels),
                        strides=strides, num_res_units=1)

    def forward_volume(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, S, S) intensities in [0, 1] -> logits of the same shape (any D)."""
        d = x.shape[2]
        pad = (-d) % self.z_multiple
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return self.net(x)[:, :, :d]

    def forward_clip(self, images: torch.Tensor, key_index=None, prompt=None) -> dict:
        """images (B, D, 3, S, S) SAM2 input -> mask_logits (B, D, S, S); no other heads."""
        x = images[:, :, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        logits = self.forward_volume(x[:, None])[:, 0]
        return {"mask_logits": logits, "obj_logits": None, "srpp": None, "bd_logits": None}
