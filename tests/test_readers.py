"""read_image (NIfTI, NRRD, MetaImage, DICOM series), write_nifti_like and the test writers."""

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from _volumes import oblique_affine, save
from sam2_3dmed.data.io import Volume, load_nifti
from sam2_3dmed.data.readers import read_image, write_dicom_series, write_nifti_like, write_sitk
from sam2_3dmed.errors import InputFileError

FLIP_XY = [[-1, 0, 0], [0, -1, 0], [0, 0, 1]]  # an LPS-like grid
PERMUTED = [[0, 0, 1], [1, 0, 0], [0, -1, 0]]  # sagittal-ish: i along z, j along x, k along -y


@pytest.mark.parametrize("perm_flip", [FLIP_XY, PERMUTED], ids=["flip_xy", "permuted"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sitk_round_trip_matches_nifti(tmp_path, perm_flip, suffix):
    aff = oblique_affine(perm_flip=perm_flip)
    data = np.random.default_rng(1).normal(size=(9, 8, 7)).astype(np.float32)
    got = read_image(write_sitk(data, aff, tmp_path / f"img{suffix}"))
    ref = load_nifti(save(tmp_path / "img.nii.gz", data, aff))
    assert got.data.dtype == np.float32 and np.array_equal(got.data, data)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    assert got.axcodes == ref.axcodes
    assert np.array_equal(read_image(tmp_path / "img.nii.gz").data, data)  # NIfTI goes through load_nifti


@pytest.mark.parametrize("tilt_x", [0.0, 0.3], ids=["axial_tilted", "double_oblique"])
def test_dicom_series_round_trip_ignores_file_order(tmp_path, tilt_x):
    aff = oblique_affine(spacing=(0.7, 0.8, 2.5), angle=0.1)
    c, s = np.cos(tilt_x), np.sin(tilt_x)
    aff[:3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ aff[:3]  # also tilt the slice normal
    data = np.random.default_rng(2).integers(-1024, 3000, (32, 28, 6)).astype(np.int16)
    paths = write_dicom_series(data, aff, tmp_path / "series")
    for k, p in enumerate(paths):  # lexical order now runs against slice position
        p.rename(p.with_name(f"slice_{len(paths) - k:02d}.dcm"))
    vol = read_image(tmp_path / "series")
    assert vol.data.shape == data.shape and np.array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-3)
    r = sitk.ImageFileReader()
    r.SetFileName(str(tmp_path / "series" / "slice_06.dcm"))  # k = 0
    r.ReadImageInformation()
    assert [float(v) for v in r.GetMetaData("0028|0030").split("\\")] == pytest.approx([0.8, 0.7])  # row\col
    assert r.GetMetaData("0008|0060").strip() == "CT"


def _one_line_error(path, *args, **kwargs):
    with pytest.raises(InputFileError) as info:
        read_image(path, *args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and Path(path).name in msg
    return msg


def test_missing_and_unknown_files(tmp_path):
    assert "does not exist" in _one_line_error(tmp_path / "nope.nrrd")
    assert ".mha" in _one_line_error(tmp_path / "nope.nii.gz")  # lists the supported formats
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    msg = _one_line_error(tmp_path / "scan.png")
    assert "unsupported" in msg and "NRRD" in msg and "DICOM" in msg
    (tmp_path / "a.dcm").write_bytes(b"")
    assert "folder" in _one_line_error(tmp_path / "a.dcm")


@pytest.mark.parametrize("name,compress", [("cut.nrrd", True), ("cut.nrrd", False), ("cut.mha", False)])
def test_truncated_file(tmp_path, name, compress):
    path = write_sitk(np.zeros((20, 20, 10), np.float32) + 3, np.eye(4), tmp_path / name, compress)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert "cannot read" in _one_line_error(path)


def test_bad_contents(tmp_path):
    assert "2D" in _one_line_error(write_sitk(np.zeros((5, 4)), np.eye(4), tmp_path / "flat.nrrd"))
    vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vec.nrrd"))
    assert "components" in _one_line_error(tmp_path / "vec.nrrd")
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    assert "1 NaN" in _one_line_error(write_sitk(data, np.eye(4), tmp_path / "nan.mha"))
    flat = write_sitk(np.zeros((4, 4, 4), np.int16), np.eye(4), tmp_path / "flat.mha", compress=False)
    flat.write_bytes(flat.read_bytes().replace(b"= -1 0 0 0 -1 0 0 0 1", b"= 1 0 0 1 0 0 0 0 1"))
    assert "determinant is 0" in _one_line_error(flat)  # singular direction
    four = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False)  # 4D, 2 time points
    sitk.WriteImage(four, str(tmp_path / "four.nrrd"))
    assert "4D" in _one_line_error(tmp_path / "four.nrrd")


def test_trailing_singleton_axis_is_dropped(tmp_path):
    img = sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5), isVector=False)
    sitk.WriteImage(img, str(tmp_path / "one.nrrd"))
    assert read_image(tmp_path / "one.nrrd").data.shape == (5, 4, 3)


def test_dicom_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    assert "no DICOM series" in _one_line_error(empty)

    two = tmp_path / "two"
    data = np.zeros((6, 5, 3), np.int16)
    write_dicom_series(data, np.eye(4), two, series_uid="1.2.826.0.1.11")
    write_dicom_series(data + 1, np.eye(4), two, series_uid="1.2.826.0.1.22")
    msg = _one_line_error(two)
    assert "1.2.826.0.1.11" in msg and "1.2.826.0.1.22" in msg and "--series-id" in msg
    assert "1.2.826.0.1.33" in _one_line_error(two, series_id="1.2.826.0.1.33")
    assert read_image(two, series_id="1.2.826.0.1.22").data.max() == 1

    gap = tmp_path / "gap"
    paths = write_dicom_series(np.zeros((6, 5, 5), np.int16), np.eye(4), gap)
    paths[2].unlink()  # a missing slice
    assert "unevenly spaced" in _one_line_error(gap)


def test_write_nifti_like(tmp_path):
    aff = oblique_affine(perm_flip=PERMUTED)
    ref = load_nifti(save(tmp_path / "ref.nii.gz", np.zeros((7, 6, 5), np.int16), aff))
    label = np.zeros((7, 6, 5), np.int64)
    label[2:4, 1:3, 0:2] = 1
    out = write_nifti_like(label, ref, tmp_path / "out" / "pred.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8 and img.shape == ref.data.shape
    assert np.array_equal(img.affine, ref.affine)
    np.testing.assert_allclose(img.get_qform(), ref.affine, atol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    assert np.array_equal(np.asarray(img.dataobj), label)

    with pytest.raises(ValueError, match="shape"):
        write_nifti_like(label[:, :, :4], ref, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()
    assert sorted(os.listdir(tmp_path)) == ["out", "ref.nii.gz"]  # no temporary left behind
    assert sorted(os.listdir(tmp_path / "out")) == ["pred.nii.gz"]


def test_write_nifti_like_from_dicom_reference(tmp_path):
    aff = oblique_affine(spacing=(0.7, 0.8, 2.5))
    ref = read_image(write_dicom_series(np.zeros((8, 7, 3)), aff, tmp_path / "s")[0].parent)
    out = load_nifti(write_nifti_like(np.ones((8, 7, 3)), ref, tmp_path / "m.nii"))
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)
    assert isinstance(out, Volume) and out.data.min() == 1


def test_dicom_bad_slices(tmp_path):
    """Slices GDCM would drop or stack wrongly are refused, naming the folder or the file."""
    paths = write_dicom_series(np.zeros((40, 40, 3), np.int16), np.eye(4), tmp_path / "cut")
    paths[1].write_bytes(paths[1].read_bytes()[:-1000])  # GDCM would silently skip it
    with pytest.raises(InputFileError, match=paths[1].name):
        read_image(tmp_path / "cut")

    mixed = tmp_path / "mixed"
    for p in write_dicom_series(np.zeros((6, 5, 2)), np.eye(4), mixed, series_uid="1.2.3"):
        p.rename(p.with_name("a" + p.name))
    shifted = np.eye(4)
    shifted[2, 3] = 2.0
    write_dicom_series(np.zeros((4, 5, 2)), shifted, mixed, series_uid="1.2.3")  # same series, other size
    assert "differ in orientation or size" in _one_line_error(mixed)

    single = write_dicom_series(np.zeros((6, 5, 1)), np.eye(4), tmp_path / "single")[0].parent
    assert "at least 2" in _one_line_error(single)


# --------------------------------------------------------------------------- label reading


def _label(shape=(30, 26, 12)):
    lab = np.zeros(shape, np.uint8)
    lab[4:20, 5:15, 2:9] = 1
    lab[8:12, 6:10, 3:5] = 2
    return lab


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_labels_read_in_their_own_dtype(tmp_path, dtype):
    from sam2_3dmed.data.io import load_label, load_label_mask, load_nifti_values

    lab = _label()
    p = save(tmp_path / "lab.nii.gz", lab, np.diag([0.8, 0.7, 2.5, 1.0]), dtype)
    vals = load_nifti_values(p)
    assert vals.data.dtype == np.dtype(dtype) and np.array_equal(vals.data, lab)  # no float32 detour
    vol = load_label(p, {0, 1, 2})
    assert vol.data.dtype == np.uint8 and np.array_equal(vol.data, lab)
    assert vol.spacing == load_nifti(p).spacing
    mask, mvol = load_label_mask(p, [2])
    ref = np.isin(np.rint(load_nifti(p).data), [2]).astype(np.uint8)  # what prepared.original_label computed
    assert mask.dtype == np.uint8 and np.array_equal(mask, ref) and mvol.data is mask


def test_label_errors_stay_one_line_naming_the_file(tmp_path):
    from sam2_3dmed.data.io import load_label, load_label_mask

    aff = np.eye(4)
    for values, dtype, problem in ((0.5, np.float32, "non-integer"), (np.nan, np.float32, "NaN/inf"),
                                   (3, np.uint8, "[3]"), (-1, np.int16, "[-1]"), (1e30, np.float32, "label map")):
        lab = _label().astype(dtype)
        lab[0, 0, 0] = values
        p = save(tmp_path / f"bad_{problem[:3]}.nii.gz", lab, aff)
        with pytest.raises(InputFileError) as exc:
            load_label(p, {0, 1, 2})
        msg = str(exc.value)
        assert "\n" not in msg and p.name in msg and problem in msg, msg
    with pytest.raises(InputFileError, match="NaN/inf"):
        load_label_mask(tmp_path / "bad_NaN.nii.gz", [1])


def test_uint8_label_memory_is_one_byte_per_voxel(tmp_path):
    import tracemalloc

    from sam2_3dmed.data.io import load_label, load_label_mask

    lab = _label((256, 256, 64))
    p = save(tmp_path / "lab.nii.gz", lab, np.eye(4), np.uint8)
    for fn in (lambda: load_label(p, {0, 1, 2}), lambda: load_label_mask(p, [1])):
        tracemalloc.start()
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # the stored bytes (which Python's gzip reader holds twice for a moment) plus a uint8
        # mask at most; the float32 detour took 4 + 4 + 1 bytes per voxel and more
        assert peak < 3.5 * lab.size, f"{peak / lab.size:.1f} bytes per voxel"
