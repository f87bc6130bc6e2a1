"""Clips of consecutive axial slices from prepared volumes, for training SAM2-3dMed.

:class:`ClipDataset` is indexed by a *global sample index* ``i`` in ``0 .. length-1``
and ``dataset[i]`` is a pure function of ``(seed, i)``: every random draw comes from
``np.random.default_rng((seed, i))`` (torch noise from a generator seeded by it), never
from global RNG state. A training run resumed at step ``k`` therefore sees exactly the
samples it would have seen, whatever the number of DataLoader workers.

Per sample:

1. a case, uniformly over ``case_ids``;
2. a window of ``D = clip_length`` consecutive slices: with probability ``fg_share`` a
   window overlapping the organ's z-range (if the case has foreground), else uniform;
   a volume shorter than ``D`` is padded by repeating its last slice (``valid`` False);
3. only those slices are read from the memory-mapped arrays;
4. the clip is reversed with probability ``reverse_prob`` [ours, method.md decision 6];
5. :func:`fit_to_square` to S x S, intensity augmentation on the [0, 1] image content
   (not the padding), then one in-plane affine (rotation, isotropic scale, optional left-right flip) shared by all
   slices of the clip (bilinear for the image, nearest for the mask);
6. :func:`to_sam_input` (3 channels, ImageNet normalisation), and the key slice (largest
   cross-section in the clip: the trainer's prompts go there, ``model/prompts.py``).

A sample holds what the trainer uses and nothing else: ``image`` (D, 3, S, S), ``mask``
(D, S, S), ``valid`` (D,) (False on padding slices), ``slice_index`` (D,) and ``z_mm`` (D,)
(the slices' positions, for the SRPP targets), ``key_index`` (-1 without foreground).

Augmentations are in-plane and respect anatomy: no left-right flip unless ``flip_lr``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import defaults
from ..console import log
from ..data.prepared import PreparedTarget
from ..data.slices import fit_to_square, to_sam_input
from ..errors import ConfigError, InputFileError, UserError

def resolve_augment(augment) -> dict | None:
    """None or True -> the built-in defaults (``train.augment`` of defaults.yaml); False ->
    no augmentation; a dict -> merged over the defaults and checked."""
    base = defaults()["train"]["augment"]
    if augment is False:
        return None
    if augment is None or augment is True:
        return base
    if not isinstance(augment, dict):
        raise ConfigError(f"augment: expected a mapping, false or null, got {type(augment).__name__}")
    unknown = sorted(set(augment) - set(base))
    if unknown:
        raise ConfigError(f"augment.{unknown[0]}: unknown key (known: {', '.join(base)})")
    cfg = {**base, **augment}
    for key in ("scale", "intensity_scale"):
        lo, hi = (float(v) for v in cfg[key])
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.{key}: need 0 < low <= high, got {cfg[key]}")
    for key in ("p", "p_intensity"):
        if not 0.0 <= float(cfg[key]) <= 1.0:
            raise ConfigError(f"augment.{key}: must be in [0, 1], got {cfg[key]}")
    for key in ("rotate_deg", "intensity_shift", "noise_std"):
        if float(cfg[key]) < 0:
            raise ConfigError(f"augment.{key}: must be >= 0, got {cfg[key]}")
    return cfg


# ----------------------------------------------------------------- augmentation
def intensity_augment(image: torch.Tensor, factor: float, shift: float, noise_std: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``clip(image * factor + shift + N(0, noise_std), 0, 1)`` on [0, 1] slices."""
    out = image * factor + shift
    if noise_std > 0:
        out = out + noise_std * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out.clamp_(0.0, 1.0)


def affine_theta(angle_deg: float, scale: float, flip_lr: bool = False) -> torch.Tensor:
    """(2, 3) theta for ``affine_grid`` on a square image: output -> input sampling coords.

    Content is rotated by ``angle_deg`` and zoomed by ``scale`` (> 1 enlarges) about the
    image centre; ``flip_lr`` mirrors the columns.
    """
    a = math.radians(angle_deg)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    m = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32)
    if flip_lr:
        m[:, 0] = -m[:, 0]
    return m


def spatial_augment(image: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one in-plane affine to all slices of a (D, S, S) clip: bilinear image, nearest mask."""
    d, h, w = image.shape
    grid = F.affine_grid(theta[None], [1, d, h, w], align_corners=False)
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    msk = F.grid_sample(mask[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return img, msk


# ----------------------------------------------------------------- dataset
@dataclass(frozen=True)
class _CaseMeta:
    n_slices: int
    spacing: tuple[float, float, float]  # (x, y, z) mm
    fg_lo: int  # first / last slice with foreground; -1 if none
    fg_hi: int


def _scan_label(label, chunk: int = 32) -> tuple[int, int]:
    """First and last slice with foreground, reading the memmap a few slices at a time."""
    present = np.zeros(label.shape[0], dtype=bool)
    for z in range(0, label.shape[0], chunk):
        block = np.asarray(label[z:z + chunk])
        present[z:z + chunk] = block.reshape(block.shape[0], -1).any(axis=1)
    idx = np.flatnonzero(present)
    return (int(idx[0]), int(idx[-1])) if idx.size else (-1, -1)


def _check_shapes(image, label, where: Path) -> None:
    if image.ndim != 3 or image.shape != label.shape:
        raise InputFileError(f"image {image.shape} and label {label.shape} must be equal (z, y, x) arrays", where)


class ClipDataset(Dataset):
    """Clips of ``clip_length`` consecutive slices; ``dataset[i]`` depends only on (seed, i)."""

    def __init__(self, prepared: PreparedTarget | str | Path, case_ids, clip_length: int, image_size: int,
                 length: int, seed: int = 0, fg_share: float = 0.8, reverse_prob: float = 0.5,
                 augment: dict | bool | None = None):
        self.prepared = prepared if isinstance(prepared, PreparedTarget) else PreparedTarget(prepared)
        self.case_ids = [str(c) for c in case_ids]
        if not self.case_ids:
            raise UserError("no cases to sample clips from", self.prepared.path)
        if int(clip_length) < 1:
            raise ConfigError(f"clip_length: must be >= 1, got {clip_length}")
        if int(image_size) < 1:
            raise ConfigError(f"image_size: must be >= 1, got {image_size}")
        if int(length) < 1:
            raise ConfigError(f"length: must be >= 1, got {length}")
        if int(seed) < 0:
            raise ConfigError(f"seed: must be >= 0, got {seed}")
        for name, v in (("fg_share", fg_share), ("reverse_prob", reverse_prob)):
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {v}")
        self.clip_length = int(clip_length)
        self.image_size = int(image_size)
        self.length = int(length)
        self.seed = int(seed)
        self.fg_share = float(fg_share)
        self.reverse_prob = float(reverse_prob)
        self.augment = resolve_augment(augment)
        # The organ's slices come from fingerprint.json (prepare stores them): no label is
        # read here. Each image is memory-mapped (its header only) and its geometry read, so
        # a broken case is a one-line error now rather than in a DataLoader worker later.
        ranges = self.prepared.label_slice_ranges()
        unique = list(dict.fromkeys(self.case_ids))
        scan = [cid for cid in unique if cid not in ranges]
        if scan:
            log.info("%s: fingerprint.json has no label_slice_range_prepared for %d of %d cases (prepared by an "
                     "older version): reading their labels to find the organ's slices; re-run prepare to skip this",
                     self.prepared.path, len(scan), len(unique))
        self.meta: dict[str, _CaseMeta] = {}
        for cid in unique:
            if cid in ranges:
                image, geom = self.prepared.case_image(cid)
                lo, hi = ranges[cid]
                if image.ndim != 3 or image.shape != tuple(self.prepared.case_record(cid)["prepared_shape_zyx"]):
                    raise InputFileError(f"image {image.shape} differs from prepared_shape_zyx in fingerprint.json; "
                                         "re-run prepare", self.prepared.path / "cases" / cid / "image.npy")
            else:
                image, label, geom = self.prepared.case(cid, mmap=True)
                _check_shapes(image, label, self.prepared.path / "cases" / cid)
                lo, hi = _scan_label(label)
            sp = tuple(float(s) for s in geom.resampled_spacing)
            self.meta[cid] = _CaseMeta(int(image.shape[0]), sp, lo, hi)
        self._open: dict = {}  # per-process cache of memory-mapped arrays

    # memmaps are re-opened in each worker, never pickled (pickling one copies the array)
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def __len__(self) -> int:
        return self.length

    def arrays(self, case_id: str):
        """(image, label) memory-mapped arrays of a case (opened once per process)."""
        if case_id not in self._open:
            image, label, _ = self.prepared.case(case_id, mmap=True)
            _check_shapes(image, label, self.prepared.path / "cases" / case_id)
            self._open[case_id] = (image, label)
        return self._open[case_id]

    def read_window(self, case_id: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Slices ``start:stop`` as float32 image and uint8 label; reads only those slices."""
        image, label = self.arrays(case_id)
        return np.array(image[start:stop], dtype=np.float32), np.array(label[start:stop], dtype=np.uint8)

    def _window_start(self, rng: np.random.Generator, meta: _CaseMeta) -> int:
        z, d = meta.n_slices, self.clip_length
        want_fg = rng.random() < self.fg_share
        if z <= d:
            return 0
        if want_fg and meta.fg_lo >= 0:
            lo, hi = max(0, meta.fg_lo - d + 1), min(z - d, meta.fg_hi)
            return int(rng.integers(lo, hi + 1))
        return int(rng.integers(0, z - d + 1))

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        if not 0 <= i < self.length:
            raise IndexError(f"sample index {i} out of range 0..{self.length - 1}")
        rng = np.random.default_rng((self.seed, i))
        cid = self.case_ids[int(rng.integers(len(self.case_ids)))]
        meta = self.meta[cid]
        d, s = self.clip_length, self.image_size

        start = self._window_start(rng, meta)
        stop = min(meta.n_slices, start + d)
        image_np, label_np = self.read_window(cid, start, stop)
        n = stop - start
        index = np.concatenate([np.arange(start, stop), np.full(d - n, stop - 1)]).astype(np.int64)
        valid = np.arange(d) < n
        if n < d:  # pad by repeating the last slice
            image_np, label_np = image_np[index - start], label_np[index - start]
        rev = bool(rng.random() < self.reverse_prob)
        if rev:
            index, valid = index[::-1].copy(), valid[::-1].copy()
            image_np, label_np = image_np[::-1], label_np[::-1]
        image = torch.from_numpy(np.ascontiguousarray(image_np))
        label = torch.from_numpy(np.ascontiguousarray(label_np))

        image, info = fit_to_square(image, s, mode="bilinear")
        mask, _ = fit_to_square(label, s, mode="mask")
        aug = self.augment
        if aug is not None and rng.random() < aug["p_intensity"]:
            factor = rng.uniform(*aug["intensity_scale"])
            shift = rng.uniform(-aug["intensity_shift"], aug["intensity_shift"])
            sigma = rng.uniform(0.0, aug["noise_std"])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            # on the fitted image's content only: the padding stays 0, as at inference
            content = image[:, info.pad_top:info.pad_top + info.scaled_height,
                            info.pad_left:info.pad_left + info.scaled_width]
            content.copy_(intensity_augment(content, factor, shift, sigma, gen))
        if aug is not None and rng.random() < aug["p"]:
            angle = rng.uniform(-aug["rotate_deg"], aug["rotate_deg"])
            scale = rng.uniform(*aug["scale"])
            flip = bool(aug["flip_lr"]) and bool(rng.random() < 0.5)
            image, mask = spatial_augment(image, mask, affine_theta(angle, scale, flip))

        areas = mask.flatten(1).sum(1)
        present = areas > 0
        areas = torch.where(torch.from_numpy(valid), areas, torch.full_like(areas, -1.0))
        key = int(torch.argmax(areas)) if bool(present[torch.from_numpy(valid)].any()) else -1
        return {
            "image": to_sam_input(image),
            "mask": mask,
            "valid": torch.from_numpy(valid),
            "slice_index": torch.from_numpy(index),
            "z_mm": torch.from_numpy((index.astype(np.float64) * meta.spacing[2]).astype(np.float32)),
            "key_index": torch.tensor(key, dtype=torch.int64),
        }
