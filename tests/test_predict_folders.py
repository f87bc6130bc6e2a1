"""predict on folders (mixed formats, a corrupt file, resume), ensembles (the mean of the
members' probabilities; mismatches refused), saved probabilities, several prompts on the
command line. Small randomly initialised 64 px checkpoints: these tests check the
plumbing exactly (numbers against numbers), not segmentation quality."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.data.preprocess import Preprocessing
from sam2_3dmed.data.readers import write_dicom_series, write_sitk
from sam2_3dmed.errors import UserError
from sam2_3dmed.infer import inference as I
from sam2_3dmed.infer.ensemble import Ensemble, load_ensemble, resolve_checkpoints
from sam2_3dmed.infer.predict import find_cases, probability_path
from sam2_3dmed.model.checkpoint import load_model, save_checkpoint
from sam2_3dmed.model.factory import build_model

from _cli import one_line_error, run_cli
from _volumes import ellipsoid_case, oblique_affine, save


def _cfg(spacing=1.5):
    cfg = load_config(None, {"model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1},
                             "targets": {"spleen": {"spacing_mm": [spacing, spacing]},
                                         "pancreas": {"spacing_mm": [spacing, spacing]}}})
    return variant_config(cfg, "full")


def _checkpoint(path: Path, seed: int, target: str = "spleen", fold: int = 0, spacing: float = 1.5) -> Path:
    cfg = _cfg(spacing)
    torch.manual_seed(seed)
    model = build_model(cfg["model"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, None, None, 0, cfg, {"target": target, "variant": "full", "fold": fold})
    return path


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder of two folds, as the workflow writes it: RUN/fold0/best.pt, RUN/fold1/best.pt."""
    root = tmp_path_factory.mktemp("run")
    _checkpoint(root / "fold0" / "best.pt", seed=0, fold=0)
    _checkpoint(root / "fold1" / "best.pt", seed=1, fold=1)
    return root


def _scan(shape=(72, 64, 20), seed=0):
    image, label, aff = ellipsoid_case(shape=shape, affine=oblique_affine(), radii_mm=(20, 15, 20), seed=seed)
    return image, label, aff


# ---------------------------------------------------------------- case discovery
def test_find_cases_names_formats_and_refusals(tmp_path):
    for name in ("b.nii.gz", "a.nii", "c.nrrd", "d.mha", "e.mhd", "e.raw", "._b.nii.gz", ".hidden.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series1").mkdir()
    (tmp_path / ".git").mkdir()
    assert [n for n, _ in find_cases(tmp_path)] == ["a", "b", "c", "d", "e", "series1"]
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    with pytest.raises(UserError, match="a.nii.gz"):
        find_cases(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no DICOM series and no images"):
        find_cases(empty)
    assert probability_path(Path("o/x.nii.gz")) == Path("o/x_prob.nii.gz")
    assert probability_path(Path("x.nii")) == Path("x_prob.nii")


def test_folder_mixed_formats_corrupt_file_and_resume(run_folder, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    scans = {}
    for i, name in enumerate(["case_a", "case_b", "case_c", "case_d"]):
        scans[name] = _scan(seed=i)
    save(src / "case_a.nii.gz", scans["case_a"][0], scans["case_a"][2], np.int16)
    write_sitk(scans["case_b"][0].astype(np.int16), scans["case_b"][2], src / "case_b.nrrd")
    write_sitk(scans["case_c"][0].astype(np.int16), scans["case_c"][2], src / "case_c.mha")
    write_dicom_series(scans["case_d"][0].astype(np.int16), scans["case_d"][2], src / "case_d")
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (src / "._case_a.nii.gz").write_bytes(b"resource fork")  # as in MSD's tars: not a case
    (src / "README.txt").write_text("not an image")

    r = run_cli("predict", run_folder / "fold0" / "best.pt", src, out, "--device", "cpu")
    err = one_line_error(r)
    assert "1 of 5 case(s) failed" in err and "broken" in err, r.stderr
    assert "broken.nii.gz" in r.stderr  # the case's own line names its file
    written = sorted(p.name for p in out.iterdir())
    assert written == ["case_a.nii.gz", "case_b.nii.gz", "case_c.nii.gz", "case_d.nii.gz"], written
    for name, (image, label, aff) in scans.items():
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == image.shape and img.get_data_dtype() == np.uint8, name
        if name != "case_d":  # DICOM stores the same geometry, possibly with k reversed
            assert np.allclose(img.affine, aff, atol=1e-4), name

    # resume: the written cases are skipped (not rewritten), the broken one fails again
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run_cli("predict", run_folder / "fold0" / "best.pt", src, out, "--device", "cpu")
    assert "1 of 1 case(s) failed" in one_line_error(r)
    assert "4 of 5 case(s) already in" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # fixed input: only the missing case is predicted; --overwrite redoes them all
    (src / "broken.nii.gz").unlink()
    r = run_cli("predict", run_folder / "fold0" / "best.pt", src, out, "--device", "cpu")
    assert r.returncode == 0 and "ok predicted 0 case(s), 4 already there" in r.stderr, r.stderr
    r = run_cli("predict", run_folder / "fold0" / "best.pt", src, out, "--device", "cpu", "--overwrite")
    assert r.returncode == 0 and "ok predicted 4 case(s), 0 already there" in r.stderr, r.stderr
    assert all(p.stat().st_mtime_ns != mtimes[p.name] for p in out.iterdir())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_folder_refusals(run_folder, tmp_path):
    src = tmp_path / "in"
    image, _, aff = _scan()
    save(src / "x.nii.gz", image, aff, np.int16)
    ck = run_folder / "fold0" / "best.pt"
    assert "OUTPUT must be a folder" in one_line_error(run_cli("predict", ck, src, tmp_path / "o.nii.gz"))
    err = one_line_error(run_cli("predict", ck, src, tmp_path / "o", "--prompt-point", "10,30,30"))
    assert "one scan, not a folder" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- ensembles
def test_resolve_checkpoints(run_folder):
    f0, f1 = run_folder / "fold0" / "best.pt", run_folder / "fold1" / "best.pt"
    assert resolve_checkpoints([run_folder]) == [f0, f1]
    assert resolve_checkpoints([run_folder / "fold1", f0]) == [f1, f0]
    with pytest.raises(UserError, match="given twice"):
        resolve_checkpoints([run_folder, f0])
    with pytest.raises(UserError, match="fold\\*/last.pt"):
        resolve_checkpoints([run_folder], which="last")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoints([run_folder / "nope.pt"])


def test_ensemble_probabilities_are_the_mean_of_its_members(run_folder):
    image, _, aff = _scan()
    ens = load_ensemble([run_folder], "cpu")
    assert len(ens) == 2 and ens.folds == [0, 1]
    prep = Preprocessing.from_config(ens.config, "spleen")(image, None, aff)
    settings = I.InferenceSettings.from_config(ens.config, "spleen")
    modes = {"auto": None}
    singles = [I.predict_prepared_modes(m, prep.image, modes, settings)["auto"] for m in ens.members]
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # the members really differ
    fused = I.predict_prepared_modes(ens, prep.image, modes, settings)["auto"]
    np.testing.assert_allclose(fused, (singles[0] + singles[1]) / 2, atol=1e-6)
    # the single-model path is the ensemble of one
    np.testing.assert_array_equal(I.predict_prepared_modes(Ensemble([ens.members[0]]), prep.image, modes,
                                                           settings)["auto"], singles[0])


def test_ensemble_refuses_other_targets_and_preprocessing(run_folder, tmp_path):
    other = _checkpoint(tmp_path / "pancreas.pt", seed=2, target="pancreas")
    with pytest.raises(UserError, match="one target") as e:
        load_ensemble([run_folder / "fold0", other], "cpu")
    assert "pancreas.pt" in str(e.value)
    coarse = _checkpoint(tmp_path / "coarse.pt", seed=3, spacing=2.0)
    with pytest.raises(UserError, match="preprocessing differs.*spacing_mm"):
        load_ensemble([run_folder / "fold0", coarse], "cpu")
    image, _, aff = _scan()
    src = save(tmp_path / "ct.nii.gz", image, aff, np.int16)
    err = one_line_error(run_cli("predict", run_folder / "fold0", src, tmp_path / "m.nii.gz", "--model", other))
    assert "pancreas.pt" in err and "one target" in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_cli_ensemble_with_probabilities(run_folder, tmp_path):
    image, _, aff = _scan()
    src = save(tmp_path / "ct.nii.gz", image, aff, np.int16)
    f0, f1 = run_folder / "fold0" / "best.pt", run_folder / "fold1" / "best.pt"
    probs = {}
    for tag, args in (("a", [f0]), ("b", [f1]), ("ab", [f0, "--model", f1]), ("dir", [run_folder])):
        out = tmp_path / f"{tag}.nii.gz"
        r = run_cli("predict", *args, src, out, "--device", "cpu", "--save-probabilities", "--all-components")
        assert r.returncode == 0, r.stderr
        img = nib.load(str(tmp_path / f"{tag}_prob.nii.gz"))
        assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, aff, atol=1e-5)
        assert img.dataobj.slope == pytest.approx(1 / 255)
        probs[tag] = img.get_fdata()
        mask = np.asarray(nib.load(str(out)).dataobj)
        # the mask is the thresholded probability (to within the stored 1/255 steps)
        p = probs[tag]
        assert np.all(mask[p > 0.5 + 1 / 255] == 1) and np.all(mask[p < 0.5 - 1 / 255] == 0)
    assert 0.0 <= probs["ab"].min() and probs["ab"].max() <= 1.0
    assert np.abs(probs["ab"] - (probs["a"] + probs["b"]) / 2).max() <= 1 / 255 + 1e-6
    np.testing.assert_array_equal(probs["ab"], probs["dir"])  # the run folder = its folds


# ---------------------------------------------------------------- several prompts, end to end
def test_cli_several_prompts(run_folder, tmp_path):
    image, label, aff = _scan()
    src = save(tmp_path / "ct.nii.gz", image, aff, np.int16)
    boxes = []
    for k in (label.shape[2] // 2 - 3, label.shape[2] // 2 + 3):
        ii, jj = np.nonzero(label[:, :, k])
        boxes.append([k, int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())])
    ck = run_folder / "fold0" / "best.pt"
    one = tmp_path / "one.nii.gz"
    r = run_cli("predict", ck, src, one, "--device", "cpu", "--save-probabilities",
                "--prompt-box", ",".join(map(str, boxes[0])))
    assert r.returncode == 0 and "prompted mode" in r.stderr, r.stderr
    spec = tmp_path / "prompts.json"
    spec.write_text(json.dumps({"boxes": boxes, "negatives": [[boxes[1][0], 2, 2]]}))
    two = tmp_path / "two.nii.gz"
    r = run_cli("predict", ck, src, two, "--device", "cpu", "--save-probabilities", "--prompts", spec)
    assert r.returncode == 0 and "prompted mode" in r.stderr, r.stderr
    p1 = nib.load(str(tmp_path / "one_prob.nii.gz")).get_fdata()
    p2 = nib.load(str(tmp_path / "two_prob.nii.gz")).get_fdata()
    k2 = boxes[1][0]
    assert np.abs(p1[:, :, k2] - p2[:, :, k2]).max() > 1 / 255  # the second slice's prompts count
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in one_line_error(run_cli("predict", ck, src, tmp_path / "x.nii.gz", "--prompts", bad))


def test_inference_records_no_autograd_graph(run_folder, monkeypatch):
    """The demo trains its encoder (freeze_encoder: auto with random init): inference must
    still run without autograd, or every slice's activations would be kept (GBs)."""
    ens = load_ensemble([run_folder / "fold0"], "cpu")
    ens.first.model.freeze_encoder = False
    ens.first.model.train()
    seen = []
    real = I.encode_volume

    def spy(*args, **kw):
        seen.append(torch.is_grad_enabled())
        feats, query, info = real(*args, **kw)
        assert not feats.low.requires_grad
        return feats, query, info

    monkeypatch.setattr(I, "encode_volume", spy)
    image, _, aff = _scan()
    prep = Preprocessing.from_config(ens.config, "spleen")(image, None, aff)
    settings = I.InferenceSettings.from_config(ens.config, "spleen")
    I.predict_prepared_modes(ens, prep.image, {"auto": None}, settings)
    assert seen == [False]
    assert ens.first.model.training  # the caller's mode is given back


def test_predict_help_shows_examples_and_the_prompt_file_format():
    r = run_cli("predict", "--help", env={"COLUMNS": "120"})
    assert r.returncode == 0
    for words in ("nnUNetv2_predict", "--save-probabilities", '"boxes": [[z, x0, y0, x1, y1], ...]',
                  "dataobj[x, y, z]", "--prompt-negative"):
        assert words in r.stdout, words
