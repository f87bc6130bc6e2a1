"""The U-Net reference's whole-volume inference: Gaussian-weighted sliding windows of D
slices (D = the training clip length, overlap 0.5), MONAI's ``sliding_window_inference``.
No prompts, no memory: each window is predicted on its own."""

from __future__ import annotations

import numpy as np
import torch

from ..data.slices import fit_to_square, unfit
from ..model.unet3d import UNet3DBaseline

#: fraction of a window shared with the next one, and how overlapping windows are blended
OVERLAP, BLEND = 0.5, "gaussian"


@torch.no_grad()
def predict_by_sliding_window(model: UNet3DBaseline, image_zyx: np.ndarray, device="cpu", progress=None,
                              stats: dict | None = None) -> np.ndarray:
    """Probability map (z, y, x) float32 on the prepared grid for a (z, y, x) image in [0, 1]."""
    from monai.inferers import sliding_window_inference

    was_training = model.training
    model.eval()
    try:
        n = int(image_zyx.shape[0])
        t, info = fit_to_square(np.asarray(image_zyx, dtype=np.float32), model.image_size)
        x = t[None, None].to(device)
        roi = (model.roi_slices, model.image_size, model.image_size)
        logits = sliding_window_inference(x, roi, sw_batch_size=1, predictor=model.forward_volume,
                                          overlap=OVERLAP, mode=BLEND)
        prob = torch.sigmoid(logits[0, 0].float()).cpu()
        if progress is not None:
            progress(n, n)
        if stats is not None:
            stats.update(feature_cache_bytes=0, slices=n, steps=0)
        return unfit(prob, info, mode="bilinear").numpy().astype(np.float32, copy=False)
    finally:
        model.train(was_training)
