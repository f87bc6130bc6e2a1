"""Model layer: the SAM2.1 backbone at any image size, SAM2-3dMed and its heads, the U-Net reference, losses, prompts, checkpoints, pretrained weights."""
