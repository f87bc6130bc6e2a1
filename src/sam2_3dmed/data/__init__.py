"""Data layer: MSD registry, download, synthetic phantoms, I/O, preprocessing and its inverse, resampling, prepare and the reader of prepared folders, splits."""
