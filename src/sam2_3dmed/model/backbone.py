"""Build Meta's SAM2.1 (``sam2.modeling.sam2_base.SAM2Base``) at any image size and load its weights.

SAM2.1 is configured for 1024-px frames. A smaller ``image_size`` (a multiple of 32)
only changes sizes derived from it (prompt-encoder grid, mask-decoder output) and the
RoPE grid of the memory attention (``feat_sizes = image_size / 16``): the parameter
names and shapes are those of the 1024-px model, so Meta's checkpoints load strictly
into a model of any size. The Hiera window position embedding
(``window_pos_embed_bkg_spatial_size``) is interpolated by Hiera itself and stays as
configured.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..console import log
from ..errors import InputFileError, UserError

# backbone name -> sam2's packaged hydra config (sam2 registers its config module on import)
BACKBONES = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
PATCH_STRIDE = 16  # Hiera's stride at the level memory attention reads
MIN_IMAGE_SIZE = 64
SIZE_MULTIPLE = 32

_BACKBONE_ATTR = "sam2_3dmed_backbone"  # set on built models; names the backbone in load errors
_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")  # what torch's weights-only unpickler refused
_REASON_RE = re.compile(r"(Unsupported operand \d+|Unsupported [^\n]{0,80}|PytorchStreamReader failed [^.\n]{0,100})")


def check_backbone(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    return backbone


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise UserError(f"image size must be an integer, got {image_size!r}")
    if image_size < MIN_IMAGE_SIZE or image_size % SIZE_MULTIPLE:
        raise UserError(
            f"image size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_IMAGE_SIZE}, got {image_size}"
        )
    return image_size


def backbone_label(backbone: str | None) -> str:
    return f"SAM2.1 hiera-{backbone}" if backbone else "SAM2.1"


def _instantiate(backbone: str, image_size: int) -> nn.Module:
    """The SAM2Base of ``backbone`` at ``image_size``, randomly initialised, on the CPU."""
    import sam2  # noqa: F401  (registers sam2's hydra config module on first import)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():  # someone cleared it since
        initialize_config_module("sam2", version_base="1.2")

    check_backbone(backbone)
    check_image_size(image_size)
    f = image_size // PATCH_STRIDE
    overrides = [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
    ]
    cfg = compose(config_name=BACKBONES[backbone], overrides=overrides)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    setattr(model, _BACKBONE_ATTR, backbone)
    return model


def build_sam2_base(
    backbone: str = "tiny",
    image_size: int = 128,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
):
    """Build SAM2.1 ``backbone`` for ``image_size``-px frames on ``device``, in eval mode.

    ``checkpoint`` is a SAM2.1 file in Meta's format (``{"model": state_dict}``) or a
    bare state dict, loaded strictly. Without one the model is randomly initialised,
    which is announced loudly: results are then not comparable to the paper.
    Returns a ``sam2.modeling.sam2_base.SAM2Base``; callers call ``train()`` themselves.
    """
    check_backbone(backbone)
    check_image_size(image_size)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"invalid device {device!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} requested but no CUDA GPU is available")
    model = _instantiate(backbone, image_size)
    if checkpoint is None:
        log.warning(
            "RANDOM INITIALISATION: %s was built WITHOUT pretrained SAM2 weights (no checkpoint given); "
            "results are NOT comparable to the paper. Run `sam2-3dmed fetch-weights sam2.1_hiera_%s` "
            "and pass the checkpoint.",
            backbone_label(backbone),
            backbone,
        )
    else:
        load_sam2_checkpoint(model, checkpoint)
    return model.to(device).eval()


# --- checkpoints ---------------------------------------------------------------


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    m = _REASON_RE.search(text)
    if m:
        return m[1].rstrip(" .")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:100]}" if first else type(exc).__name__


def _corrupt(exc: BaseException) -> str:
    return f"not a valid PyTorch checkpoint, corrupt or truncated ({_short_reason(exc)})"


def safe_torch_load(path: str | Path, label: str | None = None):
    """``torch.load(weights_only=True)`` with every failure as a one-line InputFileError.

    A file holding code (pickled callables) is refused without running anything;
    missing, empty, truncated or garbage files get their own messages.
    """
    path = Path(path)
    label = str(path) if label is None else label
    if not path.exists():
        raise InputFileError("checkpoint file does not exist", label)
    if path.is_dir():
        raise InputFileError("is a folder, not a checkpoint file", label)
    try:
        if path.stat().st_size == 0:
            raise InputFileError("checkpoint file is empty", label)
        with warnings.catch_warnings():
            # torch warns about pickle protocols etc.; the outcome is reported below
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except InputFileError:
        raise
    except pickle.UnpicklingError as exc:
        m = _GLOBAL_RE.search(str(exc))
        if m:
            raise InputFileError(
                f"refused: the file contains executable objects, not just weights ({m[1]}); nothing was run",
                label,
            ) from None
        raise InputFileError(_corrupt(exc), label) from None
    except OSError as exc:
        raise InputFileError(f"cannot read the checkpoint ({exc.strerror or exc})", label) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError,
            AttributeError, OverflowError) as exc:  # fmt: skip
        # torch raises all of these for garbage, truncated or bit-flipped files
        raise InputFileError(_corrupt(exc), label) from None
    return obj


def read_state_dict(path: str | Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a SAM2 checkpoint file, read with ``weights_only=True``.

    Accepts Meta's format ``{"model": state_dict}`` and a bare state dict. Every
    problem is a one-line :class:`InputFileError` naming ``label`` (default: the path).
    """
    label = str(path) if label is None else label
    obj = safe_torch_load(path, label)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # Meta's format
    if not isinstance(obj, dict) or not obj:
        kind = "an empty dict" if isinstance(obj, dict) else type(obj).__name__
        raise InputFileError(f"not a SAM2 checkpoint: holds {kind}, not a state dict", label)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputFileError(
            f"not a SAM2 checkpoint: {len(bad)} entries are not named tensors (e.g. {str(bad[0])[:60]!r})", label
        )
    return obj


def _names(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ..." if len(keys) > n else shown


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Raise a one-line InputFileError unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatches (e.g. {k}: file {list(state[k].shape)}, "
            f"model {list(expected[k].shape)})"
        )
    what = backbone_label(getattr(model, _BACKBONE_ATTR, None))
    raise InputFileError(f"not a {what} checkpoint: {'; '.join(problems)}", label)


def load_sam2_checkpoint(model: nn.Module, path: str | Path, label: str | None = None) -> nn.Module:
    """Load a SAM2.1 checkpoint into ``model`` strictly (same keys, same shapes); return ``model``.

    ``label`` names the file in error messages (default: the path).
    """
    label = str(path) if label is None else label
    state = read_state_dict(path, label)
    check_state_dict(model, state, label)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtypes that cannot be copied
        raise InputFileError(f"cannot load the weights ({_short_reason(exc)})", label) from None
    log.debug("loaded %d tensors from %s", len(state), label)
    return model


# --- cost reports ------------------------------------------------------------------


def count_parameters(module: nn.Module) -> dict:
    """Parameter counts: ``{"total", "trainable", "children": {name: {"total", "trainable"}}}``.

    ``children`` lists every top-level child (for SAM2: image_encoder, memory_attention,
    memory_encoder, sam_prompt_encoder, sam_mask_decoder, ...) and, under ``"(own)"``,
    the parameters registered on ``module`` itself, so the children add up to the total
    (a parameter shared between children is counted under the first one).
    """

    def counts(params) -> dict:
        total = trainable = 0
        for p in params:
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        return {"total": total, "trainable": trainable}

    seen: set[int] = set()

    def unique(params):
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    children = {name: counts(unique(child.parameters())) for name, child in module.named_children()}
    own = counts(unique(module.parameters(recurse=False)))
    if own["total"]:
        children["(own)"] = own
    out = counts(module.parameters())
    out["children"] = children
    return out
