import pytest

from sam2_3dmed.data.splits import make_splits
from sam2_3dmed.errors import UserError

IDS = [f"case_{i:02d}" for i in range(23)]


def test_partition_and_determinism():
    s = make_splits(IDS, folds=5, test_fraction=0.2, seed=3)
    assert s == make_splits(list(reversed(IDS)), folds=5, test_fraction=0.2, seed=3)
    assert len(s["test"]) == 5
    vals = [c for f in s["folds"] for c in f["val"]]
    assert sorted(vals + s["test"]) == IDS and len(set(vals)) == len(vals)
    sizes = [len(f["val"]) for f in s["folds"]]
    assert max(sizes) - min(sizes) <= 1
    for f in s["folds"]:
        assert sorted(f["train"] + f["val"]) == sorted(set(IDS) - set(s["test"]))
    assert make_splits(IDS, 5, 0.2, seed=4) != s


def test_no_test_fraction_and_minimum():
    s = make_splits(IDS[:5], folds=5, test_fraction=0.0, seed=0)
    assert s["test"] == [] and all(len(f["val"]) == 1 for f in s["folds"])
    assert len(make_splits(IDS[:6], 2, 0.01, 0)["test"]) == 1  # a positive fraction holds out at least one
    with pytest.raises(UserError, match="too few"):
        make_splits(IDS[:4], folds=5, test_fraction=0.0, seed=0)
