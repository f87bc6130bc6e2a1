"""Resizing that stays deterministic on a GPU (``train.deterministic``).

PyTorch has no deterministic CUDA backward for bilinear ``interpolate`` or for
``adaptive_avg_pool2d``: with ``torch.use_deterministic_algorithms(True)`` both raise when
differentiated on a GPU. Where that would happen (a CUDA tensor that needs a gradient, with
deterministic algorithms on) these functions compute the same thing another way: bilinear
resizing as two matrix products with the interpolation weights (``align_corners=False``,
PyTorch's index arithmetic), adaptive average pooling by an integer factor as
``avg_pool2d``. Everywhere else they are the plain PyTorch calls, so results on a CPU do not
change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _deterministic_grad_on_gpu(x: torch.Tensor) -> bool:
    return x.is_cuda and x.requires_grad and torch.is_grad_enabled() and torch.are_deterministic_algorithms_enabled()


def interp_matrix(n_in: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation as ``F.interpolate(mode="linear",
    align_corners=False, size=n_out)`` computes it: source ``(i + 0.5) * n_in / n_out - 0.5``,
    clamped at 0, its two neighbours (the upper one clamped at ``n_in - 1``)."""
    i = torch.arange(n_out, dtype=torch.float64)
    src = ((i + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    l1 = src - i0.double()
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    a.index_put_((torch.arange(n_out), i0), 1.0 - l1, accumulate=True)
    a.index_put_((torch.arange(n_out), i1), l1, accumulate=True)
    return a.to(device=device, dtype=dtype)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], force_matrix: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for (N, C, H, W);
    as matrix products where the plain call would have no deterministic backward (or with
    ``force_matrix``)."""
    if not (force_matrix or _deterministic_grad_on_gpu(x)):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    ah = interp_matrix(x.shape[-2], size[0], x.device, x.dtype)
    aw = interp_matrix(x.shape[-1], size[1], x.device, x.dtype)
    return ah @ x @ aw.T


def adaptive_avg_pool(x: torch.Tensor, size: tuple[int, int], force_pool: bool = False) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; as ``avg_pool2d`` by the integer factor where the
    plain call would have no deterministic backward (or with ``force_pool``). A size that does
    not divide the input is then an error: there is no deterministic form of it."""
    if not (force_pool or _deterministic_grad_on_gpu(x)):
        return F.adaptive_avg_pool2d(x, size)
    (h, w), (oh, ow) = x.shape[-2:], size
    if h % oh or w % ow:
        raise RuntimeError(f"adaptive average pooling {h}x{w} -> {oh}x{ow} has no deterministic CUDA backward "
                           "(not an integer factor); set train.deterministic: false")
    return F.avg_pool2d(x, kernel_size=(h // oh, w // ow))
