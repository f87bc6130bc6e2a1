"""``sam2-3dmed predict``: a trained checkpoint + one scan -> a label map on the scan's grid.

The chain, every step from the checkpoint's own config:

1. read the scan (NIfTI, NRRD/MHA, or a DICOM series folder: ``data/readers.py``);
2. apply the model's preprocessing (``data/preprocess.prepare_arrays``: reorient to RAS,
   resample in-plane, crop to the body, HU window) and record the geometry;
3. encode each slice once, propagate in both directions, fuse (``infer/volume.py``);
4. map the probability map back through the exact inverse (``to_original``), threshold,
   optionally keep the largest connected component;
5. write a NIfTI with exactly the input's shape and affine (temp file, then rename).

Prompts are given in the input's voxel coordinates: ``x`` = first array index (i),
``y`` = second (j), ``z`` = third (k), 0-based, as in ``nibabel.load(f).dataobj[x, y, z]``.
They are mapped to the prepared grid through the affines, so any orientation works as
long as the prompt lies on one axial slice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..config import defaults, deep_merge, target_config
from ..console import log, new_progress
from ..data.preprocess import CaseGeometry, prepare_arrays, to_original
from ..errors import InputFileError, UserError
from .volume import Prompt, fmt_bytes, predict_prepared


# ---------------------------------------------------------------- model
def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: dict        # the checkpoint's (variant-applied) config, infer defaults filled in
    target: str
    variant: str
    step: int
    path: Path
    device: torch.device
    fold: int | None = None  # the fold it was trained on (its validation cases are unseen)


def load_model(checkpoint: str | Path, device: str | None = None, base_weights: str | Path | None = None) -> LoadedModel:
    """Rebuild the trained model from a ``best.pt``/``last.pt``.

    Checkpoints hold only the trained tensors; a frozen pretrained encoder comes from the
    SAM2 weights file the model was trained from (``model.checkpoint`` in its config, or
    ``base_weights``), checked against the SHA-256 recorded at training time.
    """
    from ..model.factory import build_model
    from ..train.trainer import load_checkpoint, load_trainable, pick_device

    path = Path(checkpoint)
    state = load_checkpoint(path)
    cfg = deep_merge({"infer": defaults()["infer"]}, state["config"])
    if state["target"] not in cfg["targets"]:
        raise InputFileError(f"checkpoint of target {state['target']!r}, which its own config does not define", path)
    mcfg = dict(cfg["model"])
    dev = pick_device(device)
    needs_base = bool(mcfg["pretrained"]) and bool(state.get("frozen_names"))
    if needs_base:
        base = Path(base_weights or mcfg["checkpoint"] or "")
        if not base.is_file():
            raise UserError(
                f"this model was trained on top of SAM2 weights that are not stored in the checkpoint; "
                f"{str(base) or 'model.checkpoint'} does not exist: pass --base-weights (sam2-3dmed fetch-weights)", path)
        want = state.get("base_weights_sha256")
        if want and sha256_file(base) != want:
            raise InputFileError(f"SHA-256 differs from the SAM2 weights this model was trained on ({want[:12]}...)", base)
        mcfg["checkpoint"] = str(base)
    elif mcfg["pretrained"]:
        mcfg["pretrained"] = False  # every tensor is in the checkpoint: skip loading SAM2 weights
    torch.manual_seed(int(cfg["train"]["seed"]))  # a random frozen part is rebuilt exactly as in training
    model = build_model(mcfg, dev, clip_length=cfg["train"]["clip_length"])
    load_trainable(model, state, path)
    model.eval()
    return LoadedModel(model, cfg, str(state["target"]), str(state.get("variant", "?")), int(state["step"]), path, dev,
                       state.get("fold") if isinstance(state.get("fold"), int) else None)


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


# ---------------------------------------------------------------- post-processing
def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary volume (empty stays empty)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(np.uint8, copy=False)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (lab == int(sizes.argmax())).astype(np.uint8)


def preprocess(image: np.ndarray, affine: np.ndarray, cfg: dict, target: str):
    """The model's own preprocessing of one HU volume -> ((z, y, x) image in [0, 1], geometry)."""
    tcfg, pcfg = target_config(cfg, target), cfg["prepare"]
    prep = prepare_arrays(
        image, None, affine,
        spacing_mm=tcfg["spacing_mm"], slice_spacing_mm=tcfg["slice_spacing_mm"],
        hu_window=tcfg["hu_window"], crop_margin_mm=tcfg["crop_margin_mm"],
        crop_to_body=pcfg["crop_to_body"], body_threshold_hu=pcfg["body_threshold_hu"],
        image_interpolation=pcfg["image_interpolation"], label_interpolation=pcfg["label_interpolation"],
        target_labels=tcfg["labels"],
    )
    return prep.image, prep.geometry


def predict_volume(lm: LoadedModel, image_zyx: np.ndarray, geom: CaseGeometry, prompt: Prompt | None = None,
                   largest_cc: bool | None = None, passes: str | None = None, label: str = "predict",
                   stats: dict | None = None) -> np.ndarray:
    """Prepared image + geometry -> uint8 mask on the original grid (with progress bar)."""
    icfg = lm.config["infer"]
    tcfg = target_config(lm.config, lm.target)
    with new_progress() as progress:
        bar = progress.add_task(label, total=None)
        prob = predict_prepared(
            lm.model, image_zyx, prompt, chunk=None if icfg["chunk"] == "auto" else icfg["chunk"], device=lm.device,
            feature_dtype=icfg["feature_dtype"], passes=passes or icfg["prompted_passes"],
            progress=lambda done, total: progress.update(bar, completed=done, total=total), stats=stats,
        )
    mask = to_original(prob, geom, kind="prob") >= icfg["threshold"]
    keep = tcfg.get("largest_component", False) if largest_cc is None else largest_cc
    return largest_component(mask) if keep else mask.astype(np.uint8)


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
    if spec and getattr(lm.model, "is_unet", False):
        raise UserError("this is a unet3d model, which takes no prompts: leave out --prompt-box/--prompt-point",
                        checkpoint)
    t0 = time.perf_counter()
    image_zyx, geom = preprocess(vol.data, vol.affine, lm.config, lm.target)
    prompt = prompt_to_prepared(spec[0], spec[1], geom, vol.data.shape, Path(input_path)) if spec else None
    stats: dict = {}
    mask = predict_volume(lm, image_zyx, geom, prompt, largest_cc, passes, f"predict {Path(input_path).name}", stats)
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
