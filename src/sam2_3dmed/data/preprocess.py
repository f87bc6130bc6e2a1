"""Forward preprocessing of one case and its exact inverse.

Forward (each step recorded in a :class:`CaseGeometry`):
  1. reorient the array to the closest canonical RAS axes (a pure permutation/flip,
     lossless; an oblique affine stays oblique, nothing is resampled in world space);
  2. resample on the voxel grid: in-plane to the target spacing, along the slice axis
     only if configured (image linear or cubic; label nearest or linear+threshold);
  3. crop to the body (HU above a threshold) united with the label, plus a margin;
  4. clip HU to the target's window and scale to [0, 1];
  5. store as (z, y, x) so axial slices are contiguous and slice ranges read fast.

The inverse takes a (z, y, x) mask or probability map on the prepared grid back to the
original file's grid: un-crop, resample back, undo the reorientation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np

from ..config import target_config
from .resample import resampled_size, resize_zyx, scale_affine

RAS = (("R", "A", "S"))


@dataclass
class CaseGeometry:
    """Everything needed to map a prepared array back to the original grid."""

    original_shape: list[int]          # on-disk array shape
    original_affine: list[list[float]]  # on-disk voxel -> world (mm)
    original_axcodes: str
    ras_shape: list[int]               # (x, y, z) after reorientation
    ras_spacing: list[float]           # (x, y, z) mm
    resampled_shape: list[int]         # (x, y, z) after resampling
    resampled_spacing: list[float]     # (x, y, z) mm, exact (field of view is preserved)
    crop_start: list[int]              # (x, y, z) in the resampled grid
    crop_stop: list[int]
    prepared_affine: list[list[float]]  # prepared (x, y, z) index -> world (mm)

    @property
    def prepared_shape_zyx(self) -> tuple[int, int, int]:
        x0, y0, z0 = self.crop_start
        x1, y1, z1 = self.crop_stop
        return (z1 - z0, y1 - y0, x1 - x0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseGeometry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- orientation
def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return ras, ras_affine


def from_ras(ras: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    codes = nib.aff2axcodes(original_affine)
    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(RAS), nib.orientations.axcodes2ornt(codes)
    )
    return nib.orientations.apply_orientation(ras, back)


# ---------------------------------------------------------------- cropping
def bbox_with_margin(mask_zyx: np.ndarray, margin_zyx) -> tuple[list[int], list[int]]:
    """Bounding box (start, stop) in (z, y, x) of a boolean mask, grown by a margin."""
    shape = mask_zyx.shape
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        proj = np.flatnonzero(mask_zyx.any(axis=other))
        if proj.size == 0:
            start.append(0)
            stop.append(shape[axis])
            continue
        m = int(margin_zyx[axis])
        start.append(max(0, int(proj[0]) - m))
        stop.append(min(shape[axis], int(proj[-1]) + 1 + m))
    return start, stop


# ---------------------------------------------------------------- forward
@dataclass
class PreparedCase:
    image: np.ndarray   # (z, y, x) float in [0, 1]
    label: np.ndarray   # (z, y, x) uint8 {0, 1}
    geometry: CaseGeometry
    hu_body: np.ndarray  # HU samples inside the body (for the fingerprint)
    hu_fg: np.ndarray    # HU samples inside the target (for the fingerprint)


def prepare_arrays(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    *,
    spacing_mm,
    slice_spacing_mm,
    hu_window,
    crop_margin_mm: float,
    crop_to_body: bool,
    body_threshold_hu: float,
    image_interpolation: str = "linear",
    label_interpolation: str = "linear",
    target_labels=(1,),
    rng: np.random.Generator | None = None,
) -> PreparedCase:
    """Run the forward chain on one case (HU image and integer label on the same grid).

    ``label=None`` (prediction on a new scan): the crop is the body alone.
    """
    if label is None:
        label = np.zeros(image.shape, dtype=np.uint8)
    ras_img, ras_affine = to_ras(image, affine)
    ras_lab, _ = to_ras(label, affine)
    ras_shape = list(ras_img.shape)
    ras_spacing = [float(s) for s in np.linalg.norm(ras_affine[:3, :3], axis=0)]
    new_xyz = resampled_size(ras_shape, ras_spacing, spacing_mm, slice_spacing_mm)
    res_affine = scale_affine(ras_affine, ras_shape, new_xyz)
    res_spacing = [float(s) for s in np.linalg.norm(res_affine[:3, :3], axis=0)]

    img_zyx = np.ascontiguousarray(ras_img.transpose(2, 1, 0), dtype=np.float32)
    mask_zyx = np.isin(ras_lab.transpose(2, 1, 0), list(target_labels)).astype(np.float32)
    new_zyx = new_xyz[::-1]
    if tuple(new_zyx) != img_zyx.shape:
        img_zyx = resize_zyx(img_zyx, new_zyx, image_interpolation)
        if label_interpolation == "nearest":
            mask_zyx = resize_zyx(mask_zyx, new_zyx, "nearest")
        else:
            mask_zyx = resize_zyx(mask_zyx, new_zyx, "linear") >= 0.5
    mask_zyx = mask_zyx.astype(bool)

    if crop_to_body:
        body = img_zyx > body_threshold_hu
        margin = [crop_margin_mm / s for s in res_spacing[::-1]]
        start, stop = bbox_with_margin(body | mask_zyx, [int(np.ceil(m)) for m in margin])
    else:
        body = np.ones_like(mask_zyx)
        start, stop = [0, 0, 0], list(img_zyx.shape)
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    img_c, mask_c = img_zyx[sl], mask_zyx[sl]

    rng = rng or np.random.default_rng(0)
    hu_body = _sample(img_c[body[sl]], rng)
    hu_fg = _sample(img_c[mask_c], rng)

    lo, hi = hu_window
    scaled = (np.clip(img_c, lo, hi) - lo) / (hi - lo)

    start_xyz, stop_xyz = start[::-1], stop[::-1]
    crop_affine = res_affine.copy()
    crop_affine[:3, 3] = res_affine[:3, :3] @ np.array(start_xyz, dtype=np.float64) + res_affine[:3, 3]
    geom = CaseGeometry(
        original_shape=list(image.shape),
        original_affine=affine.tolist(),
        original_axcodes="".join(nib.aff2axcodes(affine)),
        ras_shape=ras_shape,
        ras_spacing=ras_spacing,
        resampled_shape=list(new_xyz),
        resampled_spacing=res_spacing,
        crop_start=list(start_xyz),
        crop_stop=list(stop_xyz),
        prepared_affine=crop_affine.tolist(),
    )
    return PreparedCase(scaled.astype(np.float32), mask_c.astype(np.uint8), geom, hu_body, hu_fg)


@dataclass(frozen=True)
class Preprocessing:
    """A target's forward chain, built once from its config (``targets.<t>`` and ``prepare``):
    the same object prepares the training data (``prepare``) and a new scan (``predict``)."""

    spacing_mm: list | None
    slice_spacing_mm: float | None
    hu_window: list
    crop_margin_mm: float
    crop_to_body: bool
    body_threshold_hu: float
    image_interpolation: str
    label_interpolation: str
    target_labels: tuple

    @classmethod
    def from_config(cls, cfg: dict, target: str) -> "Preprocessing":
        tcfg, pcfg = target_config(cfg, target), cfg["prepare"]
        return cls(spacing_mm=tcfg["spacing_mm"], slice_spacing_mm=tcfg["slice_spacing_mm"],
                   hu_window=tcfg["hu_window"], crop_margin_mm=tcfg["crop_margin_mm"],
                   crop_to_body=pcfg["crop_to_body"], body_threshold_hu=pcfg["body_threshold_hu"],
                   image_interpolation=pcfg["image_interpolation"], label_interpolation=pcfg["label_interpolation"],
                   target_labels=tuple(tcfg["labels"]))

    def __call__(self, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
                 rng: np.random.Generator | None = None) -> PreparedCase:
        """:func:`prepare_arrays` with these settings (``label=None`` for a new scan)."""
        return prepare_arrays(image, label, affine, rng=rng, **{f: getattr(self, f) for f in self.__dataclass_fields__})


def _sample(values: np.ndarray, rng: np.random.Generator, n: int = 10000) -> np.ndarray:
    if values.size <= n:
        return values.astype(np.float32)
    return rng.choice(values, n, replace=False).astype(np.float32)


# ---------------------------------------------------------------- inverse
def to_original(prepared_zyx: np.ndarray, geom: CaseGeometry, kind: str = "label") -> np.ndarray:
    """Map a prepared-grid (z, y, x) mask or probability map back to the original grid.

    ``kind="label"`` returns uint8 {0, 1} (linear resampling of the mask, threshold 0.5);
    ``kind="prob"`` returns float32 probabilities.
    """
    if tuple(prepared_zyx.shape) != geom.prepared_shape_zyx:
        raise ValueError(f"prediction shape {prepared_zyx.shape} != prepared shape {geom.prepared_shape_zyx}")
    res_zyx = geom.resampled_shape[::-1]
    full = np.zeros(res_zyx, dtype=np.float32)
    (x0, y0, z0), (x1, y1, z1) = geom.crop_start, geom.crop_stop
    full[z0:z1, y0:y1, x0:x1] = prepared_zyx
    ras_zyx = geom.ras_shape[::-1]
    if list(full.shape) != list(ras_zyx):
        full = resize_zyx(full, ras_zyx, "linear")
    ras = full.transpose(2, 1, 0)
    out = from_ras(ras, np.asarray(geom.original_affine))
    if tuple(out.shape) != tuple(geom.original_shape):  # would be a bug, never user input
        raise AssertionError(f"inverse produced {out.shape}, expected {geom.original_shape}")
    if kind == "label":
        return np.ascontiguousarray(out >= 0.5, dtype=np.uint8)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)
