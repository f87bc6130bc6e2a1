"""3D metrics in mm: agreement with monai.metrics, empty-mask policy, the fast path
against the full-array reference (and its memory),
analytic geometry, the slice-wise mode, grid checks and the ``metrics`` CLI."""

import contextlib
import json
import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from monai.metrics.utils import get_edge_surface_distance, get_mask_edges
from scipy import ndimage

from _volumes import save
from sam2_3dmed.cli import main
from sam2_3dmed.data.io import Volume
from sam2_3dmed.errors import InputFileError
from sam2_3dmed.evaluate.metrics import (
    KEYS,
    _bbox,
    _metrics,
    _surface,
    _surface_points,
    check_same_grid,
    compute_metrics,
    compute_metrics_2d,
)

SPACING = (0.8, 0.7, 2.5)  # anisotropic, mm
SHAPE = (40, 44, 20)


def _field(rng, shape, sigma):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / f.std()


def blob_pair(seed, shape=SHAPE, level=0.5):
    """Two overlapping smooth random blobs (Dice ~0.6-0.8), several components each."""
    rng = np.random.default_rng(seed)
    f = _field(rng, shape, (4, 4, 2))
    gt = f > level
    pred = (f + 0.6 * _field(rng, shape, (3, 3, 1.5))) > level
    return pred, gt


def _t(mask):
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()


def monai_metrics(pred, gt, spacing, *tols):
    """MONAI's values; ``nsd`` is a list, one per tolerance in ``tols``."""
    P, G = _t(pred), _t(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MONAI's own surface distances, percentile taken in float64 (see test below)
        _, (d_pg, d_gp), _ = get_edge_surface_distance(P[0, 0], G[0, 0], spacing=spacing, symmetric=True)
        return dict(
            dice=float(compute_dice(P, G, include_background=True)),
            iou=float(compute_iou(P, G, include_background=True)),
            hd95=float(compute_hausdorff_distance(P, G, include_background=True, percentile=95, spacing=spacing)),
            hd95_f64=max(float(torch.quantile(d.double(), 0.95)) for d in (d_pg, d_gp)),
            nsd=[float(compute_surface_dice(P, G, [t], include_background=True, spacing=spacing)) for t in tols],
            assd=float(compute_average_surface_distance(P, G, include_background=True, symmetric=True,
                                                        spacing=spacing)),
        )


def _close(a, b, rtol):
    return abs(a - b) <= rtol * max(abs(b), 1e-12)


# --------------------------------------------------------------------------- MONAI agreement


@pytest.mark.parametrize("seed", range(4))
def test_matches_monai_on_random_blobs(seed):
    pred, gt = blob_pair(seed)
    assert 0.4 < compute_metrics(pred, gt, SPACING, 1.0)["dice"] < 0.95  # a non-trivial pair
    tols = [1.0, 1.6, 2.5]  # 1.6 = 2 voxels on axis 0 and 2.5 = 1 voxel on axis 2: exact ties
    refs = monai_metrics(pred, gt, SPACING, *tols)
    for tol, ref_nsd in zip(tols, refs["nsd"]):
        ours = compute_metrics(pred, gt, SPACING, tol)
        ref = dict(refs, nsd=ref_nsd)
        for key in ("dice", "iou", "nsd", "assd"):
            assert _close(ours[key], ref[key], 1e-6), (key, tol, ours[key], ref[key])
        # MONAI's torch.quantile runs in float32, whose fractional rank q*(n-1) is only good to
        # ~1e-4 of a rank: its HD95 is off by up to ~1e-5 relative. Against MONAI's own
        # distances with the percentile in float64 the agreement is 1e-6.
        assert _close(ours["hd95"], ref["hd95_f64"], 1e-6), (tol, ours["hd95"], ref["hd95_f64"])
        assert _close(ours["hd95"], ref["hd95"], 3e-5), (tol, ours["hd95"], ref["hd95"])
        assert ours["pred_voxels"] == pred.sum() and ours["gt_voxels"] == gt.sum()


def test_masks_touching_the_border_match_monai_and_uncropped():
    # low threshold: blobs fill most of the volume and touch every face of the array
    pred, gt = blob_pair(7, shape=(30, 32, 12), level=-0.3)
    for ax in range(3):
        assert pred.take(0, axis=ax).any() and gt.take(-1, axis=ax).any()
    ours = compute_metrics(pred, gt, SPACING, 2.0)
    ref = monai_metrics(pred, gt, SPACING, 2.0)
    ref["nsd"] = ref["nsd"][0]
    for key in ("dice", "iou", "nsd", "assd"):
        assert _close(ours[key], ref[key], 1e-6), key
    assert _close(ours["hd95"], ref["hd95_f64"], 1e-6)
    assert _metrics(pred, gt, SPACING, 2.0, reference=True) == ours


@pytest.mark.parametrize("seed", range(3))
def test_fast_path_equals_full_array_reference(seed):
    """Slab-wise surfaces + KD-tree distances give exactly the full-array erosion + EDT numbers."""
    small_p, small_g = blob_pair(seed, shape=(20, 22, 8))
    cases = []
    for corner in ((9, 11, 6), (0, 0, 0), (20, 22, 12)):  # inside, and touching the array border
        pred, gt = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
        box = tuple(slice(c, c + n) for c, n in zip(corner, small_p.shape))
        pred[box], gt[box] = small_p, small_g
        cases += [(pred, gt), (gt, pred)]
    stray = cases[0][0].copy()
    stray[0, 0, 0] = True  # a stray voxel in a corner, far from everything else
    cases.append((stray, cases[0][1]))
    for p, g in cases:
        for tol in (0.0, 1.0, 5.0):
            assert _metrics(p, g, SPACING, tol) == _metrics(p, g, SPACING, tol, reference=True)
    for p, g in cases[:2]:  # the same with several slabs per mask (slab seams inside the masks)
        with _small_slabs():
            fast = _metrics(p, g, SPACING, 1.0)
        assert fast == _metrics(p, g, SPACING, 1.0, reference=True)


@contextlib.contextmanager
def _small_slabs():
    import sam2_3dmed.evaluate.metrics as mod
    saved = mod._SLAB_VOXELS, mod._QUERY_BATCH
    mod._SLAB_VOXELS, mod._QUERY_BATCH = 3 * 44 * 20, 37  # slabs of ~3 slices, query batches of 37 points
    try:
        yield
    finally:
        mod._SLAB_VOXELS, mod._QUERY_BATCH = saved


def test_surface_points_equal_full_array_surface():
    pred, gt = blob_pair(3)
    for m in (pred, gt, np.ones((6, 7, 5), bool)):
        ref = np.argwhere(_surface(m))
        assert np.array_equal(_surface_points(m, _bbox(m)), ref)
        with _small_slabs():
            assert np.array_equal(_surface_points(m, _bbox(m)), ref)


def _far_stray_case(shape):
    """An ellipsoid organ, a slightly shifted and resized prediction, and stray blobs at the far corner."""
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    c = [n / 4 for n in shape]
    r = [n / 6 for n in shape]
    gt = (((z[:, None, None] - c[0]) / r[0]) ** 2 + ((y[None, :, None] - c[1]) / r[1]) ** 2
          + ((x[None, None, :] - c[2]) / r[2]) ** 2) <= 1
    pred = (((z[:, None, None] - c[0] - 2) / (r[0] + 1)) ** 2 + ((y[None, :, None] - c[1]) / (r[1] - 2)) ** 2
            + ((x[None, None, :] - c[2] + 1) / r[2]) ** 2) <= 1
    pred[-1, -1, -1] = True  # a stray voxel at the opposite corner
    pred[-4:-2, -6:-3, -3:] = True  # and a small stray blob near it
    return pred, gt


def test_far_stray_voxels_match_full_volume_reference():
    pred, gt = _far_stray_case((64, 72, 40))
    sp = (0.8, 0.7, 2.5)
    for tol in (1.0, 3.0):
        ours = compute_metrics(pred, gt, sp, tol)
        assert ours == _metrics(pred, gt, sp, tol, reference=True)
        # and against an independent full-volume computation, straight from the definitions
        s_p, s_g = _surface(pred), _surface(gt)
        d_pg = ndimage.distance_transform_edt(~s_g, sampling=sp)[s_p]
        d_gp = ndimage.distance_transform_edt(~s_p, sampling=sp)[s_g]
        assert ours["hd95"] == max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
        assert ours["assd"] == (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
        within = np.count_nonzero(d_pg.astype(np.float32) <= np.float32(tol)) + np.count_nonzero(
            d_gp.astype(np.float32) <= np.float32(tol))
        assert ours["nsd"] == within / (d_pg.size + d_gp.size)
        assert ours["dice"] == 2 * np.count_nonzero(pred & gt) / (pred.sum() + gt.sum())
    assert d_pg.max() > 40  # mm: the stray voxels are far from the organ, and they are scored


def test_memory_does_not_scale_with_the_stray_voxels_bounding_box():
    """A far stray voxel used to widen the EDT crop to the whole volume (~50 bytes per voxel)."""
    pred, gt = _far_stray_case((256, 256, 200))
    sp = (0.8, 0.8, 1.5)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        m = compute_metrics(pred, gt, sp, 2.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m["hd95"] > 0 and 0.5 < m["dice"] < 1
    # under one byte per voxel (a few slabs' temporaries and the surface points); the
    # full-volume EDT needed ~50 bytes per voxel here
    assert peak < pred.nbytes, f"peak {peak / 2**20:.1f} MB for a {pred.nbytes / 2**20:.1f} MB mask"


def test_surface_definition():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert _surface(cube).sum() == 26  # all but the centre voxel
    full = np.ones((4, 5, 3), bool)  # voxels on the array border count as surface
    assert _surface(full).sum() == full.size - 2 * 3 * 1
    thin = np.zeros((5, 5, 5), bool)
    thin[1:4, 1:4, 2] = True  # a one-voxel-thick plate is all surface
    assert _surface(thin).sum() == 9
    pred, gt = blob_pair(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e_p, e_g = get_mask_edges(pred, gt, crop=False)
    assert np.array_equal(_surface(pred), e_p) and np.array_equal(_surface(gt), e_g)


def test_nsd_counts_exact_ties():
    sp = (1.1, 0.7, 2.5)
    gt = np.zeros((30, 12, 8), bool)
    gt[5:12, 4:8, 2:6] = True
    pred = np.roll(gt, 3, axis=0)  # faces moved by exactly 3 x 1.1 = 3.3 mm (3.3000000000000003 in float64)
    at = compute_metrics(pred, gt, sp, 3.3)["nsd"]
    assert at > compute_metrics(pred, gt, sp, 3.29)["nsd"]
    assert at == monai_metrics(pred, gt, sp, 3.3)["nsd"][0]


# --------------------------------------------------------------------------- empty masks


def test_empty_mask_policy():
    shape, sp = (10, 12, 6), (0.8, 0.7, 2.5)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp)))
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[3:6, 4:8, 2:4] = True
    both = compute_metrics(empty, empty, sp, 1.0)
    assert both == dict(dice=1.0, iou=1.0, hd95=0.0, nsd=1.0, assd=0.0, pred_voxels=0, gt_voxels=0)
    for p, g in ((empty, some), (some, empty)):
        one = compute_metrics(p, g, sp, 1.0)
        assert one == dict(dice=0.0, iou=0.0, hd95=pytest.approx(diag), nsd=0.0, assd=pytest.approx(diag),
                           pred_voxels=int(p.sum()), gt_voxels=int(g.sum()))
    assert compute_metrics(some, some, sp, 0.0) == dict(dice=1.0, iou=1.0, hd95=0.0, nsd=1.0, assd=0.0,
                                                         pred_voxels=24, gt_voxels=24)


def test_never_nan_on_tiny_and_degenerate_masks():
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 6, size=3))
        p, g = rng.random(shape) < rng.random(), rng.random(shape) < rng.random()
        sp = tuple(rng.uniform(0.3, 3.0, size=3))
        for m in (compute_metrics(p, g, sp, 1.0), compute_metrics_2d(p, g, sp, 1.0, axis=int(rng.integers(3)))):
            assert all(math.isfinite(v) for v in m.values()), m
            assert 0 <= m["dice"] <= 1 and 0 <= m["iou"] <= 1 and 0 <= m["nsd"] <= 1
            assert m["hd95"] >= 0 and m["assd"] >= 0


def test_single_voxels():
    p = np.zeros((6, 6, 6), bool)
    g = p.copy()
    p[1, 1, 1] = g[1, 4, 1] = True
    m = compute_metrics(p, g, (1.0, 0.5, 2.0), 1.5)
    assert m["dice"] == 0 and m["hd95"] == pytest.approx(1.5) and m["assd"] == pytest.approx(1.5)
    assert m["nsd"] == 1.0 and compute_metrics(p, g, (1.0, 0.5, 2.0), 1.49)["nsd"] == 0.0


# --------------------------------------------------------------------------- analytic geometry


def _grid(n, h):
    x = (np.arange(n) - n / 2 + 0.5) * h
    return np.meshgrid(x, x, x, indexing="ij")


@pytest.mark.parametrize("r1, r2", [(4.0, 7.0), (5.0, 6.0)])
def test_concentric_spheres(r1, r2):
    # every point of one sphere is r2 - r1 from the other: HD95 = ASSD = r2 - r1 (within a voxel)
    h = 0.5
    x, y, z = _grid(40, h)
    r = np.sqrt(x**2 + y**2 + z**2)
    m = compute_metrics(r <= r1, r <= r2, (h, h, h), r2 - r1 + h)
    assert abs(m["hd95"] - (r2 - r1)) <= h and abs(m["assd"] - (r2 - r1)) <= h
    assert m["nsd"] == 1.0 and compute_metrics(r <= r1, r <= r2, (h, h, h), r2 - r1 - h)["nsd"] == 0.0


def test_offset_spheres():
    # sphere B = sphere A shifted by d: a point of A at polar angle t (cos t = u, uniform on the
    # sphere) is |sqrt(R^2 + d^2 - 2 R d u) - R| from B; by symmetry both directions agree.
    h, R, d = 0.5, 6.0, 2.0
    x, y, z = _grid(48, h)
    a = x**2 + y**2 + z**2 <= R**2
    b = (x - d) ** 2 + y**2 + z**2 <= R**2
    u = np.linspace(-1, 1, 200001)
    dist = np.abs(np.sqrt(R**2 + d**2 - 2 * R * d * u) - R)
    m = compute_metrics(a, b, (h, h, h), 1.0)
    assert abs(m["hd95"] - np.percentile(dist, 95)) <= h
    assert abs(m["assd"] - dist.mean()) <= h
    assert m["hd95"] <= d + 1e-9  # the largest surface distance is d (up to grid effects)


# --------------------------------------------------------------------------- slice-wise 2D mode


def test_slicewise_mode():
    sp = (2.5, 0.8, 0.7)
    p = np.zeros((4, 30, 32), bool)
    g = p.copy()
    # slice 0: both empty (skipped); slice 1: identical; slice 2: GT only; slice 3: random blobs
    g[1, 5:15, 6:20] = p[1, 5:15, 6:20] = True
    g[2, 10:20, 10:20] = True
    bp, bg = blob_pair(1, shape=(30, 32, 1))
    p[3], g[3] = bp[..., 0], bg[..., 0]
    m = compute_metrics_2d(p, g, sp, 1.0, axis=0)
    assert m["slices"] == 3
    diag = math.hypot(30 * 0.8, 32 * 0.7)
    ref = monai_metrics(bp[..., 0], bg[..., 0], sp[1:], 1.0)
    assert m["dice"] == pytest.approx((1 + 0 + ref["dice"]) / 3, rel=1e-6)
    assert m["nsd"] == pytest.approx((1 + 0 + ref["nsd"][0]) / 3, rel=1e-6)
    assert m["hd95"] == pytest.approx((0 + diag + ref["hd95_f64"]) / 3, rel=1e-6)
    assert m["assd"] == pytest.approx((0 + diag + ref["assd"]) / 3, rel=1e-6)
    # the axis is honoured: slicing along the last axis of the transposed volume is the same
    mt = compute_metrics_2d(np.moveaxis(p, 0, 2), np.moveaxis(g, 0, 2), (0.8, 0.7, 2.5), 1.0, axis=2)
    assert mt == m
    empty = compute_metrics_2d(np.zeros((3, 4, 5)), np.zeros((3, 4, 5)), (1, 1, 1), 1.0)
    assert empty["slices"] == 0 and empty["dice"] == 1.0 and empty["hd95"] == 0.0


# --------------------------------------------------------------------------- argument and grid checks


def test_bad_arguments():
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match="different grids"):
        compute_metrics(a, np.zeros((4, 5, 7), bool), (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(a, a, (1, 1), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(a, a, (1, 0, 1), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        compute_metrics(a, a, (1, 1, 1), -1.0)
    with pytest.raises(ValueError, match="3D"):
        compute_metrics(a[0], a[0], (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.full((4, 5, 6), np.nan), a, (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="axis"):
        compute_metrics_2d(a, a, (1, 1, 1), 1.0, axis=3)


def test_check_same_grid(tmp_path):
    aff = np.diag([0.8, 0.7, 2.5, 1.0])
    data = np.zeros((10, 12, 6), np.float32)
    gt = Volume(data, aff, tmp_path / "gt.nii.gz")
    shifted = aff.copy()
    shifted[0, 3] += 5e-4
    check_same_grid(Volume(data, shifted, tmp_path / "pred.nii.gz"), gt)  # within 1e-3 mm
    shifted[0, 3] += 0.01
    with pytest.raises(InputFileError, match=r"pred\.nii\.gz: .*different grids.*affines differ"):
        check_same_grid(Volume(data, shifted, tmp_path / "pred.nii.gz"), gt)
    scaled = aff.copy()
    scaled[2, 2] = 2.5001  # 1e-4 mm per slice, 5e-4 mm at the far corner: fine
    check_same_grid(Volume(data, scaled, tmp_path / "pred.nii.gz"), gt)
    with pytest.raises(InputFileError, match=r"pred\.nii\.gz: .*different grids: shape"):
        check_same_grid(Volume(data[:, :, :5], aff, tmp_path / "pred.nii.gz"), gt)


# --------------------------------------------------------------------------- CLI


AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])


def _cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_and_table(tmp_path, capsys):
    pred, gt = blob_pair(2)
    p = save(tmp_path / "pred.nii.gz", pred.astype(np.uint8) * 2, AFFINE)  # any value > 0 is foreground
    g = save(tmp_path / "gt.nii.gz", gt.astype(np.uint8), AFFINE)
    code, out, err = _cli(["metrics", str(p), str(g), "--tolerance-mm", "1.6", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["spacing_mm"] == pytest.approx([0.8, 0.7, 2.5]) and res["tolerance_mm"] == 1.6
    ref = compute_metrics(pred, gt, res["spacing_mm"], 1.6)  # the file's (float32) spacing
    assert {k: res[k] for k in KEYS} == ref
    code, out, err = _cli(["metrics", str(p), str(g)], capsys)
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert float(rows["dice"]) == pytest.approx(ref["dice"], abs=1e-4)
    assert float(rows["hd95_mm"]) == pytest.approx(ref["hd95"], abs=1e-3)  # hd95 does not depend on the tolerance


def test_cli_errors_are_one_line(tmp_path, capsys):
    g = save(tmp_path / "gt.nii.gz", np.ones((8, 9, 4), np.uint8), AFFINE)
    moved = AFFINE.copy()
    moved[:3, 3] = [1.0, 0.0, 0.0]
    p = save(tmp_path / "pred.nii.gz", np.ones((8, 9, 4), np.uint8), moved)
    code, out, err = _cli(["metrics", str(p), str(g)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {p}: ") and "different grids" in err and "gt.nii.gz" in err
    small = save(tmp_path / "small.nii.gz", np.ones((8, 9, 3), np.uint8), AFFINE)
    code, out, err = _cli(["metrics", str(small), str(g)], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"error: {small}: ") and "shape" in err
    code, out, err = _cli(["metrics", str(g), str(g), "--tolerance-mm", "-1"], capsys)
    assert code == 1 and err == "error: --tolerance-mm must be a finite number >= 0, got -1.0\n"
    missing = tmp_path / "nope.nii.gz"
    code, out, err = _cli(["metrics", str(missing), str(g), "--json"], capsys)
    assert code == 1 and err == f"error: {missing}: file does not exist\n" and out == ""
