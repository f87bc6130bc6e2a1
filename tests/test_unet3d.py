"""The MONAI 3D U-Net reference (``model.arch: unet3d``, variant ``unet3d``): same train,
evaluate and predict commands as SAM2-3dMed, no prompts."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from _cli import one_line_error, run_cli
from _tiny import make_tiny_target, tiny_config
from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.errors import ConfigError
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.checkpoint import load_checkpoint
from sam2_3dmed.train.trainer import module_parameters

OVERRIDES = tiny_config(targets={"spleen": {"spacing_mm": [3.0, 3.0]}}, train={"clip_length": 4, "checkpoint_every": 3},
                        evaluate={"modes": ["auto", "prompted"]})


@pytest.mark.parametrize("d", [4, 5, 6])
def test_forward_shapes_and_parameters(d):
    vcfg = variant_config(load_config(overrides=OVERRIDES), "unet3d")
    model = build_model(vcfg["model"], clip_length=4)
    out = model.forward_clip(torch.rand(2, d, 3, 64, 64))
    assert out["mask_logits"].shape == (2, d, 64, 64)
    assert out["obj_logits"] is None and out["srpp"] is None and out["bd_logits"] is None
    params = module_parameters(model)
    assert set(params) == {"unet3d"} and params["unet3d"]["total"] == sum(p.numel() for p in model.parameters())


def test_pretrained_unet_is_a_config_error():
    cfg = load_config(overrides={**OVERRIDES, "variants": {"u": {"model": {"arch": "unet3d", "pretrained": True}}}})
    with pytest.raises(ConfigError, match="unet3d architecture has no pretrained weights"):
        variant_config(cfg, "u")


@pytest.mark.parametrize("model, match", [
    ({"unet_strides": [[1, 2, 2], [1, 2, 2]]}, "needs 3 entries"),
    ({"unet_strides": [[1, 2, 2], [1, 2, 2], [1, 3, 3]]}, "not divisible"),
])
def test_unet_geometry_is_a_config_error(model, match):
    cfg = load_config(overrides={**OVERRIDES, "model": {**OVERRIDES["model"], **model}})
    with pytest.raises(ConfigError, match=match):
        variant_config(cfg, "unet3d")
    variant_config(cfg, "full")  # SAM-only runs ignore the U-Net's keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tiny = make_tiny_target(tmp_path_factory.mktemp("unet"), OVERRIDES)
    root, cfg_path, prep, task = tiny.root, tiny.cfg_path, tiny.prepared, tiny.task
    env = {"OMP_NUM_THREADS": "1"}
    common = ["--config", cfg_path, "--target", "spleen", "--variant", "unet3d", "--fold", "0", "--prepared", prep,
              "--device", "cpu"]
    full = run_cli("train", *common, "--out", root / "run", env=env)
    assert full.returncode == 0, full.stderr
    return root, cfg_path, prep, task, common, env


@pytest.mark.slow
def test_train_logs_and_resume_equals_uninterrupted(trained):
    root, cfg_path, prep, task, common, env = trained
    rows = list(csv.DictReader((root / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(r["seg"] not in ("", "nan") and r["srpp"] == "" and r["obj"] == "" for r in rows)
    summary = json.loads((root / "run" / "train_summary.json").read_text())
    assert set(summary["parameters_per_module"]) == {"unet3d"} and summary["steps"] == 6
    assert summary["arch"] == "unet3d" and summary["pretrained"] is False

    killed = run_cli("train", *common, "--out", root / "resumed", "--stop-after-step", "4", env=env)
    assert killed.returncode == 75
    resumed = run_cli("train", *common, "--out", root / "resumed", env=env)
    assert resumed.returncode == 0 and "from step 3" in resumed.stderr, resumed.stderr
    a = load_checkpoint(root / "run" / "last.pt")["trainable"]
    b = load_checkpoint(root / "resumed" / "last.pt")["trainable"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_evaluate_skips_prompted_mode(trained):
    root, cfg_path, prep, task, common, env = trained
    out = root / "eval"
    proc = run_cli("evaluate", "--config", cfg_path, "--target", "spleen", "--variant", "unet3d", "--fold", "0",
                   "--run", root / "run", "--prepared", prep, "--out", out, "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "prompted mode skipped" in proc.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and {r["mode"] for r in rows} == {"auto"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"] == ["auto"] and set(summary["metrics"]) == {"auto"}
    assert summary["arch"] == "unet3d" and "no prompts" in summary["modes_skipped"]["prompted"]
    assert 0.0 <= summary["metrics"]["auto"]["dice"]["mean"] <= 1.0


@pytest.mark.slow
def test_predict_writes_input_grid_and_refuses_prompts(trained, tmp_path):
    root, cfg_path, prep, task, common, env = trained
    image = sorted((task / "imagesTr").glob("*.nii.gz"))[0]
    out = tmp_path / "mask.nii.gz"
    proc = run_cli("predict", root / "run" / "best.pt", image, out, "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    src, got = nib.load(image), nib.load(out)
    assert got.shape == src.shape and np.allclose(got.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(got.dataobj))) <= {0, 1}
    refused = run_cli("predict", root / "run" / "best.pt", image, tmp_path / "p.nii.gz", "--prompt-point", "0,1,1",
                      "--device", "cpu", env=env)
    assert "takes no prompts" in one_line_error(refused)
    assert not (tmp_path / "p.nii.gz").exists()
