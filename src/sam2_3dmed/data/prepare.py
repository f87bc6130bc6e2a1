"""``prepare``: one MSD task folder + one target -> a prepared, memory-mappable dataset.

Output folder (created atomically; nothing is left behind on failure)::

    OUT/
      fingerprint.json      per-case geometry, intensities, label volume and slice range
                            (label_slice_range_prepared) + dataset summary
      splits.json           held-out test cases and K folds (seeded)
      plan.json             the target and preprocessing settings that produced OUT
      cases/<case_id>/
        image.npy           (z, y, x) float16|float32 in [0, 1]; np.load(mmap_mode="r")
        label.npy           (z, y, x) uint8 {0, 1}: the target's labels merged
        geometry.json       everything needed to map predictions back (see preprocess.py)
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_dir
from ..config import target_config
from ..console import log, track
from ..errors import InputFileError, UserError
from .io import Volume, check_same_geometry, load_label, load_nifti_values
from .msd import TASKS, load_dataset_json
from .preprocess import CaseGeometry, Preprocessing
from .splits import make_splits


def _load_image(path: Path) -> Volume:
    """A CT image in the file's own dtype (MSD: int16, 2 bytes a voxel; preprocessing reads
    it as float32 a slab at a time), float32 where the file is scaled (nibabel's float64)."""
    vol = load_nifti_values(path)
    if vol.data.dtype == np.float64:
        vol.data = vol.data.astype(np.float32)
    return vol


def _percentiles(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"mean": None, "std": None, "p00_5": None, "p50": None, "p99_5": None}
    x = x.astype(np.float64)  # float32 sums of squares overflow for absurd HU (1e30): keep the fingerprint finite
    p = np.percentile(x, [0.5, 50, 99.5])
    return {
        "mean": float(x.mean()), "std": float(x.std()),
        "p00_5": float(p[0]), "p50": float(p[1]), "p99_5": float(p[2]),
    }


def _check_target_matches(index, tcfg: dict, target: str) -> None:
    folder_task = index.root.name
    if folder_task in TASKS and folder_task != tcfg["task"]:
        raise UserError(f"target {target!r} needs {tcfg['task']}, but this is {folder_task}", index.root)
    missing = [lab for lab in tcfg["labels"] if lab not in index.labels]
    if missing:
        raise InputFileError(
            f"target {target!r} uses labels {missing} which the task's label map {index.labels} lacks",
            index.root / "dataset.json",
        )


def prepare_target(task_dir, target: str, out, cfg: dict, overwrite: bool = False) -> Path:
    tcfg = target_config(cfg, target)
    pcfg, scfg = cfg["prepare"], cfg["splits"]
    index = load_dataset_json(task_dir)
    _check_target_matches(index, tcfg, target)
    if not index.training:
        raise InputFileError("lists no training cases", index.root / "dataset.json")
    # make the split first: too few cases is an error before any heavy work
    splits = make_splits([c.case_id for c in index.training], scfg["folds"], scfg["test_fraction"], scfg["seed"])
    dtype = np.dtype(pcfg["storage_dtype"])
    allowed = set(index.labels)
    preprocess = Preprocessing.from_config(cfg, target)
    out = Path(out)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        records = []
        for case in track(index.training, f"prepare {target}"):
            image = _load_image(case.image)
            if image.data.min() == image.data.max():
                raise InputFileError(f"image is constant (every voxel is {float(image.data.flat[0]):g}): "
                                     "a blank or failed export?", case.image)
            label = load_label(case.label, allowed)
            check_same_geometry(image, label, pcfg["geometry_atol"])
            rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))  # stable across runs
            prep = preprocess(image.data, label.data, image.affine, rng=rng, image_dtype=dtype)
            case_dir = tmp / "cases" / case.case_id
            case_dir.mkdir(parents=True)
            np.save(case_dir / "image.npy", prep.image)
            np.save(case_dir / "label.npy", prep.label)
            (case_dir / "geometry.json").write_text(json.dumps(prep.geometry.to_dict(), indent=1))
            records.append(_case_record(case, image, label, prep, tcfg["labels"], index.root))

        empty = [r["case_id"] for r in records if r["label_voxels_original"] == 0]
        for cid in empty:
            log.warning("case %s: the %s label is empty (organ absent); kept, counted in fingerprint.json", cid, target)
        fingerprint = {
            "target": target,
            "task": tcfg["task"],
            "task_dir": str(Path(task_dir)),
            "synthetic": bool(index.raw.get("synthetic", False)),
            "summary": _summary(records, empty),
            "cases": records,
        }
        plan = {
            "sam2_3dmed_version": __version__,
            "target": target,
            "target_config": tcfg,
            "prepare": pcfg,
            "splits": scfg,
            "array_layout": "zyx",
            "storage_dtype": str(dtype),
        }
        (tmp / "fingerprint.json").write_text(json.dumps(fingerprint, indent=2, allow_nan=False) + "\n")
        (tmp / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
        (tmp / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    log.info("prepared %d cases of %s (%d with an empty label)", len(records), target, len(empty))
    return out


def _case_record(case, image, label, prep, target_labels, root: Path) -> dict:
    g: CaseGeometry = prep.geometry
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    n_orig = int(np.isin(label.data, list(target_labels)).sum())
    return {
        "case_id": case.case_id,
        "image": str(case.image.relative_to(root)),
        "label": str(case.label.relative_to(root)),
        "original_shape": g.original_shape,
        "original_spacing": [float(s) for s in image.spacing],
        "original_axcodes": g.original_axcodes,
        "prepared_shape_zyx": list(g.prepared_shape_zyx),
        "prepared_spacing_xyz": g.resampled_spacing,
        "label_voxels_original": n_orig,
        "label_volume_ml": n_orig * voxel_ml,
        "label_voxels_prepared": int(prep.label.sum()),
        "label_slice_range_prepared": label_slice_range(prep.label),
        "label_values_present": sorted(int(v) for v in np.unique(label.data)),
        "hu_body": _percentiles(prep.hu_body),
        "hu_foreground": _percentiles(prep.hu_fg),
    }


def label_slice_range(label_zyx: np.ndarray) -> list[int] | None:
    """[first, last] slice (z) index of a prepared (z, y, x) mask with foreground, None if empty.

    Stored per case in fingerprint.json (``label_slice_range_prepared``) so that training's
    clip sampler knows the organ's slices without reading the label arrays.
    """
    idx = np.flatnonzero(label_zyx.reshape(label_zyx.shape[0], -1).any(axis=1))
    return [int(idx[0]), int(idx[-1])] if idx.size else None


def _summary(records: list[dict], empty: list[str]) -> dict:
    spacing = np.array([r["original_spacing"] for r in records])
    shapes = np.array([r["prepared_shape_zyx"] for r in records])
    axcodes: dict[str, int] = {}
    for r in records:
        axcodes[r["original_axcodes"]] = axcodes.get(r["original_axcodes"], 0) + 1
    fg_means = [r["hu_foreground"]["mean"] for r in records if r["hu_foreground"]["mean"] is not None]
    vols = [r["label_volume_ml"] for r in records]
    return {
        "n_cases": len(records),
        "n_empty_labels": len(empty),
        "empty_label_cases": empty,
        "original_spacing_median": np.median(spacing, axis=0).tolist(),
        "original_spacing_min": spacing.min(axis=0).tolist(),
        "original_spacing_max": spacing.max(axis=0).tolist(),
        "prepared_shape_zyx_median": np.median(shapes, axis=0).tolist(),
        "original_axcodes": axcodes,
        "foreground_hu_mean_over_cases": float(np.mean(fg_means)) if fg_means else None,
        "label_volume_ml_median": float(np.median(vols)),
    }
