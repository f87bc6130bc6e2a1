"""Synthetic CT phantoms written as a Medical Segmentation Decathlon task folder.

``synth_task`` writes ``OUT/TASK/`` exactly as MSD ships it (``dataset.json``,
``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ids like ``spleen_3``), so the whole
pipeline can run end to end without the real data. The folder is written atomically.

The phantom
-----------
Anatomy is described in the millimetres of a typical adult torso (RAS+ world axes:
+x towards the patient's Right, +y Anterior, +z Superior) and squeezed to fit the
field of view: in-plane by ``k_xy`` (the body half-width, about 0.4 x FOV, stands for
170 mm) and along z by ``k_z`` (the volume's z extent stands for 400 mm of torso).
Every structure is then sampled on the voxel grid of the case. Per case, with its
own ``np.random.default_rng((seed, case_index))``:

* geometry, by ``profile`` (the in-plane matrix is always ``size x size``, FOV =
  size x spacing):

  - ``small`` (the demo's and the tests' default): in-plane 0.6-1.0 mm (x = y), slice
    thickness 1.5-5 mm; the number of slices gives a z extent of about 150-250 mm,
    capped to 24..96 slices.
  - ``msd``: the real MSD tasks' ranges (see :data:`MSD_GEOMETRY`), for scale
    rehearsals at ``size=512``: in-plane 0.6-0.98 mm; the slice count is drawn
    log-uniformly from the task's range and the slice spacing is the z extent
    (150-500 mm) over it, clipped to the task's spacing range. Case 0 always has the
    task's largest slice count (so a handful of cases includes the worst case; its
    spacing is the task's smallest) and case 1 its smallest.
* HU (each tissue jittered by a few HU per case):

  ============================  =======  =========================================
  air outside the body          -1000
  subcutaneous fat rim          -100     10-25 mm thick
  soft tissue (body)              40     axial ellipse, slowly varying along z
  lungs                         -850     two ellipsoids, superior part of the volume
  liver                           60     patient's right
  vertebral body / spinous proc.  700    posterior midline; discs 80 HU
  aorta                          150     left-anterior of the spine
  spleen                         110     patient's left, posterior (Task09 label 1)
  pancreas                        90     curved tube across the midline (Task07 1)
  pancreatic tumour               35     blob in/at the pancreas, ~80 % of cases (Task07 2)
  lung nodule                     30     8-30 mm wide (capped at ~half the lung's width)
                                         inside one lung (Task06 1)
  ============================  =======  =========================================

  Organs are ellipsoids whose radius is deformed by low-frequency noise on the
  sphere (the pancreas is a tube along a random quadratic curve whose radius varies
  along it); sizes and positions are random per case. Target structures get a floor
  of a few voxels per axis so that they stay visible at small ``size``. The image
  is smoothed mildly (partial volume), gets Gaussian noise of sigma 10-20 HU and is
  stored as int16 HU clipped to [-1024, 3071]; labels are uint8.
* orientation: the RAS array is flipped and, in some cases, its axes permuted (slice
  axis first, or x/y swapped), with the affine adjusted so each voxel keeps its
  world position: the anatomy in world millimetres does not depend on the layout.
  Image and label of a case share shape and affine (qform = sform, code 1); spacing
  and origin are multiples of 1/256 mm so the float32 header holds them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from ..atomic import atomic_dir, write_json
from ..console import track
from ..errors import UserError
from .msd import TASKS, load_dataset_json

#: Case-id prefix per task, as in the real MSD file names.
PREFIX = {"Task09_Spleen": "spleen", "Task07_Pancreas": "pancreas", "Task06_Lung": "lung"}
_MSD_NAME = {"Task09_Spleen": "Spleen", "Task07_Pancreas": "Pancreas", "Task06_Lung": "Lung"}

# tissue ids (painted in this order; later ones win) and their nominal HU
AIR, FAT, SOFT, LIVER, LUNG, AORTA, BONE, DISC, SPLEEN, PANCREAS, PTUMOUR, NODULE = range(12)
NOMINAL_HU = {
    AIR: -1000, FAT: -100, SOFT: 40, LIVER: 60, LUNG: -850, AORTA: 150, BONE: 700,
    DISC: 80, SPLEEN: 110, PANCREAS: 90, PTUMOUR: 35, NODULE: 30,
}
#: tissue -> label value, per task
TARGETS = {
    "Task09_Spleen": {SPLEEN: 1},
    "Task07_Pancreas": {PANCREAS: 1, PTUMOUR: 2},
    "Task06_Lung": {NODULE: 1},
}

# (axis codes, weight): mostly plain flips, some with permuted axes (slice axis first etc.)
ORIENTATIONS = (
    (("R", "A", "S"), 3), (("L", "P", "S"), 3), (("L", "A", "S"), 2), (("R", "P", "S"), 2),
    (("L", "P", "I"), 1), (("R", "A", "I"), 1),
    (("S", "L", "P"), 1), (("I", "R", "A"), 1), (("P", "L", "S"), 1),
)

_BODY_HALF_WIDTH = 170.0  # real mm the body half-width stands for
_TORSO_Z = 400.0  # real mm of torso the z extent stands for
_MAX_TRIES = 20


def _q(v: float) -> float:
    """Round to a multiple of 1/256 mm (exact in the float32 NIfTI header)."""
    return round(float(v) * 256.0) / 256.0


@dataclass
class _Grid:
    """A case's RAS voxel grid and the map from world mm to phantom ('real') mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray  # RAS voxel -> world
    X: np.ndarray  # 1-D real-mm coordinate of each index along axis 0 (R+)
    Y: np.ndarray  # ... axis 1 (A+)
    Z: np.ndarray  # ... axis 2 (S+)
    k_xy: float
    k_z: float

    def floor_xy(self, voxels: float) -> float:
        """Real mm that map to ``voxels`` in-plane voxels."""
        return voxels * self.spacing[0] / self.k_xy

    def floor_z(self, slices: float) -> float:
        return slices * self.spacing[2] / self.k_z


@dataclass(frozen=True)
class SliceGeometry:
    """A task's range of slice counts and slice spacings (mm) in the real MSD."""

    slices: tuple[int, int]
    spacing_mm: tuple[float, float]


#: Slice ranges of the real MSD tasks (512 x 512 in-plane, 0.6-0.98 mm everywhere).
MSD_GEOMETRY = {
    "Task09_Spleen": SliceGeometry((31, 168), (1.5, 8.0)),
    "Task07_Pancreas": SliceGeometry((37, 751), (0.7, 7.5)),
    "Task06_Lung": SliceGeometry((112, 636), (0.6, 2.5)),
}
PROFILES = ("small", "msd")


def _slices_msd(rng: np.random.Generator, task: str, case_index: int) -> tuple[float, int]:
    """(slice spacing, slice count) of a case of the ``msd`` profile."""
    geo = MSD_GEOMETRY[task]
    lo, hi = geo.slices
    draw = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))  # always drawn: same stream
    extent = rng.uniform(150.0, 500.0)
    nz = {0: hi, 1: lo}.get(int(case_index), draw)
    sz = geo.spacing_mm[0] if int(case_index) == 0 else float(np.clip(extent / nz, *geo.spacing_mm))
    return _q(sz), nz


def _make_grid(rng: np.random.Generator, size: int, task: str, profile: str = "small",
               case_index: int = 0) -> _Grid:
    if profile == "msd":
        sxy = _q(rng.uniform(0.6, 0.98))
        sz, nz = _slices_msd(rng, task, case_index)
    else:
        sxy = _q(rng.uniform(0.6, 1.0))
        sz = _q(rng.uniform(1.5, 5.0))
        nz = int(np.clip(round(rng.uniform(150.0, 250.0) / sz), 24, 96))
    fov = size * sxy
    half_width = rng.uniform(0.36, 0.42) * fov  # body half-width in world mm
    k_xy = half_width / _BODY_HALF_WIDTH
    k_z = nz * sz / _TORSO_Z
    # world position of the FOV centre (a scanner-like table position) and of the anatomy
    fov_centre = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-700, -100)])
    shift = np.array([rng.uniform(-0.03, 0.03) * fov, rng.uniform(-0.03, 0.03) * fov, 0.0])
    # which 400 mm of torso the volume shows: abdomen, or chest for the lung task
    z_window = rng.uniform(120.0, 160.0) if task == "Task06_Lung" else rng.uniform(-20.0, 20.0)
    shape = (size, size, nz)
    spacing = (sxy, sxy, sz)
    origin = [_q(c - (n - 1) / 2.0 * s) for c, n, s in zip(fov_centre, shape, spacing)]
    affine = np.diag([sxy, sxy, sz, 1.0])
    affine[:3, 3] = origin
    centre = fov_centre + shift  # world mm of the anatomy centre (z: the window centre)
    axes = []
    for d, (n, s, o) in enumerate(zip(shape, spacing, origin)):
        world = o + s * np.arange(n)
        k = k_z if d == 2 else k_xy
        real = (world - centre[d]) / k
        if d == 2:
            real = real + z_window
        axes.append(real.astype(np.float32))
    return _Grid(shape, spacing, affine, axes[0], axes[1], axes[2], k_xy, k_z)


def _box(axis: np.ndarray, lo: float, hi: float) -> slice | None:
    idx = np.nonzero((axis >= lo) & (axis <= hi))[0]
    return None if idx.size == 0 else slice(int(idx[0]), int(idx[-1]) + 1)


def _deformed_ellipsoid(g: _Grid, centre, semi, angle: float, amp: float, rng):
    """(slices, mask) of an ellipsoid (real mm) with a low-frequency deformed radius.

    ``angle`` rotates the first two semi-axes in the axial plane. Returns None when
    the shape misses the grid. Always draws the same number of random values.
    """
    n_terms = 4
    dirs = rng.normal(size=(n_terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = rng.uniform(0.6, 1.6, n_terms) * math.pi
    phase = rng.uniform(0, 2 * math.pi, n_terms)
    weight = rng.uniform(0.5, 1.0, n_terms)
    weight *= amp / weight.sum()
    reach_xy = max(semi[0], semi[1]) * (1 + amp)
    reach_z = semi[2] * (1 + amp)
    sl = (
        _box(g.X, centre[0] - reach_xy, centre[0] + reach_xy),
        _box(g.Y, centre[1] - reach_xy, centre[1] + reach_xy),
        _box(g.Z, centre[2] - reach_z, centre[2] + reach_z),
    )
    if any(s is None for s in sl):
        return None
    x = (g.X[sl[0]] - centre[0])[:, None, None]
    y = (g.Y[sl[1]] - centre[1])[None, :, None]
    z = (g.Z[sl[2]] - centre[2])[None, None, :]
    c, s = math.cos(angle), math.sin(angle)
    u = (c * x + s * y) / semi[0]
    v = (-s * x + c * y) / semi[1]
    w = np.broadcast_to(z / semi[2], np.broadcast_shapes(u.shape, z.shape))
    rho = np.sqrt(u * u + v * v + w * w)
    inv = 1.0 / np.maximum(rho, 1e-6)
    radius = np.ones_like(rho)
    for d, f, p, a in zip(dirs, freq, phase, weight):
        radius += a * np.sin(f * (d[0] * u + d[1] * v + d[2] * w) * inv + p)
    return sl, rho <= radius


def _paint(tissue: np.ndarray, sl, mask: np.ndarray, value: int, within: np.ndarray | None = None):
    if within is not None:
        mask = mask & within[sl]
    view = tissue[sl]
    view[mask] = value


def _tube(g: _Grid, points: np.ndarray, radii: np.ndarray):
    """(slices, mask) of the union of balls (real mm) along a densely sampled curve."""
    lo = points.min(0) - radii.max()
    hi = points.max(0) + radii.max()
    sl = (_box(g.X, lo[0], hi[0]), _box(g.Y, lo[1], hi[1]), _box(g.Z, lo[2], hi[2]))
    if any(s is None for s in sl):
        return None
    x = g.X[sl[0]][:, None, None, None]
    y = g.Y[sl[1]][None, :, None, None]
    z = g.Z[sl[2]][None, None, :, None]
    p = points.astype(np.float32)
    d2 = (x - p[:, 0]) ** 2 + (y - p[:, 1]) ** 2 + (z - p[:, 2]) ** 2
    return sl, (d2 / (radii.astype(np.float32) ** 2)).min(axis=-1) <= 1.0


def _phantom(rng: np.random.Generator, g: _Grid, task: str) -> np.ndarray:
    """Tissue-id volume (RAS grid) of one case."""
    X = g.X[:, None, None]
    Y = g.Y[None, :, None]
    Z = g.Z[None, None, :]
    tissue = np.zeros(g.shape, np.uint8)

    # body: axial ellipse whose semi-axes vary slowly along z, with a fat rim
    ratio = rng.uniform(0.66, 0.78)
    wob = 1.0 + 0.04 * np.sin(2 * math.pi * g.Z / rng.uniform(250, 450) + rng.uniform(0, 2 * math.pi))
    a = (_BODY_HALF_WIDTH * wob).astype(np.float32)[None, None, :]
    b = (_BODY_HALF_WIDTH * ratio * wob).astype(np.float32)[None, None, :]
    fat_t = max(rng.uniform(10.0, 25.0), g.floor_xy(1.5))
    tissue[(X / a) ** 2 + (Y / b) ** 2 <= 1.0] = FAT
    inner = (X / (a - fat_t)) ** 2 + (Y / (b - fat_t)) ** 2 <= 1.0
    tissue[inner] = SOFT
    b0 = _BODY_HALF_WIDTH * ratio  # mean AP half-depth (real mm)

    # liver (patient's right = +x)
    liver_c = (rng.uniform(65, 85), rng.uniform(0, 20), rng.uniform(25, 45))
    liver_s = (rng.uniform(60, 75), rng.uniform(0.6, 0.72) * b0 + 5, rng.uniform(65, 85))
    res = _deformed_ellipsoid(g, liver_c, liver_s, rng.uniform(-0.3, 0.3), 0.1, rng)
    if res:
        _paint(tissue, *res, LIVER, inner)

    # lungs: two ellipsoids, bases at the diaphragm (z ~ 60 real mm)
    lungs = []
    top = rng.uniform(300, 330)
    for side in (+1, -1):
        base = rng.uniform(50, 70) + (0 if side > 0 else 10)  # right dome a bit higher
        c = (side * rng.uniform(75, 90), -0.05 * b0, (top + base) / 2)
        s = (rng.uniform(55, 65), 0.7 * b0, (top - base) / 2)
        res = _deformed_ellipsoid(g, c, s, side * rng.uniform(0, 0.15), 0.05, rng)
        lungs.append((c, s, res))
        if res:
            _paint(tissue, *res, LUNG, inner)

    # spine: vertebral bodies with discs, spinous process; aorta in front, to the left
    vert_y = -b0 + rng.uniform(55, 70)
    vert_r = max(rng.uniform(17, 22), g.floor_xy(2.5))
    ell = (X / (vert_r * 1.1)) ** 2 + ((Y - vert_y) / vert_r) ** 2 <= 1.0
    period = rng.uniform(28, 36)
    disc = ((g.Z + rng.uniform(0, period)) % period < 0.22 * period)[None, None, :]
    tissue[ell & ~disc] = BONE
    tissue[ell & disc] = DISC
    sp_r = max(6.0, g.floor_xy(1.0))
    spin = (X / sp_r) ** 2 + ((Y - (vert_y - vert_r - 14)) / 14) ** 2 <= 1.0
    tissue[spin & inner & ~disc] = BONE
    ao_r = max(rng.uniform(10, 13), g.floor_xy(1.5))
    ao_x, ao_y = -rng.uniform(10, 20), vert_y + vert_r + ao_r + rng.uniform(2, 6)
    tissue[((X - ao_x) ** 2 + (Y - ao_y) ** 2 <= ao_r**2) & (tissue == SOFT)] = AORTA

    # spleen: patient's left (-x), posterior, long axis along the body wall
    sx_, sy_ = -rng.uniform(90, 110), -rng.uniform(30, 50)
    tangent = math.atan2(-(sx_ / _BODY_HALF_WIDTH**2), sy_ / b0**2)  # wall tangent direction
    spleen_c = (sx_, sy_, rng.uniform(0, 30))
    spleen_s = (
        max(rng.uniform(45, 65), g.floor_xy(4)),
        max(rng.uniform(20, 30), g.floor_xy(3)),
        max(rng.uniform(45, 65), g.floor_z(2)),
    )
    res = _deformed_ellipsoid(g, spleen_c, spleen_s, tangent + rng.uniform(-0.25, 0.25), 0.15, rng)
    if res:
        _paint(tissue, *res, SPLEEN, inner)

    # pancreas: quadratic curve from the head (right, near the liver) over the aorta to the
    # tail at the splenic hilum, radius tapering from head to tail
    jit = lambda s: rng.uniform(-s, s)  # noqa: E731
    head = np.array([35 + jit(8), ao_y + ao_r + 8 + jit(5), -15 + jit(8)])
    body = np.array([jit(8), ao_y + ao_r + 22 + jit(6), -5 + jit(6)])
    tail = np.array([sx_ + spleen_s[1] + 18 + jit(5), sy_ + 15 + jit(5), 10 + jit(8)])
    ctrl = 2 * body - (head + tail) / 2
    t = np.linspace(0.0, 1.0, 48)[:, None]
    pts = (1 - t) ** 2 * head + 2 * t * (1 - t) * ctrl + t**2 * tail
    scale = rng.uniform(0.8, 1.2)
    r_head, r_tail = 15 * scale, 9 * scale
    mod = 1 + 0.2 * np.sin(2 * math.pi * rng.uniform(0.7, 1.5) * t[:, 0] + rng.uniform(0, 2 * math.pi))
    radii = (r_head + (r_tail - r_head) * t[:, 0]) * mod
    radii = np.maximum(radii, max(g.floor_xy(3.0), g.floor_z(1.0)))
    res = _tube(g, pts, radii)
    if res:
        _paint(tissue, *res, PANCREAS, inner)

    if task == "Task07_Pancreas" and rng.random() < 0.8:
        k = int(rng.integers(0, 40))  # mostly head and body
        off = rng.normal(size=3)
        off = off / np.linalg.norm(off) * rng.uniform(0, 0.6) * radii[k]
        c = pts[k] + off
        r = max(rng.uniform(0.8, 1.6) * radii[k], g.floor_xy(3.0))
        s = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), max(r, g.floor_z(1.5)))
        res = _deformed_ellipsoid(g, c, s, rng.uniform(0, math.pi), 0.2, rng)
        if res:
            _paint(tissue, *res, PTUMOUR, inner)

    if task == "Task06_Lung":
        side = int(rng.integers(0, 2))
        (lc, ls, lres) = lungs[side]
        # a round nodule in world mm (diameter 8-30 mm), at most ~half the lung's width
        r_w = rng.uniform(4.0, 15.0) * rng.uniform(0.9, 1.1, 3)
        s = (
            max(min(r_w[0] / g.k_xy, 0.45 * ls[0]), g.floor_xy(3.0)),
            max(min(r_w[1] / g.k_xy, 0.45 * ls[0]), g.floor_xy(3.0)),
            max(min(r_w[2] / g.k_z, 0.45 * ls[2]), g.floor_z(1.5)),
        )
        lo, hi = float(g.Z.min()) + s[2], float(g.Z.max()) - s[2]
        for _ in range(_MAX_TRIES):
            d = rng.normal(size=3)
            d = d / np.linalg.norm(d) * rng.uniform(0, 0.55)
            c = np.asarray(lc) + d * np.asarray(ls)
            if lo <= c[2] <= hi:
                break
        else:
            c = np.array([lc[0], lc[1], float(np.clip(lc[2], lo, hi))])
        res = _deformed_ellipsoid(g, c, s, rng.uniform(0, math.pi), 0.2, rng)
        if res:
            _paint(tissue, *res, NODULE, tissue == LUNG)
    return tissue


def _render(rng: np.random.Generator, g: _Grid, tissue: np.ndarray) -> np.ndarray:
    """HU image (float32) from the tissue map: jittered HU, partial volume, noise."""
    lut = np.zeros(len(NOMINAL_HU), np.float32)
    for t, hu in NOMINAL_HU.items():
        lut[t] = hu + (0.0 if t == AIR else rng.uniform(-6.0, 6.0))
    image = lut[tissue]
    sigma_vox = (0.5, 0.5, 0.35)
    ndimage.gaussian_filter(image, sigma_vox, output=image, truncate=3.0)
    noise_sd = rng.uniform(10.0, 20.0)
    image += rng.standard_normal(g.shape, dtype=np.float32) * np.float32(noise_sd)
    return image


def _orient(arr: np.ndarray, affine: np.ndarray, codes) -> tuple[np.ndarray, np.ndarray]:
    """Re-lay a RAS array out in ``codes`` axis order; the affine keeps world positions."""
    tr = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(codes))
    out = np.ascontiguousarray(ornt.apply_orientation(arr, tr))
    return out, affine @ ornt.inv_ornt_aff(tr, arr.shape)


def _nifti(arr: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(arr.dtype)
    return img


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise UserError(f"unknown synthetic geometry profile {profile!r}; choose one of {', '.join(PROFILES)}")


def synth_case(task: str, case_index: int, seed: int = 0, size: int = 160, labelled: bool = True,
               profile: str = "small"):
    """Build one case in memory: ``(image_nifti, label_nifti or None)``.

    Only ``(seed, case_index, size, profile)`` decides the content, so cases can be made
    independently.
    """
    if task not in TARGETS:
        raise UserError(f"no synthetic phantom for task {task!r}; choose one of {', '.join(sorted(TARGETS))}")
    _check_profile(profile)
    rng = np.random.default_rng((int(seed), int(case_index)))
    g = _make_grid(rng, size, task, profile, case_index)
    targets = TARGETS[task]
    for _ in range(_MAX_TRIES):
        tissue = _phantom(rng, g, task)
        first = next(iter(targets))  # the organ itself (spleen, pancreas, nodule)
        present = tissue == first
        if np.count_nonzero(present.any(axis=(0, 1))) >= 3:
            break
    else:  # pragma: no cover - the anatomy always puts the organ inside the FOV
        raise RuntimeError(f"could not place the target of {task} case {case_index}")
    image = _render(rng, g, tissue)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    codes_list = [c for c, _ in ORIENTATIONS]
    weights = np.array([w for _, w in ORIENTATIONS], float)
    codes = codes_list[int(rng.choice(len(codes_list), p=weights / weights.sum()))]
    image, affine = _orient(image, g.affine, codes)
    img = _nifti(image, affine)
    if not labelled:
        return img, None
    lut = np.zeros(len(NOMINAL_HU), np.uint8)
    for t, v in targets.items():
        lut[t] = v
    label, _ = _orient(lut[tissue], g.affine, codes)
    return img, _nifti(label, affine)


def synth_task(
    task: str,
    out: str | Path,
    cases: int = 12,
    test_cases: int = 2,
    seed: int = 0,
    size: int = 160,
    overwrite: bool = False,
    profile: str = "small",
) -> Path:
    """Write ``OUT/TASK/`` in MSD layout with ``cases`` labelled and ``test_cases`` test cases.

    Training cases are ``<prefix>_0 .. <prefix>_{cases-1}``, test cases continue the
    numbering. ``profile`` chooses the geometry (module docstring). Returns the task folder.
    """
    if task not in TASKS or task not in PREFIX:
        known = ", ".join(sorted(PREFIX))
        raise UserError(f"unknown or unsupported task {task!r} for synthetic data; choose one of {known}")
    if int(cases) < 1:
        raise UserError(f"--cases must be at least 1 (got {cases})")
    if int(test_cases) < 0:
        raise UserError(f"--test-cases must be 0 or more (got {test_cases})")
    if int(seed) < 0:
        raise UserError(f"--seed must be 0 or more (got {seed})")
    if not 32 <= int(size) <= 1024:
        raise UserError(f"--size must be between 32 and 1024 (got {size})")
    _check_profile(profile)
    meta = TASKS[task]
    prefix = PREFIX[task]
    final = Path(out) / task
    n_total = int(cases) + int(test_cases)
    with atomic_dir(final, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        training, test = [], []
        for i in track(range(n_total), f"synth {task}"):
            cid = f"{prefix}_{i}"
            labelled = i < cases
            img, lab = synth_case(task, i, seed=seed, size=size, labelled=labelled, profile=profile)
            if labelled:
                nib.save(img, str(tmp / "imagesTr" / f"{cid}.nii.gz"))
                nib.save(lab, str(tmp / "labelsTr" / f"{cid}.nii.gz"))
                training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
            else:
                nib.save(img, str(tmp / "imagesTs" / f"{cid}.nii.gz"))
                test.append(f"./imagesTs/{cid}.nii.gz")
        dataset = {
            "name": _MSD_NAME[task],
            "description": f"Synthetic CT phantom imitating MSD {task} ({meta.description})",
            "reference": "sam2-3dmed synthetic phantom (sam2_3dmed.data.synth)",
            "licence": "CC0 1.0 (synthetic data)",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in sorted(meta.labels.items())},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": test,
            "synthetic": True,
            "seed": int(seed),
            "size": int(size),
            "profile": profile,
        }
        write_json(tmp / "dataset.json", dataset)
        load_dataset_json(tmp)  # what we wrote must read back as a valid task
    return final
