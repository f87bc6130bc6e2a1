"""Whole-volume inference: encode slices once, propagate both ways, map back."""
