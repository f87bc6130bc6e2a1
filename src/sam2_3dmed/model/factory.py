"""Build a model from the ``model`` section of a (variant-applied) config.

Both kinds of model (``arch: sam2_3dmed``, :class:`~.network.SAM23dMed`, and ``arch:
unet3d``, the MONAI U-Net reference) offer the same small interface, :class:`VolumeModel`,
which is all that training, inference and evaluation call.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

from .network import SAM23dMed


class VolumeModel(Protocol):
    """What the stages after the model use of a network."""

    #: box/point prompts on a slice (SAM2-3dMed) or none (the U-Net)
    accepts_prompts: bool
    #: how a whole volume is predicted: SAM2 memory propagation both ways, or sliding windows
    #: (``sam2_3dmed.infer`` implements both)
    inference: Literal["propagation", "sliding_window"]
    #: the square in-plane size slices are fitted to
    image_size: int

    def forward_clip(self, images: torch.Tensor, key_index=None, prompt=None) -> dict:
        """A training clip (B, D, 3, S, S) -> {"mask_logits", "obj_logits", "srpp", "bd_logits"}
        (heads a model lacks are None)."""


def encoder_frozen(mcfg: dict) -> bool:
    """``freeze_encoder: auto`` freezes a pretrained encoder and trains a random one."""
    f = mcfg["freeze_encoder"]
    return bool(mcfg["pretrained"]) if f == "auto" else bool(f)


def build_model(mcfg: dict, device: str | torch.device = "cpu", clip_length: int | None = None) -> VolumeModel:
    """The network of ``mcfg["arch"]``; ``clip_length`` (train.clip_length) sets the
    U-Net's sliding-window depth and is required for ``arch: unet3d``."""
    from .backbone import build_sam2_base

    if mcfg.get("arch", "sam2_3dmed") == "unet3d":
        from .unet3d import UNet3DBaseline

        if clip_length is None:
            raise ValueError("build_model: the unet3d architecture needs clip_length")
        return UNet3DBaseline(mcfg["image_size"], clip_length, mcfg["unet_channels"], mcfg["unet_strides"]).to(device)

    checkpoint = mcfg["checkpoint"] if mcfg["pretrained"] else None
    sam = build_sam2_base(mcfg["backbone"], mcfg["image_size"], device=device, checkpoint=checkpoint)
    model = SAM23dMed(
        sam,
        adapter=mcfg["adapter"], srpp=mcfg["srpp"], bd=mcfg["bd"], bd_fusion=mcfg["bd_fusion"],
        freeze_encoder=encoder_frozen(mcfg), adapter_blocks=mcfg["adapter_blocks"],
        srpp_layers=mcfg["srpp_layers"], srpp_heads=mcfg["srpp_heads"], srpp_token_dim=mcfg["srpp_token_dim"],
        bd_hidden=mcfg["bd_hidden"],
    )
    return model.to(device)
