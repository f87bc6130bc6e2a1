"""``sam2-3dmed predict``: trained checkpoint(s) + scan(s) -> label maps on the scans' grids.

The chain for each scan, every step from the checkpoint's own config:

1. read the scan (NIfTI, NRRD/MHA, or a DICOM series folder: ``data/readers.py``);
2. apply the model's preprocessing (``data/preprocess.Preprocessing``: reorient to RAS,
   resample in-plane, crop to the body, HU window) and record the geometry;
3. predict the prepared volume (``infer/inference.py``: SAM2-3dMed encodes each slice
   once and propagates both ways, ``infer/propagation.py``; the U-Net slides windows),
   with each checkpoint of the ensemble (``infer/ensemble.py``), averaging probabilities;
4. map the probability map back through the exact inverse (``to_original``), threshold,
   optionally keep the largest connected component;
5. write a NIfTI with exactly the input's shape and affine (temp file, then rename), and
   with ``save_probabilities`` the fused probability beside it (``<name>_prob.nii.gz``:
   uint8, scale 1/255 in the header, see ``data/readers.write_probability_like``).

INPUT may be one scan (OUTPUT a .nii.gz file) or a folder of scans (OUTPUT a folder):
:func:`find_cases` lists its cases; the models are loaded once; a case whose output exists
is skipped (resume) unless ``overwrite``; a bad case is reported in one line and the rest
are still written; the command fails at the end if any case failed.

Prompts (one scan only) are given in the input's voxel coordinates: ``x`` = first array
index (i), ``y`` = second (j), ``z`` = third (k), 0-based, as in
``nibabel.load(f).dataobj[x, y, z]`` (``infer/user_prompts.py``). They are mapped to the
prepared grid through the affines, so any orientation works as long as each prompt lies
on one axial slice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..console import log, new_progress, peak_rss_mb
from ..data.preprocess import Preprocessing
from ..errors import UserError
from .ensemble import Ensemble, load_ensemble
from .inference import InferenceSettings, predict_volume
from .user_prompts import UserPrompt, prompts_to_prepared

#: image files a folder of cases may hold (DICOM series are subfolders)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: files that belong to an image named beside them (MetaImage/NRRD detached data): not cases
COMPANION_SUFFIXES = (".raw", ".raw.gz", ".zraw", ".img")
PROB_SUFFIX = "_prob"


@dataclass
class PredictOptions:
    """How to predict (CLI options; None = the model's config)."""

    prompts: list[UserPrompt] = field(default_factory=list)
    device: str | None = None
    base_weights: Path | None = None
    largest_component: bool | None = None
    passes: str | None = None
    series_id: str | None = None
    overwrite: bool = False
    save_probabilities: bool = False


# ---------------------------------------------------------------- cases
def case_name(path: Path) -> str:
    """A case's output name: the file name without its image extension, or the folder's name."""
    name = path.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _has_dicom(folder: Path) -> bool:
    from ..data.readers import _is_dicom

    for p in folder.iterdir():
        try:
            if p.is_file() and _is_dicom(p):
                return True
        except OSError:
            continue
    return False


def is_case_folder(path: Path) -> bool:
    """A folder of cases, not one DICOM series (a series folder holds DICOM files itself)."""
    return path.is_dir() and not _has_dicom(path)


def find_cases(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of every case in ``folder``, by name: image files with a supported
    extension and subfolders (DICOM series). Hidden entries (``.x``, also MSD's ``._x``
    resource forks) and companion data files are not cases; other files are skipped with a
    log line. Two cases with one name (``a.nii`` and ``a.nii.gz``) are refused."""
    cases: dict[str, Path] = {}
    skipped = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        low = p.name.lower()
        if p.is_dir() or low.endswith(IMAGE_SUFFIXES):
            name = case_name(p)
            if name in cases:
                raise UserError(f"two cases would both be written as {name}.nii.gz: {cases[name].name} and {p.name}",
                                folder)
            cases[name] = p
        elif not low.endswith(COMPANION_SUFFIXES):
            skipped.append(p.name)
    if skipped:
        log.info("%s: %d file(s) that are not images skipped (%s)", folder, len(skipped), ", ".join(skipped[:5])
                 + (", ..." if len(skipped) > 5 else ""))
    if not cases:
        raise UserError("holds no DICOM series and no images to segment (NIfTI, NRRD or MetaImage files, or DICOM "
                        "series subfolders)", folder)
    return list(cases.items())


def probability_path(mask_path: Path) -> Path:
    """``case.nii.gz`` -> ``case_prob.nii.gz`` (same folder, same compression)."""
    name = mask_path.name
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    return mask_path.with_name(name[: -len(ext)] + PROB_SUFFIX + ext)


def _check_mask_path(output: Path) -> None:
    if not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise UserError("output must be a NIfTI file ending in .nii.gz or .nii (or a folder when INPUT is one)",
                        output)
    if output.is_dir():
        raise UserError("output is a folder; give a file name ending in .nii.gz or .nii", output)


# ---------------------------------------------------------------- one case
def predict_case(ens: Ensemble, input_path: Path, output: Path, opts: PredictOptions,
                 settings: InferenceSettings, progress=None) -> dict:
    """Predict one scan with the loaded models; write its mask (and probabilities)."""
    from ..data.readers import read_image, write_nifti_like, write_probability_like

    vol = read_image(input_path, series_id=opts.series_id)
    t0 = time.perf_counter()
    prep = Preprocessing.from_config(ens.config, ens.target)(vol.data, None, vol.affine)
    image_zyx, geom = prep.image, prep.geometry
    del prep
    prompts = prompts_to_prepared(opts.prompts, geom, vol.data.shape, Path(input_path)) if opts.prompts else None
    stats: dict = {}
    out = predict_volume(ens, image_zyx, geom, settings, prompts, f"predict {Path(input_path).name}", stats,
                         keep_probabilities=opts.save_probabilities, progress=progress)
    mask, prob = out if opts.save_probabilities else (out, None)
    del image_zyx
    if prob is not None:  # before the mask: a mask on disk means the case is complete (resume)
        write_probability_like(prob, vol, probability_path(output))
        del prob
    write_nifti_like(mask, vol, output)
    seconds = time.perf_counter() - t0
    info = {
        "input": str(input_path), "output": str(output), "target": ens.target, "variant": ens.first.variant,
        "models": len(ens), "mode": "prompted" if prompts else "auto", "prompts": len(opts.prompts),
        "voxels": int(mask.sum()), "volume_ml": float(mask.sum() * np.prod(vol.spacing) / 1000.0),
        "seconds": seconds, "slices": stats.get("slices"),
        "feature_cache": fmt_bytes(stats.get("feature_cache_bytes", 0)),
        "probabilities": str(probability_path(output)) if opts.save_probabilities else None,
    }
    return info


def _settings(ens: Ensemble, opts: PredictOptions) -> InferenceSettings:
    return InferenceSettings.from_config(ens.config, ens.target).but(largest_component=opts.largest_component,
                                                                      prompted_passes=opts.passes)


def _load(models: list[Path], opts: PredictOptions) -> Ensemble:
    ens = load_ensemble(models, opts.device, opts.base_weights)
    if opts.prompts and not ens.accepts_prompts:
        bad = next(m.path for m in ens.members if not m.model.accepts_prompts)
        raise UserError("this is a unet3d model, which takes no prompts: leave out the --prompt-* options", bad)
    return ens


# ---------------------------------------------------------------- the command
def predict(models: list[Path], input_path: Path, output: Path, opts: PredictOptions) -> dict:
    """``sam2-3dmed predict``: one scan -> one file, or a folder of scans -> a folder."""
    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise UserError("does not exist: give a scan or a folder of scans", input_path)
    if is_case_folder(input_path):
        return predict_folder(models, input_path, output, opts)
    _check_mask_path(output)
    if output.exists() and not opts.overwrite:
        raise UserError("exists; pass --overwrite to replace it", output)
    if not output.parent.is_dir():
        raise UserError("output folder does not exist", output.parent)
    ens = _load(models, opts)
    info = predict_case(ens, input_path, output, opts, _settings(ens, opts))
    log.info("%s: %s mode, %d voxels (%.1f ml), %.1f s, feature cache %s", output.name, info["mode"],
             info["voxels"], info["volume_ml"], info["seconds"], info["feature_cache"])
    return info


def predict_folder(models: list[Path], folder: Path, out_dir: Path, opts: PredictOptions) -> dict:
    """Every case of ``folder`` -> ``out_dir/<name>.nii.gz``; models loaded once."""
    from ..atomic import ensure_dir

    if opts.prompts:
        raise UserError("prompts are in one scan's voxel coordinates: give one scan, not a folder", folder)
    cases = find_cases(folder)
    if out_dir.name.endswith((".nii", ".nii.gz")) or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError("INPUT is a folder of scans, so OUTPUT must be a folder", out_dir)
    todo, done = [], []
    for name, path in cases:
        mask = out_dir / f"{name}.nii.gz"
        complete = mask.exists() and (not opts.save_probabilities or probability_path(mask).exists())
        (done if complete and not opts.overwrite else todo).append((name, path))
    if done:
        log.info("%d of %d case(s) already in %s: skipped (--overwrite redoes them)", len(done), len(cases), out_dir)
    result = {"input": str(folder), "output": str(out_dir), "cases": len(cases), "skipped": len(done),
              "written": 0, "failed": [], "seconds": [], "peak_rss_mb": []}
    if not todo:
        return result
    ensure_dir(out_dir)
    ens = _load(models, opts)
    settings = _settings(ens, opts)
    result.update(target=ens.target, models=len(ens))
    with new_progress() as progress:
        bar = progress.add_task(f"{len(todo)} case(s)", total=len(todo))
        for i, (name, path) in enumerate(todo):
            t0 = time.perf_counter()
            try:
                info = predict_case(ens, path, out_dir / f"{name}.nii.gz", opts, settings, progress=progress)
            except UserError as exc:
                log.error("case %s failed: %s", name, exc)
                result["failed"].append(name)
            else:
                dt = time.perf_counter() - t0
                result["written"] += 1
                result["seconds"].append(dt)
                result["peak_rss_mb"].append(peak_rss_mb())
                log.info("case %d/%d %s: %d voxels (%.1f ml), %.1f s, peak RSS %.0f MB", i + 1, len(todo), name,
                         info["voxels"], info["volume_ml"], dt, result["peak_rss_mb"][-1])
            progress.advance(bar)
    if result["failed"]:
        raise UserError(f"{len(result['failed'])} of {len(todo)} case(s) failed ({', '.join(result['failed'])}; "
                        f"reasons above); the other {result['written']} were written", out_dir)
    return result


def fmt_bytes(n: int) -> str:
    if n <= 0:
        return "0 B"
    units = ["B", "KB", "MB", "GB", "TB"]
    i = min(len(units) - 1, int(math.log(n, 1024)))
    return f"{n / 1024 ** i:.1f} {units[i]}"
