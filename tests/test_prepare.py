"""`prepare` end to end on small MSD-layout tasks, and its refusals of bad input."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.data.preprocess import to_original
from sam2_3dmed.errors import UserError

from _volumes import ellipsoid_case, make_task, oblique_affine, save

LPS = np.diag([-1.0, -1.0, 1.0])


def small_cases(n=6):
    cases = {}
    for i in range(n):
        perm = LPS if i % 2 else None
        aff = oblique_affine(spacing=(0.7 + 0.05 * i, 0.7 + 0.05 * i, 2.0 + 0.5 * i), perm_flip=perm, angle=0.0)
        img, lab, aff = ellipsoid_case(shape=(64, 60, 24), affine=aff, radii_mm=(12, 10, 15), seed=i)
        cases[f"spleen_{i}"] = (img, lab, aff)
    return cases


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides={"splits": {"folds": 2, "test_fraction": 0.2}})


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("raw"), cases=small_cases())


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sam2_3dmed.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_prepare_outputs(task, cfg, tmp_path):
    out = prepare_target(task, "spleen", tmp_path / "spleen", cfg)
    fp = json.loads((out / "fingerprint.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert fp["summary"]["n_cases"] == 6 and fp["summary"]["n_empty_labels"] == 0
    assert fp["summary"]["original_axcodes"] == {"RAS": 3, "LPS": 3}
    assert plan["target_config"]["labels"] == [1]
    # splits: 1 test case, 2 folds that partition the other 5, each validated once
    assert len(splits["test"]) == 1 and len(splits["folds"]) == 2
    vals = sorted(c for f in splits["folds"] for c in f["val"])
    assert vals == sorted(set(fp_c["case_id"] for fp_c in fp["cases"]) - set(splits["test"]))
    for f in splits["folds"]:
        assert not set(f["train"]) & set(f["val"])
    # arrays: memory-mapped, (z, y, x), float16 in [0, 1], labels {0, 1}; no temp leftovers
    image, label, geom = PreparedTarget(out).case("spleen_1")
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    assert image.shape == label.shape == geom.prepared_shape_zyx
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert set(np.unique(label)) == {0, 1}
    assert [p.name for p in tmp_path.iterdir()] == ["spleen"]
    # round trip of every prepared label to its original file
    for rec in fp["cases"]:
        _, lab, g = PreparedTarget(out).case(rec["case_id"])
        orig = nib.load(str(task / rec["label"]))
        back = to_original(np.asarray(lab), g)
        ref = np.asarray(orig.dataobj) > 0
        assert back.shape == ref.shape
        d = 2 * (back.astype(bool) & ref).sum() / (back.sum() + ref.sum())
        assert d >= 0.99, rec["case_id"]
        # the organ's slices on the prepared grid, for training's clip sampler
        z = np.flatnonzero(np.asarray(lab).any(axis=(1, 2)))
        assert rec["label_slice_range_prepared"] == [int(z[0]), int(z[-1])], rec["case_id"]
        assert 0 < z[0] and z[-1] < lab.shape[0] - 1  # a range inside the volume, not the whole of it


def test_prepare_is_deterministic(task, cfg, tmp_path):
    a = prepare_target(task, "spleen", tmp_path / "a", cfg)
    b = prepare_target(task, "spleen", tmp_path / "b", cfg)
    assert (a / "fingerprint.json").read_text().replace(str(a), "") == (b / "fingerprint.json").read_text().replace(str(b), "")
    assert (a / "splits.json").read_text() == (b / "splits.json").read_text()


def test_existing_output_is_kept_unless_overwrite(task, cfg, tmp_path):
    out = tmp_path / "spleen"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        prepare_target(task, "spleen", out, cfg)
    assert (out / "precious.txt").read_text() == "mine"
    prepare_target(task, "spleen", out, cfg, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "fingerprint.json").is_file()


def test_empty_label_warns_and_counts(tmp_path, cfg, caplog):
    cases = small_cases()
    img, lab, aff = cases["spleen_2"]
    cases["spleen_2"] = (img, np.zeros_like(lab), aff)
    task = make_task(tmp_path / "raw", cases=cases)
    out = prepare_target(task, "spleen", tmp_path / "out", cfg)
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["summary"]["n_empty_labels"] == 1 and fp["summary"]["empty_label_cases"] == ["spleen_2"]
    ranges = {c["case_id"]: c["label_slice_range_prepared"] for c in fp["cases"]}
    assert ranges["spleen_2"] is None and all(r is not None for c, r in ranges.items() if c != "spleen_2")
    assert PreparedTarget(out).label_slice_ranges()["spleen_2"] == (-1, -1)


def test_wrong_task_for_target(task, cfg, tmp_path):
    with pytest.raises(UserError, match="needs Task07_Pancreas"):
        prepare_target(task, "pancreas", tmp_path / "x", cfg)


# ------------------------------------------------------------------ bad input via the CLI
def _corrupt(task, kind):
    """Damage one case of a fresh task copy in the way ``kind`` names; return the bad file."""
    img_p = task / "imagesTr" / "spleen_3.nii.gz"
    lab_p = task / "labelsTr" / "spleen_3.nii.gz"
    img, lab, aff = small_cases()["spleen_3"]
    if kind == "truncated":
        raw = img_p.read_bytes()
        img_p.write_bytes(raw[: len(raw) // 2])
        return img_p
    if kind == "not_gzip":
        img_p.write_bytes(b"this is not an image at all")
        return img_p
    if kind == "shape_mismatch":
        save(lab_p, lab[:-2], aff, np.uint8)
        return lab_p
    if kind == "affine_mismatch":
        shifted = aff.copy()
        shifted[0, 3] += 5.0
        save(lab_p, lab, shifted, np.uint8)
        return lab_p
    if kind == "4d":
        save(img_p, np.stack([img, img], axis=-1), aff, np.float32)
        return img_p
    if kind == "nan":
        bad = img.copy()
        bad[3, 3, 3] = np.nan
        save(img_p, bad, aff, np.float32)
        return img_p
    if kind == "bad_label_value":
        bad = lab.copy()
        bad[0, 0, 0] = 7
        save(lab_p, bad, aff, np.uint8)
        return lab_p
    if kind == "missing_file":
        img_p.unlink()
        return task / "dataset.json"
    raise AssertionError(kind)


BAD = {
    "truncated": "corrupt",
    "not_gzip": "cannot read",
    "shape_mismatch": "differs from image shape",
    "affine_mismatch": "label affine differs",
    "4d": "expected a 3D volume",
    "nan": "NaN/inf",
    "bad_label_value": "not in the task's label map",
    "missing_file": "does not exist",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_one_line_error_no_outputs(kind, tmp_path):
    task = make_task(tmp_path / "raw", cases=small_cases())
    bad_file = _corrupt(task, kind)
    out = tmp_path / "prepared" / "spleen"
    r = run_cli("prepare", task, "--target", "spleen", "--out", out)
    assert r.returncode == 1, r.stderr
    err_lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    error_lines = [ln for ln in err_lines if ln.startswith("error:")]
    assert len(error_lines) == 1, r.stderr
    assert bad_file.name in error_lines[0] and BAD[kind] in error_lines[0], error_lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    parent = tmp_path / "prepared"
    assert not parent.exists() or list(parent.iterdir()) == []  # no temp folder left either


def test_debug_flag_shows_traceback(tmp_path):
    task = make_task(tmp_path / "raw", cases=small_cases())
    _corrupt(task, "nan")
    r = run_cli("--debug", "prepare", task, "--target", "spleen", "--out", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_target_cli(task, tmp_path):
    r = run_cli("prepare", task, "--target", "liver", "--out", tmp_path / "o")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown target 'liver'")
    assert not (tmp_path / "o").exists()


def test_too_few_cases_for_folds(task, tmp_path):
    cfg = load_config(overrides={"splits": {"folds": 10, "test_fraction": 0.0}})
    with pytest.raises(UserError, match="too few for 10 folds"):
        prepare_target(task, "spleen", tmp_path / "o", cfg)
    assert not (tmp_path / "o").exists()
