"""Evaluation: 3D (and clearly labelled slice-wise 2D) segmentation metrics in mm, never NaN."""
