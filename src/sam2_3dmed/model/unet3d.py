"""The non-SAM reference: a MONAI 3D U-Net trained and scored by the same pipeline.

``model.arch: unet3d`` (variant ``unet3d``) builds this instead of SAM2-3dMed. It trains
on the same clips (D consecutive prepared slices, fitted to ``model.image_size``, same
augmentation), with the same segmentation loss, schedule, checkpoints and validation, and
is scored by the same ``evaluate``: only the network differs. Clips arrive as SAM2 input
(3 identical channels, ImageNet-normalised); the U-Net reads one channel with the
normalisation undone, i.e. the prepared [0, 1] intensities. Whole volumes are predicted
by Gaussian-weighted sliding windows of D slices (overlap 0.5). It takes no prompts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.slices import IMAGENET_MEAN, IMAGENET_STD, fit_to_square, unfit


class UNet3DBaseline(nn.Module):
    is_unet = True

    def __init__(self, image_size: int, clip_length: int, channels, strides):
        from monai.networks.nets import UNet

        super().__init__()
        self.image_size = int(image_size)
        self.roi_slices = int(clip_length)
        strides = [tuple(int(v) for v in s) for s in strides]
        if len(strides) != len(channels) - 1:
            raise ValueError(f"model.unet_strides needs {len(channels) - 1} entries (one per level after the first), "
                             f"got {len(strides)}")
        self.z_multiple = math.prod(s[0] for s in strides)
        xy = math.prod(s[1] for s in strides), math.prod(s[2] for s in strides)
        if self.image_size % xy[0] or self.image_size % xy[1]:
            raise ValueError(f"model.image_size {image_size} is not divisible by the U-Net's in-plane stride {xy}")
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

    @torch.no_grad()
    def predict_volume(self, image_zyx: np.ndarray, device="cpu", progress=None, stats=None) -> np.ndarray:
        """Probability map (z, y, x) float32 on the prepared grid, like ``predict_prepared``."""
        from monai.inferers import sliding_window_inference

        was_training = self.training
        self.eval()
        try:
            n = int(image_zyx.shape[0])
            t, info = fit_to_square(np.asarray(image_zyx, dtype=np.float32), self.image_size)
            x = t[None, None].to(device)
            roi = (self.roi_slices, self.image_size, self.image_size)
            logits = sliding_window_inference(x, roi, sw_batch_size=1, predictor=self.forward_volume,
                                              overlap=0.5, mode="gaussian")
            prob = torch.sigmoid(logits[0, 0].float()).cpu()
            if progress is not None:
                progress(n, n)
            if stats is not None:
                stats.update(feature_cache_bytes=0, slices=n, steps=0)
            return unfit(prob, info, mode="bilinear").numpy().astype(np.float32, copy=False)
        finally:
            self.train(was_training)
