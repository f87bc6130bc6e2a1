"""Build a SAM2-3dMed model from the ``model`` section of a (variant-applied) config."""

from __future__ import annotations

import torch

from .network import SAM23dMed


def encoder_frozen(mcfg: dict) -> bool:
    """``freeze_encoder: auto`` freezes a pretrained encoder and trains a random one."""
    f = mcfg["freeze_encoder"]
    return bool(mcfg["pretrained"]) if f == "auto" else bool(f)


def build_model(mcfg: dict, device: str | torch.device = "cpu") -> SAM23dMed:
    from .backbone import build_sam2_base

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
