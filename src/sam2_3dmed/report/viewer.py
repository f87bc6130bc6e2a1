"""Report section *Viewer* (stub)."""

from __future__ import annotations

from .collect import TargetResults


def context(cfg: dict, res: TargetResults, tcfg: dict) -> dict:
    return {"show": False, "note": "the viewer is not built yet"}
