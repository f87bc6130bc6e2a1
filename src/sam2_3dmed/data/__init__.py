"""Data layer: MSD registry, download, synthetic phantoms, I/O, preprocessing, splits."""
