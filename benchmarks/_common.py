"""Shared plumbing for the benchmark scripts.

Every ``bench_*.py`` prints human-readable lines as it goes and, for each claim it
measures, one machine-readable line via :func:`emit`::

    BENCH {"what": ..., "ours": ..., "baseline": ..., "baseline_name": ..., "ratio": ...,
           "unit": ..., "better": "higher"|"lower", "machine": ..., "note": ...}

``benchmarks/run_all.py`` runs the scripts, collects these lines and writes the table in
``benchmarks/RESULTS.md``. A script may also leave a Markdown section (a table that does
not fit the ours/baseline/ratio shape, e.g. the quality benchmark) with
:func:`write_section`; run_all.py puts it below the table.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

SECTIONS = Path(__file__).resolve().parent / "sections"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line naming the hardware a figure was measured on."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU), torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def emit(what: str, ours: float, baseline: float, baseline_name: str, unit: str, *, better: str = "lower",
         ratio: float | None = None, machine_desc: str | None = None, note: str = "") -> float:
    """Print one result line. ``ratio`` defaults to the factor by which ours is better
    (baseline/ours when lower is better, ours/baseline when higher is better)."""
    if better not in ("lower", "higher"):
        raise ValueError("better must be 'lower' or 'higher'")
    if ratio is None:
        ratio = baseline / ours if better == "lower" else ours / baseline
    rec = {"what": what, "ours": float(ours), "baseline": float(baseline), "baseline_name": baseline_name,
           "ratio": float(ratio), "unit": unit, "better": better, "machine": machine_desc or machine(),
           "note": note}
    print("BENCH " + json.dumps(rec), flush=True)
    return float(ratio)


def write_section(name: str, markdown: str) -> Path:
    """Leave a Markdown section for RESULTS.md (benchmarks/sections/<name>.md)."""
    SECTIONS.mkdir(exist_ok=True)
    path = SECTIONS / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(markdown.rstrip() + "\n")
    tmp.replace(path)
    return path
