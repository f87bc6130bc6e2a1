"""Resampling on the voxel grid: new grid sizes, their affines, and the resize itself.

Used forward by ``prepare`` (in-plane to the target's spacing, along slices only if
configured) and backward by :func:`sam2_3dmed.data.preprocess.to_original`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: voxels per slab in slab-wise processing (16 MB of float32); data/preprocess.py uses it too
CHUNK_VOXELS = 1 << 22


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


def _slabs(n: int, per_item: int, budget: int):
    """(start, stop) ranges over ``n`` items, about ``budget`` voxels at a time."""
    step = max(1, budget // max(1, per_item))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def resize_zyx(vol, new_zyx, mode: str, *, out_dtype=np.float32, threshold: float | None = None,
               chunk_voxels: int | None = None) -> np.ndarray:
    """Resize a (z, y, x) array; in-plane first (2D, batched over slices), then z.

    ``mode`` is "linear", "cubic" or "nearest". align_corners=False keeps the field of
    view, so the forward and backward resizes are consistent with :func:`scale_affine`.

    ``vol`` may be any (z, y, x) array or view of any dtype (or an object with ``shape``
    that returns arrays for ``vol[a:b]``): it is read and converted to float32 a slab of
    slices at a time, so the input is never copied whole. Slices are independent in the
    in-plane pass and (y, x) columns in the z pass, so the slab-wise result is the same as
    resizing the whole volume at once. The result is ``out_dtype`` (cast from float32), or
    bool ``value >= threshold`` when ``threshold`` is given; a float32 intermediate of the
    in-plane-resized size exists only when z is resized too.
    """
    z, y, x = vol.shape
    nz, ny, nx = (int(n) for n in new_zyx)
    chunk_voxels = chunk_voxels or CHUNK_VOXELS
    kw = {} if mode == "nearest" else {"align_corners": False}

    def finish(a: np.ndarray) -> np.ndarray:
        return a >= threshold if threshold is not None else a.astype(out_dtype, copy=False)

    final = np.dtype(bool) if threshold is not None else np.dtype(out_dtype)
    along_z = nz != z
    mid = np.empty((z, ny, nx), dtype=np.float32 if along_z else final)
    for a, b in _slabs(z, max(y * x, ny * nx), chunk_voxels):
        t = torch.from_numpy(np.ascontiguousarray(vol[a:b], dtype=np.float32))
        if (ny, nx) != (y, x):
            m2 = {"linear": "bilinear", "cubic": "bicubic", "nearest": "nearest-exact"}[mode]
            t = F.interpolate(t[:, None], size=(ny, nx), mode=m2, **kw)[:, 0]
        mid[a:b] = t.numpy() if along_z else finish(t.numpy())
    if not along_z:
        return mid
    m1 = "nearest-exact" if mode == "nearest" else "linear"
    out = np.empty((nz, ny, nx), dtype=final)
    for a, b in _slabs(ny, nx * max(z, nz), chunk_voxels):
        # (z, rows, x) -> (rows*x, 1, z) so the slice axis is the interpolated one
        flat = torch.from_numpy(mid[:, a:b]).permute(1, 2, 0).reshape((b - a) * nx, 1, z)
        r = F.interpolate(flat, size=nz, mode=m1, **kw).reshape(b - a, nx, nz).permute(2, 0, 1)
        out[:, a:b] = finish(r.numpy())
    return out
