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
from . import resample as _resample
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
    projections = [mask_zyx.any(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
    return _bbox_from_projections(projections, mask_zyx.shape, margin_zyx)


def _bbox_from_projections(projections, shape, margin_zyx) -> tuple[list[int], list[int]]:
    """:func:`bbox_with_margin` from the mask's per-axis ``any`` projections."""
    start, stop = [], []
    for axis in range(3):
        proj = np.flatnonzero(projections[axis])
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
    image: np.ndarray   # (z, y, x) float in [0, 1] (float32 unless image_dtype says otherwise)
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
    image_dtype=np.float32,
) -> PreparedCase:
    """Run the forward chain on one case (HU image and integer label on the same grid).

    ``label=None`` (prediction on a new scan): the crop is the body alone. ``image_dtype``:
    the prepared image's dtype (the [0, 1] values are computed in float32, then cast; prepare
    passes its storage dtype so no second full-size copy is made to cast it).

    Memory grows linearly with the voxels, with small constants: the inputs, one float32
    array of the resampled size (none when the grid is unchanged), bool masks, the outputs,
    and slab-sized temporaries.
    """
    ras_img, ras_affine = to_ras(image, affine)
    ras_shape = list(ras_img.shape)
    ras_spacing = [float(s) for s in np.linalg.norm(ras_affine[:3, :3], axis=0)]
    new_xyz = resampled_size(ras_shape, ras_spacing, spacing_mm, slice_spacing_mm)
    res_affine = scale_affine(ras_affine, ras_shape, new_xyz)
    res_spacing = [float(s) for s in np.linalg.norm(res_affine[:3, :3], axis=0)]

    # Memory: the image is read as float32 a slab of slices at a time (resize_zyx, _slab_f32);
    # at most one full-size float32 array exists (the resampled image, and none when the grid
    # is unchanged); masks stay bool. Same results, bit for bit, as whole-volume arithmetic.
    src_zyx = ras_img.transpose(2, 1, 0)  # a view, in the input's dtype
    new_zyx = tuple(int(n) for n in new_xyz[::-1])
    if label is None:
        mask_zyx = np.zeros(new_zyx, dtype=bool)  # resampling an empty mask gives an empty mask
    else:
        ras_lab, _ = to_ras(label, affine)
        lab_zyx = _LabelMask(ras_lab.transpose(2, 1, 0), target_labels)
        if new_zyx == src_zyx.shape:
            mask_zyx = lab_zyx[:]
        elif label_interpolation == "nearest":
            mask_zyx = resize_zyx(lab_zyx, new_zyx, "nearest", out_dtype=bool)
        else:
            mask_zyx = resize_zyx(lab_zyx, new_zyx, "linear", threshold=0.5)
    img_zyx = src_zyx if new_zyx == src_zyx.shape else resize_zyx(src_zyx, new_zyx, image_interpolation)

    if crop_to_body:
        margin = [crop_margin_mm / s for s in res_spacing[::-1]]
        start, stop = _body_bbox(img_zyx, mask_zyx, body_threshold_hu, [int(np.ceil(m)) for m in margin])
    else:
        start, stop = [0, 0, 0], list(img_zyx.shape)
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    img_c, mask_c = img_zyx[sl], mask_zyx[sl]

    rng = rng or np.random.default_rng(0)
    body_c = (lambda a, b: _slab_f32(img_c, a, b) > body_threshold_hu) if crop_to_body else None
    hu_body = _sample_masked(img_c, body_c, rng)
    hu_fg = _sample_masked(img_c, lambda a, b: mask_c[a:b], rng)

    lo, hi = hu_window
    scaled = np.empty(img_c.shape, dtype=image_dtype)
    for a, b in _z_slabs(img_c.shape):
        s = np.clip(_slab_f32(img_c, a, b), lo, hi)  # a new array: the input is never modified
        s -= lo
        s /= hi - lo
        scaled[a:b] = s.astype(np.float32, copy=False)  # then to image_dtype, as a float32 result would be
    del img_zyx, img_c

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
    return PreparedCase(scaled, mask_c.astype(np.uint8), geom, hu_body, hu_fg)


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
                 rng: np.random.Generator | None = None, image_dtype=np.float32) -> PreparedCase:
        """:func:`prepare_arrays` with these settings (``label=None`` for a new scan)."""
        return prepare_arrays(image, label, affine, rng=rng, image_dtype=image_dtype,
                              **{f: getattr(self, f) for f in self.__dataclass_fields__})


def _sample(values: np.ndarray, rng: np.random.Generator, n: int = 10000) -> np.ndarray:
    if values.size <= n:
        return values.astype(np.float32)
    return rng.choice(values, n, replace=False).astype(np.float32)


# ---------------------------------------------------------------- slab-wise helpers
def _z_slabs(shape_zyx, budget: int | None = None):
    """(start, stop) slice ranges of about ``budget`` voxels (default ``resample.CHUNK_VOXELS``)."""
    budget = budget or _resample.CHUNK_VOXELS
    step = max(1, budget // max(1, int(shape_zyx[1]) * int(shape_zyx[2])))
    for a in range(0, int(shape_zyx[0]), step):
        yield a, min(int(shape_zyx[0]), a + step)


def _slab_f32(vol: np.ndarray, a: int, b: int) -> np.ndarray:
    """Slices ``a:b`` as float32 (a view when ``vol`` is float32 already: do not write to it)."""
    return np.asarray(vol[a:b], dtype=np.float32)


class _LabelMask:
    """The bool mask ``isin(label, target_labels)`` of a (z, y, x) label view, computed
    for the slices asked for (``mask[a:b]``), never for the whole volume at once."""

    def __init__(self, label_zyx: np.ndarray, target_labels):
        self.label, self.labels, self.shape = label_zyx, list(target_labels), label_zyx.shape

    def __getitem__(self, sl) -> np.ndarray:
        if sl == slice(None):
            out = np.empty(self.shape, dtype=bool)
            for a, b in _z_slabs(self.shape):
                out[a:b] = np.isin(self.label[a:b], self.labels)
            return out
        return np.isin(self.label[sl], self.labels)


def _body_bbox(img_zyx: np.ndarray, mask_zyx: np.ndarray, threshold: float, margin_zyx):
    """``bbox_with_margin((img > threshold) | mask, margin)``, a slab at a time."""
    z, y, x = img_zyx.shape
    proj = [np.zeros(z, dtype=bool), np.zeros(y, dtype=bool), np.zeros(x, dtype=bool)]
    for a, b in _z_slabs(img_zyx.shape):
        u = _slab_f32(img_zyx, a, b) > threshold
        u |= mask_zyx[a:b]
        proj[0][a:b] = u.any(axis=(1, 2))
        proj[1] |= u.any(axis=(0, 2))
        proj[2] |= u.any(axis=(0, 1))
    return _bbox_from_projections(proj, img_zyx.shape, margin_zyx)


def _sample_masked(vol: np.ndarray, mask_of, rng: np.random.Generator, n: int = 10000) -> np.ndarray:
    """``_sample(vol[mask], rng, n)`` without building ``vol[mask]`` whole.

    ``mask_of(a, b)`` gives the bool mask of slices ``a:b`` (None: every voxel). The draw
    is the same (``rng.choice`` of the same count picks the same indices into the values in
    C order), so the result and the generator's state afterwards are identical.
    """
    def values(a, b):
        v = _slab_f32(vol, a, b)
        return v.ravel() if mask_of is None else v[mask_of(a, b)]

    slabs = list(_z_slabs(vol.shape))
    counts = [(b - a) * vol.shape[1] * vol.shape[2] if mask_of is None else int(np.count_nonzero(mask_of(a, b)))
              for a, b in slabs]
    total = sum(counts)
    if total <= n:
        return np.concatenate([values(a, b) for a, b in slabs] or [np.zeros(0, np.float32)]).astype(np.float32)
    idx = rng.choice(total, n, replace=False)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    out = np.empty(n, dtype=np.float32)
    offset = 0
    for (a, b), count in zip(slabs, counts):
        i0, i1 = np.searchsorted(sorted_idx, [offset, offset + count])
        if i1 > i0:
            out[order[i0:i1]] = values(a, b)[sorted_idx[i0:i1] - offset]
        offset += count
    return out


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
