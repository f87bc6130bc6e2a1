"""Seeded case splits: an optional held-out test set, then K folds over the rest."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def make_splits(case_ids: list[str], folds: int, test_fraction: float, seed: int) -> dict:
    """Return ``{"seed", "n_folds", "test_fraction", "test", "folds": [{"train", "val"}]}``.

    Cases are shuffled with ``seed``; the first ``round(n * test_fraction)`` form the
    test set (at least one when the fraction is positive); the rest are dealt into
    ``folds`` folds of near-equal size. Every non-test case is validated exactly once.
    """
    ids = sorted(case_ids)
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    n_test = int(round(n * test_fraction))
    if test_fraction > 0:
        n_test = max(1, n_test)
    test, rest = sorted(shuffled[:n_test]), shuffled[n_test:]
    if len(rest) < folds:
        raise UserError(
            f"{n} cases leave {len(rest)} after holding out {n_test} for testing: too few for {folds} folds "
            "(lower splits.folds or splits.test_fraction)"
        )
    chunks = np.array_split(np.arange(len(rest)), folds)
    out_folds = []
    for chunk in chunks:
        val = sorted(rest[i] for i in chunk)
        train = sorted(c for c in rest if c not in set(val))
        out_folds.append({"train": train, "val": val})
    return {"seed": seed, "n_folds": folds, "test_fraction": test_fraction, "test": test, "folds": out_folds}
