"""Build a SAM2-3dMed model from the ``model`` section of a (variant-applied) config."""

from __future__ import annotations

import torch

from .network import SAM23dMed


def encoder_frozen(mcfg: dict) -> bool:
    """``freeze_encoder: auto`` freezes a pretrained encoder and trains a random one."""
    f = mcfg["freeze_encoder"]
    return bool(mcfg["pretrained"]) if f == "auto" else bool(f)


def build_model(mcfg: dict, device: str | torch.device = "cpu", clip_length: int | None = None) -> SAM23dMed:
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
