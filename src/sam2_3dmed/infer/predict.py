"""``sam2-3dmed predict``: a trained checkpoint + one scan -> a label map on the scan's grid.

The chain, every step from the checkpoint's own config:

1. read the scan (NIfTI, NRRD/MHA, or a DICOM series folder: ``data/readers.py``);
2. apply the model's preprocessing (``data/preprocess.Preprocessing``: reorient to RAS,
   resample in-plane, crop to the body, HU window) and record the geometry;
3. predict the prepared volume (``infer/inference.py``: SAM2-3dMed encodes each slice
   once and propagates both ways, ``infer/propagation.py``; the U-Net slides windows);
4. map the probability map back through the exact inverse (``to_original``), threshold,
   optionally keep the largest connected component;
5. write a NIfTI with exactly the input's shape and affine (temp file, then rename).

Prompts are given in the input's voxel coordinates: ``x`` = first array index (i),
``y`` = second (j), ``z`` = third (k), 0-based, as in ``nibabel.load(f).dataobj[x, y, z]``.
They are mapped to the prepared grid through the affines, so any orientation works as
long as the prompt lies on one axial slice.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..console import log
from ..data.preprocess import CaseGeometry, Preprocessing
from ..errors import UserError
from ..model.checkpoint import load_model
from ..model.prompts import Prompt
from .inference import InferenceSettings, predict_volume


# ---------------------------------------------------------------- prompts
def parse_prompt(box: str | None, point: str | None) -> tuple[str, list[float]] | None:
    """``--prompt-box z,x0,y0,x1,y1`` / ``--prompt-point z,x,y`` -> (kind, numbers)."""
    if box and point:
        raise UserError("give --prompt-box or --prompt-point, not both")
    for kind, text, n in (("box", box, 5), ("point", point, 3)):
        if text is None:
            continue
        try:
            vals = [float(v) for v in text.split(",")]
        except ValueError:
            vals = []
        if len(vals) != n or not all(np.isfinite(vals)):
            form = "z,x0,y0,x1,y1" if kind == "box" else "z,x,y"
            raise UserError(f"--prompt-{kind} must be {n} comma-separated numbers {form}, got {text!r}")
        return kind, vals
    return None


def prompt_to_prepared(kind: str, vals: list[float], geom: CaseGeometry, shape_ijk, source: Path) -> Prompt:
    """Map a prompt in input voxel coordinates onto the prepared grid."""
    z = vals[0]
    if kind == "box":
        x0, y0, x1, y1 = vals[1:]
        if x1 < x0 or y1 < y0:
            raise UserError(f"prompt box needs x0 <= x1 and y0 <= y1, got {vals[1:]}")
        corners = np.array([[x0, y0, z], [x1, y0, z], [x0, y1, z], [x1, y1, z]], dtype=np.float64)
    else:
        corners = np.array([[vals[1], vals[2], z]], dtype=np.float64)
    hi = np.asarray(shape_ijk, dtype=np.float64) - 0.5
    if np.any(corners < -0.5) or np.any(corners > hi):
        raise UserError(f"prompt {vals} lies outside the image (shape {tuple(int(s) for s in shape_ijk)})", source)
    m = np.linalg.inv(np.asarray(geom.prepared_affine)) @ np.asarray(geom.original_affine)
    xyz = (m[:3, :3] @ corners.T).T + m[:3, 3]
    zs = xyz[:, 2]
    if zs.max() - zs.min() > 0.5:
        raise UserError(f"the prompt is not on one axial slice of this image (orientation {geom.original_axcodes}); "
                        "z must be the axis across axial slices", source)
    nz, ny, nx = geom.prepared_shape_zyx
    k = int(round(float(zs.mean())))
    if not 0 <= k < nz:
        raise UserError(f"prompt slice z={z:g} lies outside the body crop the model sees", source)
    xs = np.clip(xyz[:, 0], 0, nx - 1)
    ys = np.clip(xyz[:, 1], 0, ny - 1)
    if kind == "box":
        return Prompt(k, box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    return Prompt(k, point=(float(xs[0]), float(ys[0])))


def predict_file(checkpoint, input_path, output, prompt_box: str | None = None, prompt_point: str | None = None,
                 device: str | None = None, base_weights=None, largest_cc: bool | None = None,
                 passes: str | None = None, series_id: str | None = None, overwrite: bool = False) -> dict:
    from ..data.readers import read_image, write_nifti_like

    output = Path(output)
    if not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise UserError("output must be a NIfTI file ending in .nii.gz or .nii", output)
    if output.is_dir():
        raise UserError("output is a folder; give a file name ending in .nii.gz or .nii", output)
    if output.exists() and not overwrite:
        raise UserError("exists; pass --overwrite to replace it", output)
    if not output.parent.is_dir():
        raise UserError("output folder does not exist", output.parent)
    spec = parse_prompt(prompt_box, prompt_point)
    vol = read_image(input_path, series_id=series_id)
    lm = load_model(checkpoint, device, base_weights)
    if spec and not lm.model.accepts_prompts:
        raise UserError("this is a unet3d model, which takes no prompts: leave out --prompt-box/--prompt-point",
                        checkpoint)
    settings = InferenceSettings.from_config(lm.config, lm.target).but(largest_component=largest_cc,
                                                                        prompted_passes=passes)
    t0 = time.perf_counter()
    prep = Preprocessing.from_config(lm.config, lm.target)(vol.data, None, vol.affine)
    image_zyx, geom = prep.image, prep.geometry
    prompt = prompt_to_prepared(spec[0], spec[1], geom, vol.data.shape, Path(input_path)) if spec else None
    stats: dict = {}
    mask = predict_volume(lm, image_zyx, geom, settings, prompt, f"predict {Path(input_path).name}", stats)
    write_nifti_like(mask, vol, output)
    seconds = time.perf_counter() - t0
    info = {
        "input": str(input_path), "output": str(output), "target": lm.target, "variant": lm.variant,
        "mode": "prompted" if prompt else "auto", "voxels": int(mask.sum()),
        "volume_ml": float(mask.sum() * np.prod(vol.spacing) / 1000.0), "seconds": seconds,
        "slices": stats.get("slices"), "feature_cache": fmt_bytes(stats.get("feature_cache_bytes", 0)),
    }
    log.info("%s: %s mode, %d voxels (%.1f ml), %.1f s, feature cache %s", output.name, info["mode"],
             info["voxels"], info["volume_ml"], seconds, info["feature_cache"])
    return info


def fmt_bytes(n: int) -> str:
    if n <= 0:
        return "0 B"
    units = ["B", "KB", "MB", "GB", "TB"]
    i = min(len(units) - 1, int(math.log(n, 1024)))
    return f"{n / 1024 ** i:.1f} {units[i]}"
