"""Synthetic MSD tasks: layout, determinism, HU, spacing, orientation and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sam2_3dmed.cli import main
from sam2_3dmed.data import synth
from sam2_3dmed.data.msd import TASKS, load_dataset_json
from sam2_3dmed.data.synth import synth_case, synth_task
from sam2_3dmed.errors import UserError

SIZE = 64
NOMINAL = {("Task09_Spleen", 1): 110, ("Task07_Pancreas", 1): 90, ("Task07_Pancreas", 2): 35, ("Task06_Lung", 1): 30}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SAM2_3DMED_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def spleen_task(tmp_path_factory):
    os.environ["SAM2_3DMED_NO_PROGRESS"] = "1"
    out = tmp_path_factory.mktemp("synth")
    return synth_task("Task09_Spleen", out, cases=3, test_cases=1, seed=0, size=SIZE)


def _arrays(img):
    return np.asarray(img.dataobj)


def _world_centroid(mask, affine):
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _slice_axis(img):
    return int(np.argmax(img.header.get_zooms()[:3]))


# --------------------------------------------------------------------------- layout


def test_layout_and_dataset_json(spleen_task):
    root = spleen_task
    assert root.name == "Task09_Spleen" and root.is_dir()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "temporary dir left behind"
    raw = json.loads((root / "dataset.json").read_text())
    for key in ("name", "description", "reference", "licence", "release", "tensorImageSize",
                "modality", "labels", "numTraining", "numTest", "training", "test"):
        assert key in raw, key
    assert raw["tensorImageSize"] == "3D" and raw["modality"] == {"0": "CT"}
    assert raw["labels"] == {str(k): v for k, v in TASKS["Task09_Spleen"].labels.items()}
    assert raw["synthetic"] is True and raw["seed"] == 0
    assert raw["numTraining"] == 3 and raw["numTest"] == 1
    assert raw["training"][0] == {"image": "./imagesTr/spleen_0.nii.gz", "label": "./labelsTr/spleen_0.nii.gz"}
    assert raw["test"] == ["./imagesTs/spleen_3.nii.gz"]

    index = load_dataset_json(root)
    assert [c.case_id for c in index.training] == ["spleen_0", "spleen_1", "spleen_2"]
    assert [c.case_id for c in index.test] == ["spleen_3"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"spleen_{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [f"spleen_{i}.nii.gz" for i in range(3)]
    assert [p.name for p in (root / "imagesTs").iterdir()] == ["spleen_3.nii.gz"]

    for case in index.training:
        img, lab = nib.load(case.image), nib.load(case.label)
        assert img.shape == lab.shape and len(img.shape) == 3
        assert np.array_equal(img.affine, lab.affine)
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        for im in (img, lab):
            assert int(im.header["qform_code"]) == 1 and int(im.header["sform_code"]) == 1
            assert np.allclose(im.header.get_qform(), im.header.get_sform(), atol=1e-6)
            assert np.allclose(np.abs(np.linalg.det(im.affine[:3, :3])), np.prod(im.header.get_zooms()))


def test_files_match_independent_cases(spleen_task):
    """A case written by synth_task is exactly synth_case(task, index, seed)."""
    img, lab = synth_case("Task09_Spleen", 2, seed=0, size=SIZE)
    on_disk_img = nib.load(spleen_task / "imagesTr" / "spleen_2.nii.gz")
    on_disk_lab = nib.load(spleen_task / "labelsTr" / "spleen_2.nii.gz")
    assert np.array_equal(_arrays(img), _arrays(on_disk_img))
    assert np.array_equal(_arrays(lab), _arrays(on_disk_lab))
    assert np.array_equal(img.affine, on_disk_img.affine)
    test_img, test_lab = synth_case("Task09_Spleen", 3, seed=0, size=SIZE, labelled=False)
    assert test_lab is None
    assert np.array_equal(_arrays(test_img), _arrays(nib.load(spleen_task / "imagesTs" / "spleen_3.nii.gz")))


def test_existing_output_refused_unless_overwrite(spleen_task):
    before = (spleen_task / "dataset.json").read_text()
    with pytest.raises(UserError, match="already exists"):
        synth_task("Task09_Spleen", spleen_task.parent, cases=1, test_cases=0, size=SIZE)
    assert (spleen_task / "dataset.json").read_text() == before


def test_overwrite_replaces(tmp_path):
    first = synth_task("Task06_Lung", tmp_path, cases=2, test_cases=0, seed=1, size=48)
    again = synth_task("Task06_Lung", tmp_path, cases=1, test_cases=0, seed=2, size=48, overwrite=True)
    assert again == first
    raw = json.loads((again / "dataset.json").read_text())
    assert raw["numTraining"] == 1 and raw["seed"] == 2
    assert sorted(p.name for p in (again / "imagesTr").iterdir()) == ["lung_0.nii.gz"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="Task01_BrainTumour"), "Task01_BrainTumour"),
        (dict(task="Task09_Spleen", cases=0), "cases"),
        (dict(task="Task09_Spleen", test_cases=-1), "test-cases"),
        (dict(task="Task09_Spleen", seed=-3), "seed"),
        (dict(task="Task09_Spleen", size=8), "size"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        synth_task(out=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- content


def test_deterministic_per_seed():
    a_img, a_lab = synth_case("Task07_Pancreas", 1, seed=5, size=SIZE)
    b_img, b_lab = synth_case("Task07_Pancreas", 1, seed=5, size=SIZE)
    assert np.array_equal(_arrays(a_img), _arrays(b_img))
    assert np.array_equal(_arrays(a_lab), _arrays(b_lab))
    assert np.array_equal(a_img.affine, b_img.affine)
    c_img, _ = synth_case("Task07_Pancreas", 1, seed=6, size=SIZE)
    d_img, _ = synth_case("Task07_Pancreas", 2, seed=5, size=SIZE)
    for other in (c_img, d_img):
        assert other.shape != a_img.shape or not np.array_equal(_arrays(other), _arrays(a_img))


@pytest.mark.parametrize("task", ["Task09_Spleen", "Task07_Pancreas", "Task06_Lung"])
def test_labels_hu_and_spacing(task):
    label_values = set(TASKS[task].labels)
    seen = set()
    for i in range(3):
        img, lab = synth_case(task, i, seed=0, size=SIZE)
        image, label = _arrays(img), _arrays(lab)
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= label_values
        seen |= set(np.unique(label).tolist())
        assert np.count_nonzero(label == 1) > 0, "the organ must be present"
        # the organ spans several slices
        ax = _slice_axis(lab)
        other = tuple(a for a in range(3) if a != ax)
        assert np.count_nonzero((label == 1).any(axis=other)) >= 3

        # spacing: in-plane 0.6-1.0 mm (equal), slices 1.5-5 mm, 24..96 slices, size x size
        zooms = np.array(img.header.get_zooms()[:3])
        inplane = [zooms[a] for a in other]
        assert all(0.6 <= z <= 1.0 for z in inplane) and abs(inplane[0] - inplane[1]) < 1e-6
        assert 1.5 <= zooms[ax] <= 5.0
        assert 24 <= img.shape[ax] <= 96 and [img.shape[a] for a in other] == [SIZE, SIZE]
        assert 120 <= img.shape[ax] * zooms[ax] <= 260  # z extent in mm

        # HU: air, bone, organ near its nominal value (interior voxels: no partial volume)
        assert -1024 <= image.min() <= -950
        assert image.max() > 300
        assert np.median(image) < -500  # mostly air around the body
        for value in sorted(set(np.unique(label).tolist()) - {0}):
            mask = label == value
            st = np.zeros((3, 3, 3), bool)
            centre = [slice(None) if a in other else slice(1, 2) for a in range(3)]
            st[tuple(centre)] = True
            interior = ndimage.binary_erosion(mask, st)
            mean = image[interior if interior.any() else mask].mean()
            assert abs(mean - NOMINAL[(task, value)]) < 20, (task, i, value, mean)
    assert 1 in seen


def test_pancreas_tumour_in_most_but_not_all_cases():
    has_tumour = [bool((_arrays(synth_case("Task07_Pancreas", i, seed=0, size=48)[1]) == 2).any()) for i in range(12)]
    assert 6 <= sum(has_tumour) < 12


def test_orientations_are_mixed():
    codes = [nib.aff2axcodes(synth_case("Task09_Spleen", i, seed=0, size=48)[0].affine) for i in range(6)]
    assert len(set(codes)) > 1
    assert any(c != ("R", "A", "S") for c in codes)
    # some cases store the slice axis first or swap the in-plane axes
    assert any(c[2] not in ("S", "I") for c in codes)


@pytest.mark.parametrize("codes", [c for c, _ in synth.ORIENTATIONS])
def test_world_content_is_orientation_independent(monkeypatch, codes):
    """Forcing each layout on the same case gives the same anatomy in world mm."""
    monkeypatch.setattr(synth, "ORIENTATIONS", ((("R", "A", "S"), 1),))
    ref_img, ref_lab = synth_case("Task07_Pancreas", 0, seed=3, size=48)
    monkeypatch.setattr(synth, "ORIENTATIONS", ((codes, 1),))
    img, lab = synth_case("Task07_Pancreas", 0, seed=3, size=48)
    assert nib.aff2axcodes(img.affine) == codes
    assert np.array_equal(img.affine, lab.affine) and img.shape == lab.shape
    # same world position of the label and of every voxel value
    for value in (1, 2):
        if (_arrays(ref_lab) == value).any():
            assert np.allclose(
                _world_centroid(_arrays(lab) == value, lab.affine),
                _world_centroid(_arrays(ref_lab) == value, ref_lab.affine),
                atol=1e-6,
            )
    can_img, can_lab = nib.as_closest_canonical(img), nib.as_closest_canonical(lab)
    assert np.array_equal(_arrays(can_img), _arrays(ref_img))
    assert np.array_equal(_arrays(can_lab), _arrays(ref_lab))
    assert np.allclose(can_img.affine, ref_img.affine, atol=1e-6)


def test_spleen_left_liver_right_in_world():
    """RAS+ world (NIfTI/nibabel): +x points to the patient's Right.

    So the spleen (patient's left) has a smaller world x than the body centre and
    the liver (patient's right) a larger one, whatever layout the file uses.
    """
    for i in range(6):
        img, lab = synth_case("Task09_Spleen", i, seed=0, size=SIZE)
        body = _arrays(img) > -500
        spleen = _arrays(lab) == 1
        body_x = _world_centroid(body, img.affine)[0]
        spleen_w = _world_centroid(spleen, img.affine)
        assert spleen_w[0] < body_x - 5, (i, nib.aff2axcodes(img.affine))
        # the liver (~60 HU, a large region away from the spleen) lies right of the body centre
        can = nib.as_closest_canonical(img)
        a = _arrays(can).astype(np.float32)
        near_spleen = ndimage.binary_dilation(_arrays(nib.as_closest_canonical(lab)) > 0, iterations=4)
        smooth = ndimage.uniform_filter(a, size=(7, 7, 1))  # canonical: axial planes are axes 0, 1
        liverish = (smooth > 52) & (smooth < 70)
        liverish &= (ndimage.uniform_filter(liverish.astype(np.float32), size=3) > 0.5) & ~near_spleen
        liver_x = _world_centroid(liverish, can.affine)[0]
        assert liver_x > body_x + 2, (i, liver_x, body_x)


def test_internal_anatomy_sides():
    """In the RAS phantom itself the liver lies at +x (Right) and the spleen at -x (Left)."""
    for i in range(4):
        rng = np.random.default_rng((0, i))
        g = synth._make_grid(rng, SIZE, "Task09_Spleen")
        tissue = synth._phantom(rng, g, "Task09_Spleen")
        body_x = _world_centroid(tissue != synth.AIR, g.affine)[0]
        assert _world_centroid(tissue == synth.LIVER, g.affine)[0] > body_x
        assert _world_centroid(tissue == synth.SPLEEN, g.affine)[0] < body_x
        assert _world_centroid(tissue == synth.LUNG, g.affine)[2] > _world_centroid(tissue == synth.SPLEEN, g.affine)[2]


def test_nodule_inside_a_lung():
    for i in range(3):
        img, lab = synth_case("Task06_Lung", i, seed=0, size=SIZE)
        image, nodule = _arrays(img), _arrays(lab) == 1
        ring = ndimage.binary_dilation(nodule, iterations=2) & ~ndimage.binary_dilation(nodule)
        assert np.median(image[ring]) < -600  # surrounded by lung


# --------------------------------------------------------------------------- CLI


def test_cli_synth(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        main(["synth", "Task06_Lung", "--out", "o", "--cases", "1", "--test-cases", "1", "--size", "48"])
    except SystemExit as exc:  # typer may or may not exit on success
        assert exc.code in (0, None)
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("ok synthetic Task06_Lung"), err_lines
    assert load_dataset_json(tmp_path / "o" / "Task06_Lung").raw["numTest"] == 1

    # again without --overwrite: a one-line error and a non-zero exit
    with pytest.raises(SystemExit) as exc:
        main(["synth", "Task06_Lung", "--out", "o", "--cases", "1", "--size", "48"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "already exists" in err


def _run_cli(args, cwd):
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1")
    return subprocess.run(
        [sys.executable, "-m", "sam2_3dmed.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_subprocess_unknown_task(tmp_path):
    res = _run_cli(["synth", "Task99_Nothing", "--out", str(tmp_path)], tmp_path)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Task99_Nothing" in res.stderr


def test_cli_ok_line_is_one_line_for_long_paths(tmp_path):
    out = tmp_path / ("long_folder_name_" * 4)
    res = _run_cli(["synth", "Task06_Lung", "--out", str(out), "--cases", "1", "--test-cases", "0", "--size", "32"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(out / "Task06_Lung") in lines[0], lines


# --------------------------------------------------------------------------- msd geometry profile


@pytest.mark.parametrize("task", sorted(synth.MSD_GEOMETRY))
def test_msd_profile_draws_from_the_real_ranges(task):
    geo = synth.MSD_GEOMETRY[task]
    counts, spacings = [], []
    for i in range(40):
        g = synth._make_grid(np.random.default_rng((0, i)), 512, task, "msd", i)
        assert g.shape[:2] == (512, 512)
        assert 0.6 - 1e-3 <= g.spacing[0] == g.spacing[1] <= 0.98 + 1e-3
        assert geo.slices[0] <= g.shape[2] <= geo.slices[1]
        assert geo.spacing_mm[0] - 1e-2 <= g.spacing[2] <= geo.spacing_mm[1] + 1e-2
        counts.append(g.shape[2])
        spacings.append(g.spacing[2])
    assert counts[0] == geo.slices[1] and counts[1] == geo.slices[0]  # the longest and the shortest included
    assert len(set(counts[2:])) > 20  # drawn, not fixed
    assert max(spacings) > min(spacings)


def test_msd_profile_case_content_and_small_profile_unchanged():
    # the longest pancreas (751 slices), at a small matrix to keep the test fast
    img, lab = synth_case("Task07_Pancreas", 0, seed=0, size=32, profile="msd")
    assert max(img.shape) == 751 and img.shape == lab.shape
    assert np.isin(np.asarray(lab.dataobj), [1]).sum() > 0  # the organ is in the volume
    # small stays the default profile
    a, _ = synth_case("Task09_Spleen", 3, seed=0, size=SIZE)
    b, _ = synth_case("Task09_Spleen", 3, seed=0, size=SIZE, profile="small")
    assert np.array_equal(_arrays(a), _arrays(b))
    assert max(a.shape) <= 96


def test_unknown_profile_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="profile 'huge'"):
        synth_task("Task09_Spleen", tmp_path, cases=2, profile="huge")
    assert not any(tmp_path.iterdir())
