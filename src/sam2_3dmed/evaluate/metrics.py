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
  (``d_GP``), i.e. ``distance_transform_edt(~surface_G, sampling=spacing)`` read at the
  surface voxels of P; scipy's EDT is exact, so this equals MONAI's KD-tree
  nearest-neighbour distances (``get_surface_distance``). (How it is computed without
  a full-volume EDT: see below.)
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

How it is computed, and why that changes nothing
------------------------------------------------
Memory must not scale with the voxels between a mask and a stray voxel far away: at MSD
size (512 x 512 x 636 voxels) an erosion + EDT over the bounding box of P | G costs about
50 bytes per voxel (the EDT's int64/int32 feature and index arrays and its float64
output), ~8 GB per call once a single stray voxel widens that box to the whole volume. So
no EDT is run; instead:

1. Surfaces, slab by slab: each mask is cut to its *own* bounding box and eroded in slabs
   of a few million voxels along the first axis, each with one extra slice on either
   side (where the box has one), keeping only the slab's own voxels' surface. Every kept
   voxel sees all its face neighbours; beyond the box everything is background, which is
   what ``border_value=0`` assumes (and what the array border means in the definition).
   So the surface voxels are exactly ``mask & ~binary_erosion(mask)`` of the full array;
   they are kept as index coordinates, in C order, as boolean indexing would list them.
2. Distances: a KD-tree (``scipy.spatial.cKDTree``) over G's surface voxel centres in mm
   gives, for each surface voxel of P, its nearest surface voxel of G (and vice versa);
   the distance is then computed from the integer index difference with the same float
   operations, in the same order, as ``distance_transform_edt(~surface_G,
   sampling=spacing)``, i.e. the EDT's value read at that voxel, and the lists are in the
   same order, so sums and percentiles are the same numbers. (Where two different
   surface voxels are exactly equally near, either one gives the same distance.)
3. ``|P & G|`` is counted slab by slab over the overlap of the two bounding boxes.

Memory is a few slabs' temporaries (a few MB) plus ~60 bytes per *surface* voxel, which
grows like the surface area, not the volume; the inputs are read, never copied whole.
The textbook computation (erosion and EDT over the whole array) is kept as
``_metrics(..., reference=True)``; the tests check that both give identical results,
with masks on the array border, far stray voxels and slab seams inside the masks.
A mask that is mostly surface (noise) is the slow case: the KD-tree then holds about as
many points as there are foreground voxels (still less memory than the EDT).

Boundary profile (:func:`boundary_profile`, or ``compute_metrics(..., bands_mm=, percentiles=)``)
--------------------------------------------------------------------------------------------------
Where the errors are, per case:

- **Error voxels by distance band**: the error voxels are ``P xor G`` (false positives and
  false negatives together). Each is given the distance in mm from its centre to the
  nearest *surface voxel of G* (the surface above), i.e. ``distance_transform_edt(
  ~surface_G, sampling=spacing)`` read at the voxel (0 for a false negative on G's
  surface). With band edges ``0 < e_1 < ... < e_k`` (``bands_mm``, default 1 and 3 mm)
  the bands are ``[0, e_1]``, ``(e_1, e_2]``, ..., ``(e_k, inf)``; distances and edges
  are compared after rounding both to float32, as for NSD. Keys ``err_mm_<lo>_<hi>``
  (``err_mm_0_1``, ``err_mm_1_3``, ``err_mm_3_inf``), edges written with ``%g`` and a
  ``p`` for the decimal point (``err_mm_0_1p5``); values are voxel counts (int) that sum
  to ``|P xor G|``.
- **Surface-distance percentiles**: percentiles (numpy's linear interpolation) of the
  pooled surface distances of both directions, ``d_PG`` together with ``d_GP``: the
  same list ASSD averages. Keys ``sd_p<q>`` (``sd_p50``, ..., ``sd_p100``; 100 is the
  maximum), in mm.
- Empty masks, as above: both empty: every count and percentile 0; G empty, P not: every
  error voxel (all of P) in the last band, percentiles = the image diagonal; P empty, G
  not: the false negatives (all of G) binned by their distance to G's surface,
  percentiles = the image diagonal.

Computed like the rest: the error voxels are listed slab by slab (``np.argwhere`` of the
xor inside the bounding box of ``P | G``, about ``_QUERY_BATCH`` voxels per slab) and
looked up in a KD-tree over G's surface points with ``distance_upper_bound`` just above
the last finite edge (a voxel farther away is in the last band whatever its exact
distance, and its search stops early); the distance of each voxel found is computed from
the integer index difference exactly as for the surface distances, so the band edges
compare the numbers the EDT would give. ``compute_metrics`` with bands or percentiles
reuses its surface points, KD-tree and distance lists, and its other keys are the same
numbers as without them. The textbook computation is ``_boundary(..., reference=True)``.

``compute_metrics_2d`` is the slice-wise mode some papers report; it is a different
quantity and must be labelled as such wherever it is shown.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import InputFileError

KEYS = ("dice", "iou", "hd95", "nsd", "assd", "pred_voxels", "gt_voxels")


# --------------------------------------------------------------------------- public API


def compute_metrics(pred, gt, spacing: Sequence[float], tolerance_mm: float,
                    bands_mm: Sequence[float] | None = None, percentiles: Sequence[float] | None = None) -> dict:
    """3D metrics of a binary prediction against binary ground truth, distances in mm.

    ``pred`` and ``gt``: 3D arrays of the same shape (bool, or numeric with nonzero =
    foreground). ``spacing``: voxel size in mm per array axis. ``tolerance_mm``: the NSD
    tolerance. Returns ``{dice, iou, hd95, nsd, assd, pred_voxels, gt_voxels}``; see the
    module docstring for the definitions (MONAI-compatible) and the empty-mask policy.
    With ``bands_mm`` and/or ``percentiles`` (not None) the result also holds the
    :func:`boundary_profile` keys for them (``err_mm_*`` counts, ``sd_p*`` in mm),
    computed from the same surfaces; the other keys do not change.
    Raises ValueError for arrays on different grids or bad spacing/tolerance/bands.
    """
    p, g = _as_masks(pred, gt, ndim=3)
    sp = _check_spacing(spacing, 3)
    tol = _check_tolerance(tolerance_mm)
    edges = None if bands_mm is None else _check_bands(bands_mm)
    qs = None if percentiles is None else _check_percentiles(percentiles)
    return _metrics(p, g, sp, tol, edges=edges, qs=qs)


def boundary_profile(pred, gt, spacing: Sequence[float], bands_mm: Sequence[float] = (1.0, 3.0),
                     percentiles: Sequence[float] = (50, 75, 90, 95, 99, 100)) -> dict:
    """Where the errors are: error voxels by distance to the GT surface, and surface-distance percentiles.

    ``pred``, ``gt``, ``spacing`` as for :func:`compute_metrics`. ``bands_mm``: the band
    edges in mm (positive, distinct; any order). ``percentiles``: in [0, 100]. Returns
    ``{err_mm_0_<e1>: int, ..., err_mm_<ek>_inf: int, sd_p<q>: float, ...}`` (see
    :func:`boundary_keys` and the module docstring): the number of voxels of
    ``pred xor gt`` whose distance to the nearest ground-truth surface voxel lies in each
    band, and the percentiles (mm) of the pooled surface distances of both directions.
    """
    p, g = _as_masks(pred, gt, ndim=3)
    sp = _check_spacing(spacing, 3)
    return _boundary(p, g, sp, _check_bands(bands_mm), _check_percentiles(percentiles))


def boundary_keys(bands_mm: Sequence[float] = (1.0, 3.0),
                  percentiles: Sequence[float] = (50, 75, 90, 95, 99, 100)) -> tuple[list[str], list[str]]:
    """The key names :func:`boundary_profile` returns: (band keys in band order, percentile keys).

    ``boundary_keys([1, 3], [50, 100])`` is ``(["err_mm_0_1", "err_mm_1_3", "err_mm_3_inf"],
    ["sd_p50", "sd_p100"])``; a non-integer edge is written with ``p`` for the point
    (``1.5`` -> ``1p5``). Raises ValueError for bad bands or percentiles, or two values
    that would give the same name.
    """
    return _band_keys(_check_bands(bands_mm)), _percentile_keys(_check_percentiles(percentiles))


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
    from ..data.io import load_nifti_values

    # the files' own dtypes (a uint8 mask stays one byte per voxel, not float32's four)
    pred_img = load_nifti_values(pred_path)
    gt_img = load_nifti_values(gt_path)
    check_same_grid(pred_img, gt_img)
    out = compute_metrics(pred_img.data > 0, gt_img.data > 0, gt_img.spacing, tolerance_mm)
    out.update(spacing_mm=list(gt_img.spacing), tolerance_mm=float(tolerance_mm))
    return out


# --------------------------------------------------------------------------- internals


def _metrics(p: np.ndarray, g: np.ndarray, sp: tuple, tol: float, reference: bool = False,
             edges: tuple | None = None, qs: tuple | None = None) -> dict:
    """Metrics of two boolean masks of equal shape and dimension (2D or 3D).

    ``reference=True`` runs the textbook computation instead (erosion and two EDTs over
    the whole array, ~50 bytes per voxel): slow and memory-hungry, kept for the tests,
    which check that both give the same numbers. ``edges``/``qs`` (checked band edges
    and percentiles, or None): add the boundary-profile keys, from the same surfaces.
    """
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    counts = {"pred_voxels": n_p, "gt_voxels": n_g}
    profile = edges is not None or qs is not None
    if n_p == 0 or n_g == 0:
        if n_p == 0 and n_g == 0:
            out = dict(dice=1.0, iou=1.0, hd95=0.0, nsd=1.0, assd=0.0, **counts)
        else:
            diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp)))
            out = dict(dice=0.0, iou=0.0, hd95=diag, nsd=0.0, assd=diag, **counts)
        if profile:
            out.update(_boundary(p, g, sp, edges, qs, reference=reference))
        return _checked(out)
    box_p, box_g = _bbox(p), _bbox(g)
    if reference:
        inter = int(np.count_nonzero(p & g))
        d_pg, d_gp = _surface_distances_edt(p, g, sp)
    else:
        inter = _count_both(p, g, box_p, box_g)
        s_p, s_g = _surface_points(p, box_p), _surface_points(g, box_g)
        tree_g = cKDTree(s_g * np.asarray(sp, dtype=np.float64)) if profile else None
        d_pg, d_gp = _nearest_distances(s_p, s_g, sp, tree=tree_g), _nearest_distances(s_g, s_p, sp)
    f32 = np.float32(tol)
    within = np.count_nonzero(d_pg.astype(np.float32) <= f32) + np.count_nonzero(d_gp.astype(np.float32) <= f32)
    n_surf = d_pg.size + d_gp.size
    out = dict(
        dice=2.0 * inter / (n_p + n_g),
        iou=inter / (n_p + n_g - inter),
        hd95=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        nsd=within / n_surf,
        assd=float((d_pg.sum() + d_gp.sum()) / n_surf),
        **counts,
    )
    if profile:
        if reference:
            out.update(_boundary(p, g, sp, edges, qs, reference=True))
        else:
            out.update(_boundary(p, g, sp, edges, qs, s_g=s_g, tree_g=tree_g, d=(d_pg, d_gp),
                                 box=_union_box(box_p, box_g)))
    return _checked(out)


def _boundary(p: np.ndarray, g: np.ndarray, sp: tuple, edges: tuple | None, qs: tuple | None,
              reference: bool = False, s_g=None, tree_g=None, d=None, box=None) -> dict:
    """The boundary-profile keys (band counts for ``edges``, percentiles for ``qs``; either
    may be None: no such keys). ``s_g``/``tree_g``/``d``/``box``: G's surface points, their
    KD-tree, (d_PG, d_GP) and the box of P | G, when the caller has them (else computed).
    ``reference=True``: the textbook computation (EDT of ~surface(G) over the whole array).
    """
    out: dict = {}
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    if not reference and n_g and s_g is None:
        s_g = _surface_points(g, _bbox(g))
    if not reference and n_g and tree_g is None:
        tree_g = cKDTree(s_g * np.asarray(sp, dtype=np.float64))
    if edges is not None:
        keys = _band_keys(edges)
        if n_g == 0:  # no surface to be near: every error voxel (all of P) is in the last band
            counts = np.zeros(len(keys), dtype=np.int64)
            counts[-1] = n_p
        elif reference:
            dist = ndimage.distance_transform_edt(~_surface(g), sampling=np.asarray(sp, dtype=np.float64))[p ^ g]
            counts = _bin(dist, edges)
        else:
            if box is None:
                box = _bbox(g) if n_p == 0 else _union_box(_bbox(p), _bbox(g))
            counts = _error_bands(p, g, box, s_g, sp, edges, tree_g)
        out.update({k: int(c) for k, c in zip(keys, counts)})
    if qs is not None:
        if n_p == 0 and n_g == 0:
            vals = [0.0] * len(qs)
        elif n_p == 0 or n_g == 0:
            vals = [math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp)))] * len(qs)
        elif qs:
            if d is None:
                if reference:
                    d = _surface_distances_edt(p, g, sp)
                else:
                    s_p = _surface_points(p, _bbox(p))
                    d = _nearest_distances(s_p, s_g, sp, tree=tree_g), _nearest_distances(s_g, s_p, sp)
            vals = [float(v) for v in np.percentile(np.concatenate(d), list(qs))]
        else:
            vals = []
        out.update({k: float(v) for k, v in zip(_percentile_keys(qs), vals)})
    return out


def _bin(dist: np.ndarray, edges: tuple) -> np.ndarray:
    """Counts per band ``[0, e1], (e1, e2], ..., (ek, inf)`` of float64 distances, compared in float32."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float32), dist.astype(np.float32), side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def _error_bands(p: np.ndarray, g: np.ndarray, box: tuple, s_g: np.ndarray, sp: tuple, edges: tuple,
                 tree=None) -> np.ndarray:
    """Band counts of the voxels of ``p ^ g`` (all inside ``box``) by distance to the points ``s_g``.

    Slab by slab (about ``_QUERY_BATCH`` voxels each). Only the error voxels inside the box
    of ``s_g`` widened by the last edge (plus a voxel) can be that near; they are looked up
    in the KD-tree over ``s_g`` with an upper bound just above the last edge (not found:
    the last band), and the distance of the nearest point is then computed from the
    integer index difference as in :func:`_nearest_distances`. Every other error voxel is
    only counted, into the last band.
    """
    counts = np.zeros(len(edges) + 1, dtype=np.int64)
    sp_ = np.asarray(sp, dtype=np.float64)
    ps, gs = p[box], g[box]
    total = 0
    for lo, hi in _slabs(ps.shape[0], math.prod(ps.shape[1:]), _QUERY_BATCH):
        total += int(np.count_nonzero(ps[lo:hi] ^ gs[lo:hi]))
    if not edges or not total:  # one band, [0, inf): nothing to look up
        counts[-1] = total
        return counts
    if tree is None:
        tree = cKDTree(s_g * sp_)
    # generous: the tree's float distance may differ from the exact one by a few ulps, and a
    # distance just above the edge in float64 can round onto it in float32
    bound = float(edges[-1]) * (1 + 1e-6) + 1e-9
    # a voxel more than `margin` voxels beyond the surface's box along an axis is farther than `bound`
    margin = [int(math.ceil(bound / s)) + 1 for s in sp]
    g_lo, g_hi = s_g.min(axis=0), s_g.max(axis=0) + 1
    near = tuple(slice(max(b.start, int(a) - m), min(b.stop, int(z) + m))
                 for b, a, z, m in zip(box, g_lo, g_hi, margin))
    queried = 0
    if all(b.start < b.stop for b in near):
        offset = np.array([b.start for b in near], dtype=np.int64)
        ps, gs = p[near], g[near]
        n = len(s_g)
        for lo, hi in _slabs(ps.shape[0], math.prod(ps.shape[1:]), _QUERY_BATCH):
            err = ps[lo:hi] ^ gs[lo:hi]
            pts = np.argwhere(err)
            del err
            if not len(pts):
                continue
            pts[:, 0] += lo
            pts += offset
            queried += len(pts)
            for a in range(0, len(pts), _QUERY_BATCH):
                q = pts[a:a + _QUERY_BATCH]
                _, j = tree.query(q * sp_, k=1, distance_upper_bound=bound)
                found = j < n
                counts[-1] += int(len(q) - np.count_nonzero(found))
                if found.any():
                    counts += _bin(_index_distances(s_g[j[found]] - q[found], sp_), edges)
    counts[-1] += total - queried
    return counts


def _union_box(box_p: tuple, box_g: tuple) -> tuple[slice, ...]:
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_p, box_g))


def _edge_name(x: float) -> str:
    return ("%g" % x).replace(".", "p")


def _band_keys(edges: tuple) -> list[str]:
    names = ["0", *(_edge_name(e) for e in edges), "inf"]
    return [f"err_mm_{a}_{b}" for a, b in zip(names[:-1], names[1:])]


def _percentile_keys(qs: tuple) -> list[str]:
    return [f"sd_p{_edge_name(q)}" for q in qs]


def _check_bands(bands) -> tuple[float, ...]:
    try:
        edges = tuple(float(b) for b in bands)
    except (TypeError, ValueError):
        raise ValueError(f"bands_mm must be a list of distances in mm, got {bands!r}") from None
    if not all(math.isfinite(e) and e > 0 for e in edges):
        raise ValueError(f"bands_mm must be positive finite distances in mm, got {bands!r}")
    edges = tuple(sorted(edges))
    names = [_edge_name(e) for e in edges]
    if len(set(names)) != len(names):
        raise ValueError(f"bands_mm must be distinct (as written with %g), got {bands!r}")
    return edges


def _check_percentiles(percentiles) -> tuple[float, ...]:
    try:
        qs = tuple(float(q) for q in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be a list of numbers in [0, 100], got {percentiles!r}") from None
    if not all(math.isfinite(q) and 0 <= q <= 100 for q in qs):
        raise ValueError(f"percentiles must be numbers in [0, 100], got {percentiles!r}")
    names = [_edge_name(q) for q in qs]
    if len(set(names)) != len(names):
        raise ValueError(f"percentiles must be distinct (as written with %g), got {percentiles!r}")
    return qs


# voxels per slab for the slab-wise passes (erosion, intersection): a few MB of temporaries
_SLAB_VOXELS = 1 << 22
# surface points per KD-tree query batch (bounds the query's coordinate/result arrays)
_QUERY_BATCH = 1 << 20


def _slabs(n0: int, plane: int, voxels: int | None = None):
    """(lo, hi) ranges along axis 0 of about ``voxels`` (default ``_SLAB_VOXELS``) voxels each."""
    step = max(1, (_SLAB_VOXELS if voxels is None else voxels) // max(1, plane))
    for lo in range(0, n0, step):
        yield lo, min(lo + step, n0)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background (or out-of-array) face neighbour (full array)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_points(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Index coordinates (N x ndim, int64, C order) of the surface voxels of a non-empty mask.

    The same voxels as ``np.argwhere(_surface(mask))``, computed slab by slab inside the
    mask's bounding box ``box``: a slab is eroded together with one neighbouring slice on
    each side (where the box has one), so every kept voxel sees all its face neighbours;
    beyond the box everything is background, as ``border_value=0`` assumes.
    """
    sub = mask[box]
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    offset = np.array([b.start for b in box], dtype=np.int64)
    n0, plane = sub.shape[0], math.prod(sub.shape[1:])
    parts = []
    for lo, hi in _slabs(n0, plane):
        a, b = max(lo - 1, 0), min(hi + 1, n0)
        slab = sub[a:b]
        surf = ndimage.binary_erosion(slab, structure=structure, border_value=0)[lo - a:hi - a]
        np.logical_not(surf, out=surf)  # in place, in the erosion's own output
        surf &= slab[lo - a:hi - a]
        pts = np.argwhere(surf)
        pts[:, 0] += lo
        parts.append(pts)
        del surf, slab  # before the next slab's erosion: a slab's temporaries at a time
    pts = np.concatenate(parts) if len(parts) > 1 else parts[0]
    pts += offset
    return pts


def _nearest_distances(src: np.ndarray, dst: np.ndarray, sp: tuple, tree=None) -> np.ndarray:
    """mm distance from each point of ``src`` to the nearest point of ``dst`` (index coordinates).

    The nearest point comes from a KD-tree over ``dst`` in mm (``tree``, when the caller
    has built it: ``cKDTree(dst * sp)``); the distance is then computed from the integer
    index difference with the same float operations, in the same order, as
    ``scipy.ndimage.distance_transform_edt(..., sampling=sp)``, so it is the number the
    EDT of ``~surface(dst)`` holds at each ``src`` voxel.
    """
    sp_ = np.asarray(sp, dtype=np.float64)
    if tree is None:
        tree = cKDTree(dst * sp_)
    out = np.empty(len(src), dtype=np.float64)
    for lo in range(0, len(src), _QUERY_BATCH):
        q = src[lo:lo + _QUERY_BATCH]
        _, j = tree.query(q * sp_, k=1)
        out[lo:lo + len(q)] = _index_distances(dst[j] - q, sp_)
    return out


def _index_distances(diff: np.ndarray, sp_: np.ndarray) -> np.ndarray:
    """mm lengths of integer index differences (N x ndim), with the EDT's float operations in its order."""
    d2 = np.zeros(len(diff), dtype=np.float64)
    for ax in range(diff.shape[1]):
        t = diff[:, ax].astype(np.float64)
        t *= sp_[ax]
        t *= t
        d2 += t
    return np.sqrt(d2)


def _surface_distances_edt(p: np.ndarray, g: np.ndarray, sp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Reference (d_PG, d_GP) by EDTs over the whole array: the definition, ~50 B per voxel."""
    sp_ = np.asarray(sp, dtype=np.float64)
    s_p, s_g = _surface(p), _surface(g)
    d_pg = ndimage.distance_transform_edt(~s_g, sampling=sp_)[s_p]
    d_gp = ndimage.distance_transform_edt(~s_p, sampling=sp_)[s_g]
    return d_pg, d_gp


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, as slices."""
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _count_both(p: np.ndarray, g: np.ndarray, box_p: tuple, box_g: tuple) -> int:
    """``count_nonzero(p & g)`` slab by slab over the overlap of the two bounding boxes."""
    box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box_p, box_g))
    if any(b.start >= b.stop for b in box):
        return 0
    ps, gs = p[box], g[box]
    return sum(int(np.count_nonzero(ps[lo:hi] & gs[lo:hi]))
               for lo, hi in _slabs(ps.shape[0], math.prod(ps.shape[1:])))


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
        v = int(v) if k in ("pred_voxels", "gt_voxels", "slices") or k.startswith("err_mm_") else float(v)
        if not math.isfinite(v):  # unreachable by construction; never let NaN/inf out
            raise RuntimeError(f"metric {k} is not finite ({v})")
        res[k] = v
    return res
