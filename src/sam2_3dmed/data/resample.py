"""Resampling on the voxel grid: new grid sizes, their affines, and the resize itself.

Used forward by ``prepare`` (in-plane to the target's spacing, along slices only if
configured) and backward by :func:`sam2_3dmed.data.preprocess.to_original`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resampled_size(shape_xyz, spacing_xyz, target_xy, target_z) -> list[int]:
    target = [
        target_xy[0] if target_xy else spacing_xyz[0],
        target_xy[1] if target_xy else spacing_xyz[1],
        target_z if target_z else spacing_xyz[2],
    ]
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape_xyz, spacing_xyz, target)]


def scale_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Affine of a grid that covers the same field of view with ``new_shape`` voxels."""
    f = np.array(old_shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    s = np.eye(4)
    s[:3, :3] = np.diag(f)
    s[:3, 3] = (f - 1.0) / 2.0  # voxel centres: old index = (new + 0.5) * f - 0.5
    return affine @ s


def resize_zyx(vol: np.ndarray, new_zyx, mode: str) -> np.ndarray:
    """Resize a (z, y, x) float array; in-plane first (2D, batched over slices), then z.

    ``mode`` is "linear", "cubic" or "nearest". align_corners=False keeps the field of
    view, so the forward and backward resizes are consistent with :func:`scale_affine`.
    """
    z, y, x = vol.shape
    nz, ny, nx = new_zyx
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))
    if (ny, nx) != (y, x):
        m2 = {"linear": "bilinear", "cubic": "bicubic", "nearest": "nearest-exact"}[mode]
        kw = {} if mode == "nearest" else {"align_corners": False}
        t = F.interpolate(t[:, None], size=(ny, nx), mode=m2, **kw)[:, 0]
    if nz != z:
        m1 = "nearest-exact" if mode == "nearest" else "linear"
        kw = {} if mode == "nearest" else {"align_corners": False}
        # (z, y, x) -> (y*x, 1, z) so the slice axis is the interpolated one
        flat = t.permute(1, 2, 0).reshape(ny * nx, 1, z)
        t = F.interpolate(flat, size=nz, mode=m1, **kw).reshape(ny, nx, nz).permute(2, 0, 1)
    return t.contiguous().numpy()
