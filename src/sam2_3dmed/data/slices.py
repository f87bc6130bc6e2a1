"""In-plane geometry between a prepared slice (H, W) and the model's square input (S, S).

Training, evaluation and ``predict`` all go through these functions, so a prediction made
on the model's input grid maps back onto the prepared grid exactly as the input was made:

* :func:`fit_to_square` scales a stack of slices so that the longer side becomes ``S``
  (aspect ratio kept, ``align_corners=False``, anti-aliased when shrinking) and pads the
  shorter side symmetrically with 0 (the lower end of the HU window);
* :func:`unfit` crops the padding off and resizes back to (H, W) (probability maps);
* :func:`to_sam_input` repeats a [0, 1] slice to 3 channels and applies SAM2's ImageNet
  normalisation.

Pixel coordinates follow the usual image convention: ``x`` = column, ``y`` = row, and
integer coordinates are pixel *centres*. :meth:`FitInfo.map_xy` / :meth:`FitInfo.unmap_xy`
move points between the two grids with the same (align_corners=False) mapping that the
resampling uses, so a pixel centre lands on the position its value was resampled to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODES = ("bilinear", "nearest", "mask")


@dataclass(frozen=True)
class FitInfo:
    """How a (H, W) slice was placed into the (size, size) input. JSON-serialisable."""

    height: int
    width: int
    size: int
    scaled_height: int
    scaled_width: int
    pad_top: int
    pad_left: int

    @property
    def pad_bottom(self) -> int:
        return self.size - self.scaled_height - self.pad_top

    @property
    def pad_right(self) -> int:
        return self.size - self.scaled_width - self.pad_left

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Input pixels per prepared pixel along x (columns) and y (rows)."""
        return self.scaled_width / self.width, self.scaled_height / self.height

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitInfo":
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})

    def map_xy(self, xy) -> np.ndarray:
        """Prepared-slice pixel coordinates (..., 2) as (x, y) -> input (S x S) coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = self.scale_xy
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5 + self.pad_left
        out[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5 + self.pad_top
        return out.astype(np.float32)

    def unmap_xy(self, xy) -> np.ndarray:
        """Input (S x S) coordinates (..., 2) as (x, y) -> prepared-slice pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = self.scale_xy
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.pad_left + 0.5) / sx - 0.5
        out[..., 1] = (xy[..., 1] - self.pad_top + 0.5) / sy - 0.5
        return out.astype(np.float32)


def fit_info(height: int, width: int, size: int) -> FitInfo:
    """The placement of a (height, width) slice into a (size, size) square."""
    height, width, size = int(height), int(width), int(size)
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"need positive sizes, got slice {height}x{width} and input size {size}")
    scale = size / max(height, width)
    sh = min(size, max(1, int(round(height * scale))))
    sw = min(size, max(1, int(round(width * scale))))
    return FitInfo(height, width, size, sh, sw, (size - sh) // 2, (size - sw) // 2)


def _as_float_tensor(slices) -> torch.Tensor:
    if isinstance(slices, torch.Tensor):
        t = slices
    else:
        arr = np.asarray(slices)
        if arr.dtype != np.float32 or not arr.flags.writeable:  # e.g. a read-only float16 memmap
            arr = arr.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if t.ndim != 3:
        raise ValueError(f"expected (D, H, W) slices, got shape {tuple(t.shape)}")
    return t


def _resize(t: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """(D, H, W) float32 -> (D, h, w). ``mask`` = bilinear (anti-aliased) then >= 0.5."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if tuple(t.shape[-2:]) == tuple(hw):
        out = t
    elif mode == "nearest":
        # "nearest-exact" samples pixel centres (the align_corners=False convention);
        # torch's plain "nearest" is off by half a pixel.
        out = F.interpolate(t[:, None], size=hw, mode="nearest-exact")[:, 0]
    else:
        shrink = hw[0] < t.shape[-2] or hw[1] < t.shape[-1]
        out = F.interpolate(t[:, None], size=hw, mode="bilinear", align_corners=False, antialias=shrink)[:, 0]
    if mode == "mask":
        out = (out >= 0.5).to(torch.float32)
    return out


def fit_to_square(slices, size: int, mode: str = "bilinear") -> tuple[torch.Tensor, FitInfo]:
    """(D, H, W) array or tensor -> ((D, size, size) float32 tensor, FitInfo).

    ``mode``: ``bilinear`` for images and probability maps, ``nearest`` or ``mask``
    (bilinear + 0.5 threshold, smoother edges when enlarging) for binary masks.
    """
    t = _as_float_tensor(slices)
    info = fit_info(t.shape[-2], t.shape[-1], size)
    scaled = _resize(t, (info.scaled_height, info.scaled_width), mode)
    out = F.pad(scaled, (info.pad_left, info.pad_right, info.pad_top, info.pad_bottom), value=0.0)
    return out.contiguous(), info


def unfit(maps, info: FitInfo, mode: str = "bilinear") -> torch.Tensor:
    """(D, S, S) maps on the input grid -> (D, H, W) on the prepared grid (inverse of fit)."""
    t = _as_float_tensor(maps)
    if tuple(t.shape[-2:]) != (info.size, info.size):
        raise ValueError(f"expected (D, {info.size}, {info.size}) maps, got {tuple(t.shape)}")
    crop = t[:, info.pad_top:info.pad_top + info.scaled_height, info.pad_left:info.pad_left + info.scaled_width]
    return _resize(crop, (info.height, info.width), mode).contiguous()


def to_sam_input(slices01: torch.Tensor) -> torch.Tensor:
    """(..., S, S) values in [0, 1] -> (..., 3, S, S) float32 with SAM2's ImageNet normalisation."""
    x = torch.as_tensor(slices01, dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x.unsqueeze(-3) - mean) / std
