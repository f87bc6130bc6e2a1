"""Report section *What the new heads learned* (stub)."""

from __future__ import annotations

from .collect import TargetResults


def context(res: TargetResults, gate_open_ratio: float) -> dict:
    return {"show": False, "note": "no head statistics in these training logs"}
