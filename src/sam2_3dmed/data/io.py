"""Reading volumes with every check a CT pipeline needs, each failing with one line.

Checks: the file is readable (not truncated or corrupt), 3D (a trailing singleton
fourth axis is dropped), finite, with a usable affine; labels are integral and use only
the values the task declares; image and label share shape and affine.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputFileError

_READ_ERRORS = (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError)


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS mm) affine, as stored on disk."""

    data: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def _open(path: str | Path):
    """(path, nibabel image, 3D shape) of a readable NIfTI file, or a one-line InputFileError."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError("is a folder, not a NIfTI file", path)
    if not path.is_file():
        raise InputFileError("file does not exist", path)
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InputFileError(f"cannot read as NIfTI ({_short(exc)})", path) from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputFileError(f"expected a 3D volume, got {len(img.shape)}D with shape {tuple(img.shape)}", path)
    if min(shape) < 1:
        raise InputFileError(f"empty volume with shape {tuple(shape)}", path)
    return path, img, tuple(shape)


def _affine(img, path: Path) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputFileError("affine is singular or not finite", path)
    return affine


def load_nifti(path: str | Path, dtype=np.float32, check_finite: bool = True) -> Volume:
    path, img, shape = _open(path)
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except _READ_ERRORS as exc:
        raise InputFileError(f"truncated or corrupt data ({_short(exc)})", path) from None
    affine = _affine(img, path)
    if check_finite and np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputFileError(f"contains {bad} NaN/inf voxels", path)
    return Volume(data, affine, path)


def load_nifti_values(path: str | Path) -> Volume:
    """A NIfTI volume with its voxel values in the file's own dtype, read once.

    For label maps and masks: an integer file stays integer (a uint8 label costs one byte
    per voxel, not float32's four); only a file with scaling (``scl_slope``/``scl_inter``)
    comes back as nibabel's scaled floats. Float values must be finite (the same one-line
    error as :func:`load_nifti`). The array may be Fortran-ordered, as on disk.
    """
    path, img, shape = _open(path)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except _READ_ERRORS as exc:
        raise InputFileError(f"truncated or corrupt data ({_short(exc)})", path) from None
    affine = _affine(img, path)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
            or data.dtype == bool):
        raise InputFileError(f"voxel type {data.dtype} is not a number", path)
    if np.issubdtype(data.dtype, np.floating):
        bad = sum(int(np.count_nonzero(~np.isfinite(data[c]))) for c in _chunks(data))
        if bad:
            raise InputFileError(f"contains {bad} NaN/inf voxels", path)
    return Volume(data, affine, path)


def load_label(path: str | Path, allowed: set[int]) -> Volume:
    """Load a label map as uint8; every value must be an integer in ``allowed``.

    Read in the file's own dtype and checked chunk by chunk: peak memory is the stored
    array once plus the uint8 result (none when the file is uint8 already).
    """
    vol = load_nifti_values(path)
    data = vol.data
    values = _unique_integers(data, path)
    extra = sorted(values - set(int(a) for a in allowed))
    if extra:
        raise InputFileError(
            f"label values {extra} are not in the task's label map {sorted(allowed)}", path
        )
    vol.data = _cast_chunks(data, np.uint8)
    return vol


def load_label_mask(path: str | Path, labels) -> tuple[np.ndarray, Volume]:
    """A label file as a {0, 1} uint8 mask of ``labels`` (values rounded to the nearest integer).

    Returns ``(mask, volume)`` where ``volume.data`` is that same mask (the label values are
    not kept): peak memory is the stored array once plus one byte per voxel.
    """
    vol = load_nifti_values(path)
    data = vol.data
    want = np.asarray(sorted(set(int(v) for v in labels)), dtype=np.int64)
    mask = np.empty_like(data, dtype=np.uint8)
    for c in _chunks(data):
        part = data[c]
        if not np.issubdtype(part.dtype, np.integer):
            part = np.rint(part)
        mask[c] = np.isin(part, want)
    vol.data = mask
    return mask, vol


def _chunks(a: np.ndarray, voxels: int = 1 << 18):
    """Index tuples cutting ``a`` into chunks of about ``voxels`` along its slowest axis.

    Small (one 512 x 512 slice): a chunk's temporaries (bincount's and isin's int64
    copies, 8 bytes a voxel) stay a few MB whatever the volume's size.
    """
    ax = a.ndim - 1 if (a.flags.f_contiguous and not a.flags.c_contiguous) else 0
    n = a.shape[ax] if a.ndim else 1
    if a.ndim == 0:
        yield ()
        return
    plane = max(1, a.size // max(1, n))
    step = max(1, voxels // plane)
    for lo in range(0, n, step):
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(lo, min(lo + step, n))
        yield tuple(idx)


def _unique_integers(data: np.ndarray, path: Path) -> set[int]:
    """The distinct values of a label array, chunk by chunk; non-integer floats are an error."""
    values: set = set()
    for c in _chunks(data):
        part = data[c]
        if np.issubdtype(part.dtype, np.floating) and not np.array_equal(part, np.round(part)):
            raise InputFileError("label map has non-integer values", path)
        if part.dtype == np.uint8:  # the common case: a count per value, no sort
            values.update(np.flatnonzero(np.bincount(part.reshape(-1), minlength=256)).tolist())
        else:
            values.update(np.unique(part).tolist())
    return {int(v) for v in values}


def _cast_chunks(data: np.ndarray, dtype) -> np.ndarray:
    """``data.astype(dtype)`` (values known to fit) without a whole-array temporary; no copy if equal."""
    if data.dtype == dtype:
        return data
    out = np.empty_like(data, dtype=dtype)
    for c in _chunks(data):
        out[c] = data[c]
    return out


def check_same_geometry(image: Volume, label: Volume, atol_mm: float) -> None:
    if image.data.shape != label.data.shape:
        raise InputFileError(
            f"label shape {label.data.shape} differs from image shape {image.data.shape} ({image.path.name})",
            label.path,
        )
    # compare where each corner voxel lands in world space, in mm
    diff = np.abs(image.affine - label.affine)[:3]
    extent = np.array(image.data.shape + (1,), dtype=np.float64)
    worst = float((diff * extent).sum(axis=1).max())
    if worst > atol_mm:
        raise InputFileError(
            f"label affine differs from image affine ({image.path.name}) by up to {worst:.3g} mm", label.path
        )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
