"""Report sections *Prompt robustness* and *Direction* (stub)."""

from __future__ import annotations

from .collect import TargetResults


def robustness(res: TargetResults, labels: dict) -> dict:
    return {"show": False, "note": "no prompt-robustness modes in these evaluations"}


def directions(res: TargetResults, labels: dict) -> dict:
    return {"show": False, "note": "no direction modes in these evaluations"}
