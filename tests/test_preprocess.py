"""Forward preprocessing and its inverse: geometry must round-trip exactly."""

import nibabel as nib
import numpy as np
import pytest

from sam2_3dmed.data.preprocess import (
    CaseGeometry,
    bbox_with_margin,
    from_ras,
    prepare_arrays,
    to_original,
    to_ras,
)
from sam2_3dmed.data.resample import resize_zyx

from _volumes import ellipsoid_case, oblique_affine

PERMS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "permuted_PLS": np.array([[0, -1.0, 0], [-1.0, 0, 0], [0, 0, 1.0]]),
    "slice_first_SRA": np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]),
}

KW = dict(hu_window=[-160, 240], crop_margin_mm=10, crop_to_body=True, body_threshold_hu=-500)


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("layout", list(PERMS))
def test_reorientation_roundtrip_is_exact(layout):
    aff = oblique_affine(perm_flip=PERMS[layout], angle=0.0)
    data = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    ras, ras_aff = to_ras(data, aff)
    assert "".join(nib.aff2axcodes(ras_aff)) == "RAS"
    # every voxel keeps its world position
    idx = np.array([1, 2, 3])
    world = aff @ np.r_[idx, 1]
    ras_idx = np.linalg.solve(ras_aff, world)[:3].round().astype(int)
    assert ras[tuple(ras_idx)] == data[tuple(idx)]
    assert np.array_equal(from_ras(ras, aff), data)


@pytest.mark.parametrize("layout", list(PERMS))
@pytest.mark.parametrize("target,slice_spacing", [((0.9, 0.9), None), ((1.2, 1.2), 1.5), ((0.5, 0.5), None)])
def test_label_roundtrip_dice(layout, target, slice_spacing):
    shape = (150, 140, 40) if layout != "slice_first_SRA" else (40, 150, 140)
    spacing = (0.7, 0.74, 3.0) if layout != "slice_first_SRA" else (3.0, 0.7, 0.74)
    aff = oblique_affine(spacing=spacing, perm_flip=PERMS[layout])
    img, lab, aff = ellipsoid_case(shape=shape, affine=aff)
    p = prepare_arrays(img, lab, aff, spacing_mm=target, slice_spacing_mm=slice_spacing, **KW)
    back = to_original(p.label, p.geometry)
    assert back.shape == lab.shape
    assert dice(back, lab) >= 0.99


def test_prepared_grid_is_canonical_and_world_consistent():
    aff = oblique_affine(perm_flip=PERMS["permuted_PLS"])
    img, lab, aff = ellipsoid_case(affine=aff)
    p = prepare_arrays(img, lab, aff, spacing_mm=(0.9, 0.9), slice_spacing_mm=None, **KW)
    g = p.geometry
    assert g.original_axcodes == "PLS"
    assert "".join(nib.aff2axcodes(np.array(g.prepared_affine))) == "RAS"
    np.testing.assert_allclose(g.resampled_spacing[:2], [0.9, 0.9], rtol=0.02)
    assert g.resampled_spacing[2] == pytest.approx(3.0)
    # the label's centroid lands at the same world position through both affines
    def world_centroid(mask_xyz, affine):
        idx = np.argwhere(mask_xyz).mean(axis=0)
        return (np.asarray(affine) @ np.r_[idx, 1])[:3]

    c_orig = world_centroid(lab > 0, aff)
    c_prep = world_centroid(p.label.transpose(2, 1, 0) > 0, g.prepared_affine)
    np.testing.assert_allclose(c_prep, c_orig, atol=0.5)


def test_window_scaling_and_crop():
    img, lab, aff = ellipsoid_case(affine=oblique_affine(angle=0.0))
    p = prepare_arrays(img, lab, aff, spacing_mm=None, slice_spacing_mm=None, **{**KW, "crop_margin_mm": 2.0})
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    # the body is [10:-10] in x and y; 2 mm margin at 0.7/0.74 mm is 3 voxels each side
    assert p.image.shape[2] == img.shape[0] - 20 + 6 and p.image.shape[1] == img.shape[1] - 20 + 6
    assert p.label.sum() == lab.sum()  # no resampling: identical voxels kept
    assert np.median(p.hu_fg) == pytest.approx(110, abs=5)


def test_no_crop_keeps_whole_grid():
    img, lab, aff = ellipsoid_case(affine=oblique_affine(angle=0.0))
    p = prepare_arrays(img, lab, aff, spacing_mm=None, slice_spacing_mm=None,
                       **{**KW, "crop_to_body": False})
    assert p.image.shape == img.shape[::-1]


def test_empty_label_is_legal():
    img, lab, aff = ellipsoid_case(affine=oblique_affine(angle=0.0))
    p = prepare_arrays(img, np.zeros_like(lab), aff, spacing_mm=(0.9, 0.9), slice_spacing_mm=None, **KW)
    assert p.label.sum() == 0
    assert to_original(p.label, p.geometry).sum() == 0


def test_probability_inverse_and_shape_check():
    img, lab, aff = ellipsoid_case()
    p = prepare_arrays(img, lab, aff, spacing_mm=(0.9, 0.9), slice_spacing_mm=None, **KW)
    prob = to_original(p.label.astype(np.float32) * 0.8, p.geometry, kind="prob")
    assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 0.8 + 1e-6
    with pytest.raises(ValueError):
        to_original(p.label[:-1], p.geometry)


def test_geometry_serialises():
    img, lab, aff = ellipsoid_case()
    g = prepare_arrays(img, lab, aff, spacing_mm=(0.9, 0.9), slice_spacing_mm=None, **KW).geometry
    assert CaseGeometry.from_dict(g.to_dict()) == g


def test_resize_nearest_preserves_values_and_identity():
    vol = np.random.default_rng(0).integers(0, 3, size=(4, 10, 12)).astype(np.float32)
    assert np.array_equal(resize_zyx(vol, (4, 10, 12), "linear"), vol)
    up = resize_zyx(vol, (8, 20, 24), "nearest")
    assert set(np.unique(up)) <= {0.0, 1.0, 2.0}


def test_bbox_with_margin_clips_to_volume():
    m = np.zeros((10, 10, 10), bool)
    m[2:4, 5:6, 8:10] = True
    start, stop = bbox_with_margin(m, (1, 2, 3))
    assert start == [1, 3, 5] and stop == [5, 8, 10]
    assert bbox_with_margin(np.zeros((3, 4, 5), bool), (1, 1, 1)) == ([0, 0, 0], [3, 4, 5])


def _reference_prepare(image, label, affine, spacing_mm, slice_spacing_mm, hu_window, crop_margin_mm,
                       crop_to_body, body_threshold_hu, image_interpolation="linear",
                       label_interpolation="linear", target_labels=(1,), rng=None):
    """The forward chain as whole-volume float32 arithmetic (the code before slab-wise processing)."""
    from sam2_3dmed.data.preprocess import _sample
    from sam2_3dmed.data.resample import resampled_size, scale_affine

    ras_img, ras_affine = to_ras(image, affine)
    ras_lab, _ = to_ras(label, affine)
    sp = [float(s) for s in np.linalg.norm(ras_affine[:3, :3], axis=0)]
    new_xyz = resampled_size(list(ras_img.shape), sp, spacing_mm, slice_spacing_mm)
    res_sp = np.linalg.norm(scale_affine(ras_affine, ras_img.shape, new_xyz)[:3, :3], axis=0)
    img = np.ascontiguousarray(ras_img.transpose(2, 1, 0), dtype=np.float32)
    mask = np.isin(ras_lab.transpose(2, 1, 0), list(target_labels)).astype(np.float32)
    if tuple(new_xyz[::-1]) != img.shape:
        img = resize_zyx(img, new_xyz[::-1], image_interpolation, chunk_voxels=1 << 40)
        mask = (resize_zyx(mask, new_xyz[::-1], "nearest", chunk_voxels=1 << 40) if label_interpolation == "nearest"
                else resize_zyx(mask, new_xyz[::-1], "linear", chunk_voxels=1 << 40) >= 0.5)
    mask = mask.astype(bool)
    body = img > body_threshold_hu if crop_to_body else np.ones_like(mask)
    start, stop = ([0, 0, 0], list(img.shape)) if not crop_to_body else bbox_with_margin(
        body | mask, [int(np.ceil(crop_margin_mm / s)) for s in res_sp[::-1]])
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    hu_body, hu_fg = _sample(img[sl][body[sl]], rng), _sample(img[sl][mask[sl]], rng)
    lo, hi = hu_window
    return ((np.clip(img[sl], lo, hi) - lo) / (hi - lo)).astype(np.float32), mask[sl].astype(np.uint8), hu_body, hu_fg


@pytest.mark.parametrize("chunk", [1, 5000])
@pytest.mark.parametrize("spacing,slice_spacing,interp,crop,radii", [
    (None, None, "nearest", True, (25, 18, 30)), ((0.9, 0.9), None, "linear", True, (25, 18, 30)),
    ((1.2, 0.8), 2.2, "nearest", True, (8, 6, 9)), ((0.6, 0.6), 1.7, "linear", False, (25, 18, 30))])
def test_slab_wise_prepare_is_bit_identical_to_whole_volume(monkeypatch, chunk, spacing, slice_spacing, interp,
                                                            crop, radii):
    """Slabs of one slice (chunk 1) or a few: the same bits as whole-volume arithmetic,
    including the HU samples (both sampling branches: > and < 10000 foreground voxels)."""
    from sam2_3dmed.data import resample

    img, lab, aff = ellipsoid_case(shape=(90, 80, 24), affine=oblique_affine(angle=0.0), radii_mm=radii)
    img, lab = np.rint(img).astype(np.int16), lab.astype(np.uint8)  # as on disk: int16 HU, uint8 labels
    lab[lab > 0] = np.where(np.arange(int((lab > 0).sum())) % 3 == 0, 2, 1)  # two label values merged
    kw = dict(spacing_mm=spacing, slice_spacing_mm=slice_spacing, hu_window=[-160, 240], crop_margin_mm=5,
              crop_to_body=crop, body_threshold_hu=-500, label_interpolation=interp, target_labels=(1, 2))
    ref_rng = np.random.default_rng(3)
    want = _reference_prepare(img, lab, aff, rng=ref_rng, **kw)
    monkeypatch.setattr(resample, "CHUNK_VOXELS", chunk)
    rng = np.random.default_rng(3)
    got = prepare_arrays(img, lab, aff, rng=rng, **kw)  # int16 in: converted to float32 slab by slab
    assert (want[3].size < 10000) == (radii[0] < 10)  # both branches of the HU sampling are covered
    for a, b in zip(want, (got.image, got.label, got.hu_body, got.hu_fg)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert rng.bit_generator.state == ref_rng.bit_generator.state  # the same draws were made
    half = prepare_arrays(img, lab, aff, rng=np.random.default_rng(3), image_dtype=np.float16, **kw).image
    assert half.dtype == np.float16 and np.array_equal(half, want[0].astype(np.float16))


def test_resize_zyx_reads_any_dtype_and_thresholds_slab_wise():
    vol = (np.random.default_rng(1).random((6, 9, 11)) > 0.5).astype(np.uint8)
    ref = resize_zyx(vol.astype(np.float32), (4, 13, 7), "linear", chunk_voxels=1 << 40)
    assert np.array_equal(resize_zyx(vol, (4, 13, 7), "linear", chunk_voxels=1), ref)
    assert np.array_equal(resize_zyx(vol, (4, 13, 7), "linear", threshold=0.5, chunk_voxels=7), ref >= 0.5)
    near = resize_zyx(vol, (9, 5, 20), "nearest", out_dtype=bool, chunk_voxels=3)
    assert near.dtype == bool and np.array_equal(near, resize_zyx(vol, (9, 5, 20), "nearest") != 0)
