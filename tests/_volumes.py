"""Small helpers shared by tests: write NIfTI volumes and minimal MSD task folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def oblique_affine(spacing=(0.7, 0.74, 3.0), perm_flip=None, angle=0.1, origin=(10.0, -20.0, 30.0)):
    """A voxel->world affine with anisotropic spacing, permuted/flipped axes and a tilt."""
    r = np.eye(3) if perm_flip is None else np.asarray(perm_flip, dtype=float)
    c, s = np.cos(angle), np.sin(angle)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rz @ r @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def ellipsoid_case(shape=(150, 140, 40), affine=None, radii_mm=(30, 20, 40), seed=0):
    """HU image + label (1 inside an ellipsoid centred in the volume, in voxel mm)."""
    affine = oblique_affine() if affine is None else affine
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.array(shape) / 2.0
    d = sum(((g - ci) * s / r) ** 2 for g, ci, s, r in zip((ii, jj, kk), c, sp, radii_mm))
    label = (d < 1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0)
    image[10:-10, 10:-10, :] = 40.0
    image[label > 0] = 110.0
    image += rng.normal(0, 10, shape)
    return image.astype(np.float32), label, affine


def save(path, data, affine, dtype=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data if dtype is None else data.astype(dtype))
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def make_task(root, name="Task09_Spleen", cases=None, labels=None):
    """Write an MSD-layout task folder from {case_id: (image, label, affine)}."""
    root = Path(root) / name
    labels = labels or {"0": "background", "1": "spleen"}
    training = []
    for cid, (img, lab, aff) in (cases or {}).items():
        save(root / "imagesTr" / f"{cid}.nii.gz", img, aff, np.int16)
        save(root / "labelsTr" / f"{cid}.nii.gz", lab, aff, np.uint8)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    ds = {"name": name, "labels": labels, "numTraining": len(training), "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(ds, indent=1))
    return root
