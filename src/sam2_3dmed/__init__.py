"""SAM2-3dMed: SAM2 adapted to 3D medical volumes, as a reproducible pipeline."""

__version__ = "0.1.0"
