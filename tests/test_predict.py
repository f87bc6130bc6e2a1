"""predict: prompts in input voxels, output on the input grid, post-processing, refusals.

The network's quality is tested with a trained model in test_learning.py; here a small
randomly initialised checkpoint (64 px) exercises the real command, and an oracle in
place of the network (bright voxels = organ) checks the geometry chain in isolation:
any orientation or resampling error shows up as a shifted or flipped mask.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.data.preprocess import Preprocessing, prepare_arrays
from sam2_3dmed.errors import UserError
from sam2_3dmed.infer import inference as I
from sam2_3dmed.infer import predict as P
from sam2_3dmed.infer import user_prompts as U
from sam2_3dmed.infer.inference import dice
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.prompts import box_from_mask, key_slice
from sam2_3dmed.model.checkpoint import load_model, save_checkpoint

from _cli import one_line_error, run_cli
from _volumes import ellipsoid_case, oblique_affine, save

LPS = np.diag([-1.0, -1.0, 1.0])
SLICE_FIRST = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # array axis 0 runs along S


def small_cfg():
    cfg = load_config(None, {"model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1},
                             "targets": {"spleen": {"spacing_mm": [1.5, 1.5]}}})
    return variant_config(cfg, "full")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = small_cfg()
    torch.manual_seed(0)
    model = build_model(cfg["model"])
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model, None, None, 0, cfg, {"target": "spleen", "variant": "full", "fold": 0})
    return path


def case(affine, shape=(80, 72, 24)):
    image, label, aff = ellipsoid_case(shape=shape, affine=affine, radii_mm=(20, 15, 25))
    return image, label, aff


def cfg_prep(image, label, affine, cfg):
    t = cfg["targets"]["spleen"]
    return prepare_arrays(image, label, affine, spacing_mm=t["spacing_mm"], slice_spacing_mm=None,
                          hu_window=t["hu_window"], crop_margin_mm=t["crop_margin_mm"], crop_to_body=True,
                          body_threshold_hu=-500, target_labels=[1])


# ---------------------------------------------------------------- prompts
@pytest.mark.parametrize("perm_flip", [None, LPS])
def test_box_prompt_in_input_voxels_lands_on_the_organ(perm_flip):
    cfg = small_cfg()
    image, label, aff = case(oblique_affine(perm_flip=perm_flip))
    prep = cfg_prep(image, label, aff, cfg)
    k = label.shape[2] // 2
    ii, jj = np.nonzero(label[:, :, k])
    specs = U.parse_prompts([f"{k},{ii.min()},{jj.min()},{ii.max()},{jj.max()}"])
    [prompt] = U.prompts_to_prepared(specs, prep.geometry, label.shape, Path("x.nii.gz"))
    # the same slice of the prepared label has (almost) the same box
    ref = box_from_mask(prep.label[prompt.slice_index] > 0)
    assert np.allclose(prompt.box, ref, atol=1.6), (prompt.box, ref)


def test_point_prompt_and_refusals():
    cfg = small_cfg()
    image, label, aff = case(oblique_affine(perm_flip=LPS))
    prep = cfg_prep(image, label, aff, cfg)
    c = np.array(label.shape) // 2
    [p] = U.prompts_to_prepared(U.parse_prompts(points=[f"{c[2]},{c[0]},{c[1]}"]), prep.geometry, label.shape,
                                Path("x"))
    assert prep.label[p.slice_index, int(round(p.point[1])), int(round(p.point[0]))] == 1
    with pytest.raises(UserError, match="outside the image"):
        U.prompts_to_prepared([U.UserPrompt("point", c[2], (500, 3))], prep.geometry, label.shape, Path("x"))
    with pytest.raises(UserError, match="x0 <= x1"):
        U.prompts_to_prepared([U.UserPrompt("box", 3, (10, 10, 5, 20))], prep.geometry, label.shape, Path("x"))
    for box, point in ((["1,2,3"], []), (["a,b,c,d,e"], []), ([], ["1,2,nan"])):
        with pytest.raises(UserError):
            U.parse_prompts(box, point)


def test_prompt_must_lie_on_an_axial_slice():
    cfg = small_cfg()
    image, label, aff = case(oblique_affine(perm_flip=SLICE_FIRST, spacing=(3.0, 0.8, 0.8), angle=0.0), shape=(24, 72, 80))
    prep = cfg_prep(image, label, aff, cfg)
    with pytest.raises(UserError, match="not on one axial slice"):
        U.prompts_to_prepared([U.UserPrompt("box", 40, (5, 10, 15, 30))], prep.geometry, label.shape, Path("x"))


# ---------------------------------------------------------------- post-processing
def test_largest_component():
    m = np.zeros((20, 20, 20), np.uint8)
    m[2:5, 2:5, 2:5] = 1
    m[10:16, 10:16, 10:16] = 1
    m[16, 16, 16] = 1  # touches the big one by a corner: 26-connected
    out = I.largest_component(m)
    assert out.sum() == 6 ** 3 + 1 and out[3, 3, 3] == 0
    assert I.largest_component(np.zeros((4, 4, 4), np.uint8)).sum() == 0


# ---------------------------------------------------------------- geometry chain with an oracle
@pytest.mark.parametrize("perm_flip,spacing", [(None, (0.7, 0.74, 3.0)), (LPS, (0.9, 0.8, 2.5)),
                                               (SLICE_FIRST, (3.0, 0.8, 0.8))])
def test_prediction_returns_on_the_input_grid(perm_flip, spacing, checkpoint, monkeypatch):
    """Oracle network (prepared intensity above the organ's level): the written mask must
    overlay the input's organ voxel for voxel, whatever the orientation."""
    shape = (24, 72, 80) if perm_flip is SLICE_FIRST else (80, 72, 24)
    image, label, aff = case(oblique_affine(perm_flip=perm_flip, spacing=spacing), shape=shape)
    lm = load_model(checkpoint, "cpu")
    lo, hi = lm.config["targets"]["spleen"]["hu_window"]

    def oracle(models, image_zyx, prompts_by_mode, *args, **kw):
        return {m: (np.asarray(image_zyx) > (80 - lo) / (hi - lo)).astype(np.float32) for m in prompts_by_mode}

    monkeypatch.setattr(I, "predict_prepared_modes", oracle)
    prep = Preprocessing.from_config(lm.config, "spleen")(image, None, aff)
    mask = I.predict_volume(lm, prep.image, prep.geometry, I.InferenceSettings.from_config(lm.config, "spleen"))
    assert mask.shape == label.shape
    assert dice(mask, label) > 0.97


# ---------------------------------------------------------------- the command
def test_predict_cli_nifti_lps_oblique(checkpoint, tmp_path):
    image, label, aff = case(oblique_affine(perm_flip=LPS))
    src = save(tmp_path / "ct.nii.gz", image, aff, np.int16)
    out = tmp_path / "mask.nii.gz"
    r = run_cli("predict", checkpoint, src, out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    img = nib.load(str(out))
    assert img.shape == image.shape and np.allclose(img.affine, aff, atol=1e-5)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS" and img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1}
    # prompted mode, and refusing to overwrite
    k = label.shape[2] // 2
    ii, jj = np.nonzero(label[:, :, k])
    box = f"{k},{ii.min()},{jj.min()},{ii.max()},{jj.max()}"
    err = one_line_error(run_cli("predict", checkpoint, src, out, "--prompt-box", box))
    assert "exists" in err and str(out) in err
    r = run_cli("predict", checkpoint, src, out, "--prompt-box", box, "--overwrite", "--passes", "full")
    assert r.returncode == 0 and "prompted mode" in r.stderr, r.stderr


def test_predict_cli_refusals(checkpoint, tmp_path):
    image, label, aff = case(oblique_affine())
    src = save(tmp_path / "ct.nii.gz", image, aff, np.int16)
    cases = [
        ((checkpoint, src, tmp_path / "mask.png"), "NIfTI"),
        ((tmp_path / "none.pt", src, tmp_path / "m.nii.gz"), "does not exist"),
        ((checkpoint, tmp_path / "none.nii.gz", tmp_path / "m.nii.gz"), "does not exist"),
        ((checkpoint, src, tmp_path / "no" / "m.nii.gz"), "folder does not exist"),
        ((checkpoint, src, tmp_path / "m.nii.gz", "--prompt-box", "1,2,3"), "--prompt-box"),
        ((checkpoint, src, tmp_path / "m.nii.gz", "--passes", "both"), "--passes"),
        ((src, src, tmp_path / "m.nii.gz"), "not a valid PyTorch checkpoint"),
    ]
    for args, words in cases:
        assert words in one_line_error(run_cli("predict", *args)), args
    assert not list(tmp_path.glob("m.nii*")) and not (tmp_path / "mask.png").exists()
