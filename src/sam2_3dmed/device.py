"""Where a model runs, and what it cost in memory: shared by training, inference and evaluation."""

from __future__ import annotations

import os
import socket

import torch

from .console import peak_rss_mb
from .errors import UserError


def pick_device(requested: str | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise the named device (checked)."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        why = ("this torch has no CUDA support" if torch.version.cuda is None
               else f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
        job = os.environ.get("SLURM_JOB_ID")
        where = f"{socket.gethostname()}" + (f", SLURM job {job}" if job else "")
        raise UserError(f"--device {requested}: no CUDA device on {where} ({why}); request a GPU, "
                        "or set run.device: auto (or cpu) to run on CPUs")
    try:
        return torch.device(requested)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {requested!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocated memory, or on CPU the process's peak resident set size (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return peak_rss_mb()
