"""Report section *Boundary*: where each variant's errors lie (stub, filled in by the boundary analysis)."""

from __future__ import annotations

from .collect import TargetResults


def context(res: TargetResults) -> dict:
    return {"show": False, "note": "no boundary analysis in these evaluations"}
