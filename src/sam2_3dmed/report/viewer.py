"""Report section *Viewer*: a slice viewer (axial, coronal, sagittal) of chosen cases,
with the data embedded in the page, so nothing is fetched when it is viewed.

Which cases: the best, median and worst case by Dice of each variant (its first mode, as
in section *Qualitative*), then further cases in the order of the per-case table, while
the encoded data stay within ``report.viewer.max_mb`` (MB = 10^6 bytes, counted on the
base64 text that goes into the page). Adding stops at the first case that would exceed
it; the page lists the cases it holds, their size, and those left out.

What is embedded per case (one crop of the canonical RAS+ grid, see :func:`build_case`):

* the crop covers the ground truth and every overlaid variant's prediction, +- 25 mm
  (``figures.CROP_MARGIN_MM``, as the static figures); without any foreground, the whole
  volume;
* it is downsampled by a whole factor per axis, ``f = ceil(n / max_side)``, to
  ``ceil(n / f)`` voxels (the last block of an axis may be partial): the image by block
  mean in HU, then windowed to uint8 by the target's ``hu_window``
  (``rint((hu - lo) * 255 / (hi - lo))`` clipped to 0..255); the masks by *any* (a block
  is foreground where any of its voxels is, so thin structures stay visible; it widens a
  mask by up to one block);
* the masks are packed into one uint8 per voxel: bit 0 the ground truth, bit k the k-th
  overlaid variant's prediction (at most 7 variants; further ones are left out, noted);
* image bytes then mask bytes, x fastest (``index = (k * ny + j) * nx + i``), zlib
  compressed, base64, in a ``<script type="application/octet-stream">`` element; the page's
  script inflates it with ``DecompressionStream("deflate")``.

Memory: the masks' bounding boxes come from axis projections computed one block of
slices at a time, and the crop is read and downsampled one slab at a time, so no
full-size float copy of a volume is made (a 512x512x750 case needs some tens of MB).
"""

from __future__ import annotations

import base64
import gzip
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import figures, tables
from .collect import TargetResults

MAX_OVERLAYS = 7  # bits 1..7 of the mask byte
GT_COLOUR = figures.GT_COLOUR
COLOURS = [figures.PRED_COLOUR, "#00d8ff", "#ff9a00", "#ff3030", "#fff000", "#5b7cff", "#ffffff"]
BLOCK_BYTES = 32 << 20  # a block of slices read at a time (in float64, the widest a reader returns)
MB = 1_000_000


def _read_errors() -> tuple:
    import nibabel as nib

    return (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, figures.GridMismatch,
            nib.filebasedimages.ImageFileError)


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- reading
@dataclass
class _Volume:
    """A lazily read canonical volume, the direction to walk its slices in, and its grid."""

    vol: figures.CanonicalVolume
    affine: np.ndarray
    z_descending: bool  # canonical z runs against the stored axis: read blocks top down

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.vol.shape)


def _open(path: Path) -> _Volume:
    """The file kept open between block reads (a gzip stream read forwards once, not
    re-opened and decompressed from its start for every block)."""
    import nibabel as nib

    try:
        img = nib.load(str(path), keep_file_open=True)
    except TypeError:  # a reader that does not take the option
        img = nib.load(str(path))
    vol = figures.CanonicalVolume(img)
    ornt = nib.orientations.io_orientation(img.affine)
    stored_z = next(i for i, (new, _) in enumerate(ornt) if int(new) == 2)
    return _Volume(vol, np.asarray(vol.affine, dtype=float), bool(ornt[stored_z, 1] < 0))


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def _same_grid(a: _Volume, b: _Volume) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)


def _foreground(part: np.ndarray, labels) -> np.ndarray:
    """Values in ``labels`` (a label file), or > 0 (a prediction), as in figures._mask_of."""
    if labels is None:
        return part > 0
    if not np.issubdtype(part.dtype, np.integer):
        part = np.rint(part)
    return np.isin(part, labels)


def _depth(nx: int, ny: int, unit: int = 1) -> int:
    """Slices per block (a multiple of ``unit``) for BLOCK_BYTES at 8 bytes a voxel."""
    return unit * max(1, BLOCK_BYTES // max(1, nx * ny * 8 * unit))


def _projections(v: _Volume, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis, whether any voxel of that index is foreground; one block of slices at a time."""
    nx, ny, nz = v.shape
    px, py, pz = np.zeros(nx, bool), np.zeros(ny, bool), np.zeros(nz, bool)
    d = _depth(nx, ny)
    starts = list(range(0, nz, d))
    for k0 in (reversed(starts) if v.z_descending else starts):
        m = _foreground(np.asarray(v.vol[:, :, k0:k0 + d]), labels)
        px |= m.any(axis=(1, 2))
        py |= m.any(axis=(0, 2))
        pz[k0:k0 + d] = m.any(axis=(0, 1))
    return px, py, pz


def crop_bounds(projections: list[tuple[np.ndarray, ...]], spacing, shape) -> tuple[slice, slice, slice]:
    """The union's bounding box +- CROP_MARGIN_MM (ceil in voxels), clipped to the volume;
    the whole volume when nothing is foreground (as figures._crop)."""
    out = []
    for ax in range(3):
        proj = np.zeros(shape[ax], bool)
        for p in projections:
            proj |= p[ax]
        idx = np.flatnonzero(proj)
        if idx.size == 0:
            return tuple(slice(0, int(n)) for n in shape)
        m = int(math.ceil(figures.CROP_MARGIN_MM / spacing[ax]))
        out.append(slice(max(0, int(idx[0]) - m), min(int(shape[ax]), int(idx[-1]) + m + 1)))
    return tuple(out)


def factors(shape, max_side: int) -> tuple[int, int, int]:
    """Whole downsampling factors so that ceil(n / f) <= max_side on every axis."""
    return tuple(max(1, int(math.ceil(int(n) / int(max_side)))) for n in shape)


def _starts(n: int, f: int) -> np.ndarray:
    return np.arange(0, n, f)


def _counts(n: int, f: int) -> np.ndarray:
    s = _starts(n, f)
    return np.diff(np.append(s, n)).astype(np.float64)


def _reduce(arr: np.ndarray, f, ufunc, dtype=None) -> np.ndarray:
    for ax in range(3):
        if f[ax] > 1:
            arr = ufunc.reduceat(arr, _starts(arr.shape[ax], f[ax]), axis=ax, **({"dtype": dtype} if dtype else {}))
    return arr


def window_u8(hu: np.ndarray, hu_window) -> np.ndarray:
    lo, hi = float(hu_window[0]), float(hu_window[1])
    scaled = (np.asarray(hu, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def downsample(image: _Volume, masks: list[tuple[_Volume, object, int]], sl, f, hu_window):
    """(uint8 image, uint8 mask bits) of the crop ``sl`` downsampled by ``f``, one slab of
    ``f[2] * q`` input slices at a time. ``masks``: (volume, labels or None, bit)."""
    crop_img = image.vol.crop(sl)
    crops = [(v.vol.crop(sl), labels, bit) for v, labels, bit in masks]
    nx, ny, nz = (s.stop - s.start for s in sl)
    out_shape = tuple(int(math.ceil(n / k)) for n, k in zip((nx, ny, nz), f))
    img_out = np.empty(out_shape, np.uint8)
    bits_out = np.zeros(out_shape, np.uint8)
    cxy = _counts(nx, f[0])[:, None, None] * _counts(ny, f[1])[None, :, None]
    d = _depth(nx, ny, f[2])
    starts = list(range(0, nz, d))
    for z0 in (reversed(starts) if image.z_descending else starts):
        z1 = min(nz, z0 + d)
        o0, o1 = z0 // f[2], int(math.ceil(z1 / f[2]))
        part = np.asarray(crop_img[:, :, z0:z1], dtype=np.float32)
        sums = _reduce(part, f, np.add, np.float64)
        del part
        mean = sums / (cxy * _counts(z1 - z0, f[2])[None, None, :])
        img_out[:, :, o0:o1] = window_u8(mean, hu_window)
        slab = np.zeros((nx, ny, z1 - z0), np.uint8)
        for vol, labels, bit in crops:
            slab |= _foreground(np.asarray(vol[:, :, z0:z1]), labels).astype(np.uint8) << np.uint8(bit)
        bits_out[:, :, o0:o1] = _reduce(slab, f, np.bitwise_or)
    return img_out, bits_out


def _centre(bits: np.ndarray) -> list[int]:
    """The ground truth's centroid (else the predictions', else the middle), from projections."""
    for ref in (bits & 1, bits):
        n = int(np.count_nonzero(ref))
        if n:
            return [int(round(float(np.dot(np.arange(ref.shape[ax]), np.count_nonzero(
                ref, axis=tuple(a for a in range(3) if a != ax)))) / n)) for ax in range(3)]
    return [n // 2 for n in bits.shape]


def encode(image: np.ndarray, bits: np.ndarray) -> str:
    """base64 of zlib(image bytes + mask bytes), x fastest."""
    raw = image.tobytes(order="F") + bits.tobytes(order="F")
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode(text: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode` (for tests and checks)."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    n = int(np.prod(shape))
    if raw.size != 2 * n:
        raise ValueError(f"{raw.size} bytes, expected {2 * n}")
    return raw[:n].reshape(shape, order="F"), raw[n:].reshape(shape, order="F")


# ---------------------------------------------------------------- cases
@dataclass
class _Overlay:
    bit: int
    variant: str
    mode: str
    colour: str
    pred_dirs: dict[int, Path]
    saved: bool


@dataclass
class _Candidate:
    case_id: str
    fold: int
    labels: list[str] = field(default_factory=list)


def _dice_lookup(df) -> dict[tuple, float]:
    out = {}
    for v, m, c, f, d in zip(df["variant"], df["mode"], df["case_id"], df["fold"], df["dice"]):
        out.setdefault((str(v), str(m), str(c)), {})[int(f)] = float(d)
    return out


def build_case(cand: _Candidate, rec: dict, task_dir: Path, overlays: list[_Overlay], dice: dict,
               tcfg: dict, max_side: int) -> dict:
    """One case's meta data and encoded payload; raises a read error when its image or label
    cannot be used (a prediction that cannot be read is an absent overlay, noted)."""
    read_errors = _read_errors()
    image = _open(task_dir / rec["image"])
    label = _open(task_dir / rec["label"])
    if not _same_grid(image, label):
        raise figures.GridMismatch(f"the label is not on the image's grid (shape {label.shape} vs {image.shape})")
    spacing = _spacing(image.affine)
    masks = [(label, list(tcfg["labels"]), 0)]
    projections = [_projections(label, list(tcfg["labels"]))]
    ov_meta = []
    for ov in overlays:
        folds = dice.get((ov.variant, ov.mode, cand.case_id), {})
        fold = cand.fold if cand.fold in folds else (min(folds) if folds else None)
        entry = {"bit": ov.bit, "variant": ov.variant, "mode": ov.mode, "present": False, "fold": fold,
                 "dice": tables.fmt(folds[fold], 3) if fold is not None else "n/a", "note": None}
        ov_meta.append(entry)
        if fold is None:
            entry["note"] = f"{ov.variant}/{ov.mode} was not evaluated on this case"
            continue
        if not ov.saved:
            entry["note"] = f"{ov.variant}: predictions were not saved"
            continue
        path = ov.pred_dirs.get(fold, Path("?")) / f"{cand.case_id}_{ov.mode}.nii.gz"
        if not path.is_file():
            entry["note"] = f"{ov.variant}: prediction not saved ({path} is missing)"
            continue
        try:
            pred = _open(path)
            if not _same_grid(pred, image):
                raise figures.GridMismatch(f"not on the image's grid (shape {pred.shape} vs {image.shape})")
            projections.append(_projections(pred, None))
        except read_errors as exc:
            entry["note"] = f"{ov.variant}: prediction {path} could not be read ({_first_line(exc)})"
            continue
        masks.append((pred, None, ov.bit))
        entry["present"] = True
    sl = crop_bounds(projections, spacing, image.shape)
    crop_shape = tuple(s.stop - s.start for s in sl)
    f = factors(crop_shape, max_side)
    img_u8, bits = downsample(image, masks, sl, f, tcfg["hu_window"])
    data = encode(img_u8, bits)
    return {"case_id": cand.case_id, "fold": cand.fold, "labels": list(cand.labels),
            "shape": [int(n) for n in img_u8.shape], "spacing": [round(s * k, 4) for s, k in zip(spacing, f)],
            "factor": list(f), "offset": [s.start for s in sl], "crop_shape": list(crop_shape),
            "full_shape": list(image.shape), "source_spacing": [round(s, 4) for s in spacing],
            "centre": _centre(bits), "overlays": ov_meta, "bytes": len(data), "data": data}


def _candidates(res: TargetResults, overlays: list[_Overlay]) -> list[_Candidate]:
    by_key: dict[tuple, _Candidate] = {}
    for ov in overlays:
        for label, row in tables.best_median_worst(res.metrics, ov.variant, ov.mode):
            key = (str(row["case_id"]), int(row["fold"]))
            by_key.setdefault(key, _Candidate(*key)).labels.append(f"{label} of {ov.variant}")
    for cid, fold in zip(res.metrics["case_id"], res.metrics["fold"]):
        key = (str(cid), int(fold))
        if key not in by_key:
            by_key[key] = _Candidate(*key, labels=["table"])
    return list(by_key.values())


def _title(c: dict) -> str:
    dice = ", ".join(f"{o['variant']} {o['dice']}" for o in c["overlays"])
    return f"{', '.join(c['labels'])}: {c['case_id']} (fold {c['fold']})" + (f" \u2014 Dice {dice}" if dice else "")


def context(cfg: dict, res: TargetResults, tcfg: dict) -> dict:
    from .collect import fingerprint as _fingerprint

    vcfg = (cfg.get("report") or {}).get("viewer") or {}
    if not vcfg.get("enabled", True):
        return {"show": False, "note": "the viewer is switched off (report.viewer.enabled: false); "
                                       "the static figures above remain"}
    max_side = int(vcfg.get("max_side", 128))
    max_mb = float(vcfg.get("max_mb", 25))
    if res.metrics.empty:
        return {"show": False, "note": "no evaluated cases: nothing to view"}
    fp, fp_path, note = _fingerprint(cfg, res.target)
    if fp is None:
        return {"show": False, "note": note}
    notes: list[str] = []
    overlays: list[_Overlay] = []
    for variant in res.variants:
        sub = res.metrics[res.metrics["variant"] == variant]
        modes = [m for m in res.modes if m in set(sub["mode"])]
        if not modes:
            continue
        if len(overlays) == MAX_OVERLAYS:
            notes.append(f"variant {variant} left out: at most {MAX_OVERLAYS} predictions fit one mask byte")
            continue
        pred_dirs = {r.fold: r.predictions_dir for r in res.runs_of(variant)}
        saved = any(d.is_dir() for d in pred_dirs.values())
        if not saved:
            shown = ", ".join(str(d) for d in pred_dirs.values())
            notes.append(f"{variant}: predictions were not saved (no {shown}; evaluate.save_predictions is false?): "
                         f"no {variant} overlay")
        overlays.append(_Overlay(len(overlays) + 1, variant, modes[0], COLOURS[len(overlays)], pred_dirs, saved))
    records = {c["case_id"]: c for c in fp.get("cases", [])}
    task_dir = Path(fp["task_dir"])
    dice = _dice_lookup(res.metrics)
    budget = int(max_mb * MB)
    cases, skipped, left_out, total = [], [], [], 0
    cands = _candidates(res, overlays)
    read_errors = _read_errors()
    for n, cand in enumerate(cands):
        if cand.case_id not in records:
            skipped.append(f"{cand.case_id}: {fp_path} does not list it")
            continue
        try:
            case = build_case(cand, records[cand.case_id], task_dir, overlays, dice, tcfg, max_side)
        except read_errors as exc:
            skipped.append(f"{cand.case_id}: could not be read ({_first_line(exc)})")
            continue
        if total + case["bytes"] > budget:
            left_out = [f"{c.case_id} (fold {c.fold}, {', '.join(c.labels)})" for c in cands[n:]]
            break
        total += case["bytes"]
        case["index"] = len(cases)
        case["title"] = _title(case)
        case["kb"] = f"{case['bytes'] / 1000:.1f}"
        case["notes"] = [o["note"] for o in case["overlays"] if o["note"]]
        cases.append(case)
    notes += [f"case {s}" for s in skipped]
    ov_list = [{"bit": o.bit, "variant": o.variant, "mode": o.mode, "colour": o.colour} for o in overlays]
    meta = {"gt_colour": GT_COLOUR, "overlays": ov_list, "hu_window": list(tcfg["hu_window"]),
            "cases": [{k: v for k, v in c.items() if k not in ("data", "notes", "kb")} for c in cases]}
    if not cases:
        why = (f"not even the first case fits report.viewer.max_mb = {max_mb:g} MB" if left_out
               else "no case could be read")
        return {"show": False, "note": f"no case embedded: {why}", "notes": notes, "left_out": left_out}
    return {"show": True, "note": None, "notes": notes, "cases": cases, "overlays": ov_list, "gt_colour": GT_COLOUR,
            "meta": meta, "embedded_kb": f"{total / 1000:.1f}", "embedded_bytes": total, "max_mb": f"{max_mb:g}",
            "max_side": max_side, "left_out": left_out}
