"""sam2-3dmed checkpoints: the format, saving, loading, and the trainable subset.

A checkpoint (``best.pt``/``last.pt``) holds only the *trainable* tensors, plus the names
of the frozen ones, the optimiser/scheduler/RNG state (``last.pt``), the full
variant-applied config and the run's metadata (target, variant, fold, run key, ...).
Frozen tensors (a pretrained SAM2 encoder) come from the SAM2 weights the model was built
from; loading asserts that everything not stored is frozen in the model, as SAM2's own
trainer does. Loading never unpickles code (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..config import deep_merge, defaults
from ..device import pick_device, rng_state
from ..errors import InputFileError, UserError
from .backbone import safe_torch_load
from .factory import VolumeModel, build_model

CKPT_FORMAT = "sam2_3dmed-checkpoint-v1"


def trainable_state(model: torch.nn.Module) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, cfg: dict, meta: dict) -> None:
    state = {
        "format": CKPT_FORMAT,
        "step": step,
        "trainable": trainable_state(model),
        "frozen_names": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),  # as before: what older code reads
        "rng": rng_state(_device_of(model)),  # CPU and (on a GPU) CUDA streams
        "config": cfg,
        **meta,
    }
    # through a Python file: a full disk then raises OSError (a path gives torch's bare RuntimeError)
    with atomic_file(path) as tmp, tmp.open("wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise InputFileError(f"not a sam2-3dmed checkpoint (expected format {CKPT_FORMAT})", path)
    cfg = state.get("config")
    checks = {
        "config": isinstance(cfg, dict) and all(isinstance(cfg.get(s), dict) for s in ("model", "targets")),
        "trainable": isinstance(state.get("trainable"), dict),
        "step": isinstance(state.get("step"), int),
        "target": isinstance(state.get("target"), str),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise InputFileError(f"incomplete sam2-3dmed checkpoint: {', '.join(bad)} missing or malformed", path)
    return state


def load_trainable(model: torch.nn.Module, state: dict, path: str | Path = "checkpoint") -> None:
    """Load trainable weights strictly; everything not stored must be frozen in ``model``."""
    params = dict(model.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    have = set(state["trainable"])
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise InputFileError(
            f"checkpoint does not match the model: {len(missing)} missing ({', '.join(missing[:3])}) "
            f"and {len(extra)} unexpected ({', '.join(extra[:3])}) trainable tensors", path)
    with torch.no_grad():
        for n, t in state["trainable"].items():
            if params[n].shape != t.shape:
                raise InputFileError(f"tensor {n} has shape {tuple(t.shape)}, model expects {tuple(params[n].shape)}", path)
            params[n].copy_(t)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file (hex), read in blocks: recorded for the SAM2 weights a model was
    trained on top of, and checked when the model is loaded again."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    model: VolumeModel
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
