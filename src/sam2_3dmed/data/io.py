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


def load_nifti(path: str | Path, dtype=np.float32, check_finite: bool = True) -> Volume:
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
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except _READ_ERRORS as exc:
        raise InputFileError(f"truncated or corrupt data ({_short(exc)})", path) from None
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputFileError("affine is singular or not finite", path)
    if check_finite and np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputFileError(f"contains {bad} NaN/inf voxels", path)
    return Volume(data, affine, path)


def load_label(path: str | Path, allowed: set[int]) -> Volume:
    """Load a label map; every value must be an integer in ``allowed``."""
    vol = load_nifti(path, dtype=np.float32)
    data = vol.data
    if not np.array_equal(data, np.round(data)):
        raise InputFileError("label map has non-integer values", path)
    values = set(int(v) for v in np.unique(data))
    extra = sorted(values - set(allowed))
    if extra:
        raise InputFileError(
            f"label values {extra} are not in the task's label map {sorted(allowed)}", path
        )
    vol.data = data.astype(np.uint8)
    return vol


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
