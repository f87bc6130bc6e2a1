"""Model layer: the SAM2.1 backbone at any image size, checkpoint loading, pretrained weights."""
