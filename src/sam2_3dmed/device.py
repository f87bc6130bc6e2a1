"""Where a model runs, and what it cost in memory: shared by training, inference and evaluation."""

from __future__ import annotations

import os
import socket

import torch

from .console import log, peak_rss_mb
from .errors import UserError

#: what cuBLAS needs for reproducible matmuls (PyTorch's reproducibility notes); set before
#: the first cuBLAS call of the process
CUBLAS_WORKSPACE = ":4096:8"
#: bf16 runs natively from compute capability 8.0 (Ampere) on; older cards emulate it slowly
BF16_MIN_CAPABILITY = (8, 0)
_WARNED: set = set()  # (card, setting) pairs already warned about: once per process, not per volume


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


def describe_gpu(device: torch.device) -> dict:
    """The card a CUDA device is: name, compute capability, memory; {} on a CPU."""
    if device.type != "cuda":
        return {}
    idx = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2 ** 30, 1), "cuda": torch.version.cuda}


def amp_dtype(device: torch.device, amp: bool, what: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype for ``device``: bfloat16 on a GPU that runs it natively (compute
    capability >= 8.0) when ``amp`` is on; None (float32) on a CPU, with ``amp`` off, or on an
    older card, where a warning says so (bf16 there is emulated and slower than float32)."""
    if not amp or device.type != "cuda":
        return None
    capability = torch.cuda.get_device_capability(device)
    if not bf16_native(capability):
        name = torch.cuda.get_device_name(device)
        if (name, what) in _WARNED:
            return None
        _WARNED.add((name, what))
        log.warning("%s: %s (compute capability %d.%d) has no native bfloat16; autocast is off and this "
                    "runs in float32 (set %s: false to silence this)", what, name, *capability, what)
        return None
    return torch.bfloat16


def autocast(device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device`` (what :func:`amp_dtype` chose); None: off."""
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def bf16_native(capability: tuple[int, int]) -> bool:
    return tuple(capability) >= BF16_MIN_CAPABILITY


def set_deterministic(on: bool, device: torch.device) -> None:
    """``train.deterministic``: torch's deterministic algorithms, raising (not warning) on an
    operation that has none; on a GPU also cuBLAS's fixed workspace and cuDNN without
    benchmarking. CUBLAS_WORKSPACE_CONFIG only takes effect before the process's first
    cuBLAS call, so a conflicting value set by the user is an error, not a silent no-op."""
    if not on:
        torch.use_deterministic_algorithms(False)
        return
    if device.type == "cuda":
        have = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if have not in (None, CUBLAS_WORKSPACE, ":16:8"):
            raise UserError(f"train.deterministic needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} (or :16:8); "
                            f"the environment sets {have!r}")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=False)


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on a GPU (Ampere and later): float32 math at tensor-core
    speed, 10-bit mantissa products with float32 accumulation. Not used on a CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def rng_state(device: torch.device) -> dict:
    """The RNG streams a run draws from: the CPU generator, and the GPU's when it runs on
    one (SAM2.1's memory attention uses dropout: on a GPU that stream is the CUDA one)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device, where: str = "checkpoint") -> None:
    """Restore :func:`rng_state`'s streams. A GPU run's checkpoint resumed on a GPU continues
    its CUDA stream; resumed on another kind of device it cannot, and a warning says that the
    run is then no longer the same as an uninterrupted one."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif (device.type == "cuda") != ("cuda" in state):
        log.warning("%s was written on a %s and resumes on a %s: its random streams (dropout) continue "
                    "differently, so the run will not equal an uninterrupted one", where,
                    "GPU" if "cuda" in state else "CPU", "GPU" if device.type == "cuda" else "CPU")
