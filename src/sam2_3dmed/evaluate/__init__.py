"""Evaluation: score a trained run in 3D, in mm, in the original image space (evaluation.py), with metrics that are never NaN (metrics.py)."""
