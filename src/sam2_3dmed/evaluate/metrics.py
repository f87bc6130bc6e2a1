"""Segmentation metrics for binary masks, in 3D and in mm: Dice, IoU, HD95, NSD, ASSD.

Every number that leaves this module is finite (no NaN, no inf); the empty-mask policy
below replaces the cases where the textbook definitions break down.

Definitions (all distances in mm, with ``spacing`` in the array's axis order)
-----------------------------------------------------------------------------
- **Dice** ``2|P & G| / (|P| + |G|)``; **IoU** ``|P & G| / |P | G|`` (voxel counts).
- **Surface** of a mask: its foreground voxels that have at least one *face* neighbour
  (6-connectivity in 3D, 4 in 2D) that is background or lies outside the array, i.e.
  ``mask & ~binary_erosion(mask, cross structure, border_value=0)``. This is exactly
  MONAI's ``get_mask_edges`` without sub-voxel areas (``binary_erosion(m) ^ m``).
- **Surface distances**: for every surface voxel of P, the Euclidean distance in mm from
  its centre to the nearest surface-voxel centre of G (``d_PG``), and vice versa
  (``d_GP``). Computed as ``distance_transform_edt(~surface_G, sampling=spacing)`` read
  at the surface voxels of P; scipy's EDT is exact, so this equals MONAI's KD-tree
  nearest-neighbour distances (``get_surface_distance``).
- **HD95** ``max(percentile95(d_PG), percentile95(d_GP))`` with linear interpolation:
  the maximum of the two *directed* 95th percentiles, which is MONAI's
  ``compute_hausdorff_distance(percentile=95)`` convention (not the 95th percentile of
  the pooled distances), so the values agree.
- **NSD** (normalised surface Dice at tolerance ``tau``):
  ``(#{d_PG <= tau} + #{d_GP <= tau}) / (#surface_P + #surface_G)``, counting surface
  voxels. This is MONAI's ``compute_surface_dice`` default (``use_subvoxels=False``),
  not the area-weighted DeepMind ``surface-distance`` / ``use_subvoxels=True`` variant.
  Distances and tolerance are compared after rounding both to float32, as MONAI does,
  so a grid distance that equals the tolerance mathematically (e.g. ``tau`` = 2 voxels)
  counts as within it whatever the float64 rounding of the EDT.
- **ASSD** ``(sum(d_PG) + sum(d_GP)) / (#surface_P + #surface_G)``: the mean of the pooled
  surface distances, which is what MONAI's
  ``compute_average_surface_distance(symmetric=True)`` computes (it concatenates both
  directions before the mean).

Empty-mask policy (docs/method.md, decision 10)
-----------------------------------------------
- both empty: dice = iou = nsd = 1, hd95 = assd = 0 (a perfect prediction of nothing);
- exactly one empty: dice = iou = nsd = 0, hd95 = assd = the image's physical diagonal
  ``sqrt(sum((shape * spacing) ** 2))`` (MONAI gives NaN or inf here).

Cropping, and why it changes nothing
------------------------------------
Before the erosion and the EDTs both masks are cropped to the bounding box of P | G plus a
margin (``ceil(tau / spacing) + 1`` voxels per axis, clipped to the array). The result is
identical to the uncropped computation, for any margin >= 0:

1. Surfaces: outside the crop everything is background, and the erosion treats voxels
   beyond the crop border as background (``border_value=0``); so a voxel's neighbourhood
   is seen the same inside the crop as in the full array, and beyond the *array* border
   both treat space as background. Every surface voxel lies inside the crop.
2. Distances: the EDT of ``~surface_G`` gives, at each voxel, the distance to the nearest
   zero, i.e. the nearest surface voxel of G. All of G's surface voxels lie inside the
   crop, so the nearest one is found inside the crop and the exact EDT there is the same
   number as in the full array. Distances are only read at P's surface voxels, which
   also lie inside the crop.

So the margin is not needed for exactness; it is kept (at least the tolerance) only as a
guard against a future change (a different surface definition or structure) silently
clipping a surface. The test suite checks cropped == uncropped.

``compute_metrics_2d`` is the slice-wise mode some papers report; it is a different
quantity and must be labelled as such wherever it is shown.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputFileError

KEYS = ("dice", "iou", "hd95", "nsd", "assd", "pred_voxels", "gt_voxels")


# --------------------------------------------------------------------------- public API


def compute_metrics(pred, gt, spacing: Sequence[float], tolerance_mm: float) -> dict:
    """3D metrics of a binary prediction against binary ground truth, distances in mm.

    ``pred`` and ``gt``: 3D arrays of the same shape (bool, or numeric with nonzero =
    foreground). ``spacing``: voxel size in mm per array axis. ``tolerance_mm``: the NSD
    tolerance. Returns ``{dice, iou, hd95, nsd, assd, pred_voxels, gt_voxels}``; see the
    module docstring for the definitions (MONAI-compatible) and the empty-mask policy.
    Raises ValueError for arrays on different grids or bad spacing/tolerance.
    """
    p, g = _as_masks(pred, gt, ndim=3)
    sp = _check_spacing(spacing, 3)
    tol = _check_tolerance(tolerance_mm)
    return _metrics(p, g, sp, tol)


def compute_metrics_2d(pred, gt, spacing: Sequence[float], tolerance_mm: float, axis: int = 0) -> dict:
    """Slice-wise 2D metrics (as some papers report): NOT the 3D numbers.

    Each 2D slice perpendicular to ``axis`` is scored with the same definitions and
    empty-mask policy as :func:`compute_metrics` (in-plane spacing, the slice's own
    diagonal for one-empty slices); dice, iou, hd95, nsd and assd are then averaged over
    the slices where the ground truth or the prediction is non-empty (``slices`` in the
    result says how many). Slices empty in both are skipped; if every slice is, the
    both-empty values are returned with ``slices`` = 0. ``pred_voxels``/``gt_voxels``
    are whole-volume counts.
    """
    p, g = _as_masks(pred, gt, ndim=3)
    sp = _check_spacing(spacing, 3)
    tol = _check_tolerance(tolerance_mm)
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    axis %= 3
    p, g = np.moveaxis(p, axis, 0), np.moveaxis(g, axis, 0)
    sp2 = tuple(s for i, s in enumerate(sp) if i != axis)
    scored = np.flatnonzero(p.any(axis=(1, 2)) | g.any(axis=(1, 2)))
    per_slice = [_metrics(p[k], g[k], sp2, tol) for k in scored]
    out = {k: 1.0 if k in ("dice", "iou", "nsd") else 0.0 for k in KEYS[:5]}
    if per_slice:
        out = {k: float(np.mean([m[k] for m in per_slice])) for k in KEYS[:5]}
    out.update(pred_voxels=int(np.count_nonzero(p)), gt_voxels=int(np.count_nonzero(g)), slices=len(per_slice))
    return _checked(out)


def check_same_grid(pred_img, gt_img, atol_mm: float = 1e-3) -> None:
    """Raise InputFileError (naming the prediction file) unless both volumes share a grid.

    ``pred_img``/``gt_img``: :class:`sam2_3dmed.data.io.Volume` (``data``, ``affine``,
    ``path``). Same shape is required, and every corner voxel of the grid must land
    within ``atol_mm`` of the same world point under both affines. A prediction on
    another grid is an error, never silently resampled.
    """
    ps, gs = tuple(pred_img.data.shape), tuple(gt_img.data.shape)
    name = getattr(gt_img.path, "name", str(gt_img.path))
    if ps != gs:
        raise InputFileError(
            f"prediction and ground truth ({name}) are on different grids: shape {ps} vs {gs}; "
            "resample the prediction onto the ground-truth grid",
            pred_img.path,
        )
    diff = np.asarray(pred_img.affine, dtype=np.float64) - np.asarray(gt_img.affine, dtype=np.float64)
    corners = np.array([[*(c * (n - 1) for c, n in zip(bits, ps)), 1.0]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64).T  # 4 x 8
    worst = float(np.linalg.norm((diff @ corners)[:3], axis=0).max())
    if not worst <= atol_mm:
        raise InputFileError(
            f"prediction and ground truth ({name}) are on different grids: affines differ by up to "
            f"{worst:.3g} mm at a corner voxel (tolerance {atol_mm:g} mm); "
            "resample the prediction onto the ground-truth grid",
            pred_img.path,
        )


def metrics_from_files(pred_path, gt_path, tolerance_mm: float) -> dict:
    """Load two NIfTI masks (value > 0 is foreground), check the grid, return 3D metrics.

    The spacing is the column norms of the ground truth's affine, in array axis order.
    Returns the :func:`compute_metrics` dict plus ``spacing_mm`` and ``tolerance_mm``.
    """
    from ..data.io import load_nifti

    pred_img = load_nifti(pred_path)
    gt_img = load_nifti(gt_path)
    check_same_grid(pred_img, gt_img)
    out = compute_metrics(pred_img.data > 0, gt_img.data > 0, gt_img.spacing, tolerance_mm)
    out.update(spacing_mm=list(gt_img.spacing), tolerance_mm=float(tolerance_mm))
    return out


# --------------------------------------------------------------------------- internals


def _metrics(p: np.ndarray, g: np.ndarray, sp: tuple, tol: float, crop: bool = True) -> dict:
    """Metrics of two boolean masks of equal shape and dimension (2D or 3D)."""
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    counts = {"pred_voxels": n_p, "gt_voxels": n_g}
    if n_p == 0 and n_g == 0:
        return _checked(dict(dice=1.0, iou=1.0, hd95=0.0, nsd=1.0, assd=0.0, **counts))
    if n_p == 0 or n_g == 0:
        diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp)))
        return _checked(dict(dice=0.0, iou=0.0, hd95=diag, nsd=0.0, assd=diag, **counts))
    if crop:
        margin = [int(math.ceil(tol / s)) + 1 for s in sp]
        box = _union_box(p, g, margin)
        p, g = p[box], g[box]
    inter = int(np.count_nonzero(p & g))
    d_pg, d_gp = _surface_distances(p, g, sp)
    f32 = np.float32(tol)
    within = np.count_nonzero(d_pg.astype(np.float32) <= f32) + np.count_nonzero(d_gp.astype(np.float32) <= f32)
    n_surf = d_pg.size + d_gp.size
    return _checked(dict(
        dice=2.0 * inter / (n_p + n_g),
        iou=inter / (n_p + n_g - inter),
        hd95=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        nsd=within / n_surf,
        assd=float((d_pg.sum() + d_gp.sum()) / n_surf),
        **counts,
    ))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background (or out-of-array) face neighbour."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(p: np.ndarray, g: np.ndarray, sp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(d_PG, d_GP): mm distances from each surface voxel of one mask to the other's surface."""
    sp_ = np.asarray(sp, dtype=np.float64)
    s_p, s_g = _surface(p), _surface(g)
    d_pg = ndimage.distance_transform_edt(~s_g, sampling=sp_)[s_p]
    d_gp = ndimage.distance_transform_edt(~s_p, sampling=sp_)[s_g]
    return d_pg, d_gp


def _union_box(p: np.ndarray, g: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of p | g (both non-empty), grown by ``margin`` voxels, clipped."""
    union = p | g
    box = []
    for ax, (n, m) in enumerate(zip(union.shape, margin)):
        hit = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != ax)))
        box.append(slice(max(int(hit[0]) - m, 0), min(int(hit[-1]) + 1 + m, n)))
    return tuple(box)


def _as_masks(pred, gt, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    for name, a in (("pred", p), ("gt", g)):
        if a.ndim != ndim:
            raise ValueError(f"{name} must be a {ndim}D mask, got shape {a.shape}")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt are on different grids: shapes {p.shape} and {g.shape}")
    return _to_bool(p, "pred"), _to_bool(g, "gt")


def _to_bool(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN/inf values")
    return a != 0


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be {ndim} numbers in mm, got {spacing!r}") from None
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive finite numbers in mm, got {spacing!r}")
    return sp


def _check_tolerance(tol) -> float:
    t = float(tol)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tol!r}")
    return t


def _checked(out: dict) -> dict:
    """Plain Python numbers, and a hard guarantee that nothing non-finite leaves."""
    res = {}
    for k, v in out.items():
        v = int(v) if k in ("pred_voxels", "gt_voxels", "slices") else float(v)
        if not math.isfinite(v):  # unreachable by construction; never let NaN/inf out
            raise RuntimeError(f"metric {k} is not finite ({v})")
        res[k] = v
    return res
