"""The nnU-Net v2 reference arm through the DAG on CPU, at a tiny budget (slow): the
workflow with `variants: [full, nnunet]` and two folds plans with nnU-Net, trains each
fold (2 epochs of 2 iterations), predicts the folds' validation cases, the folds'
ensemble on the held-out test split and the task's imagesTs, scores them with our
metrics in our layout, and reports nnU-Net beside SAM2-3dMed, labelled as a small
budget. The user's own nnUNet_* variables point at folders that must stay untouched.
Then a preempted nnU-Net training resumes from its checkpoint (`--c`)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam2_3dmed.evaluate.metrics import compute_metrics

from _cli import run_cli
from _snakemake import make_project, tiny_workflow_config

pytestmark = pytest.mark.slow

NNUNET = {"epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "planning_processes": 2,
          "augmentation_workers": 0, "mirroring": False}
CONFIG = tiny_workflow_config(
    data={"synthetic": {"cases": 6, "test_cases": 1, "size": 64}},
    splits={"folds": 2, "test_fraction": 0.2, "seed": 0},
    run={"variants": ["full", "nnunet"], "folds": [0, 1]},
    nnunet=NNUNET,
    evaluate={"save_predictions": True},
)
DS = "Dataset009_spleen"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf_nnunet")
    proj = make_project(root / "proj", CONFIG)
    poison = {k: root / "users_own" / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               SAM2_3DMED_NO_PROGRESS="1", **{k: str(v) for k, v in poison.items()})
    proc = subprocess.run(["snakemake", "--cores", "2", "--configfile", "config/run.yaml"], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-6000:])
    return proj, poison


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_nnunet_trained_and_was_validated_on_our_folds_case_for_case(project):
    proj, _ = project
    ours = json.loads((proj / "data/demo/prepared/spleen/splits.json").read_text())
    pre = proj / "data/demo/nnunet/spleen/preprocessed" / DS
    assert json.loads((pre / "splits_final.json").read_text()) == [
        {"train": f["train"], "val": f["val"]} for f in ours["folds"]]
    raw = sorted(p.name.replace("_0000.nii.gz", "") for p in (proj / "data/demo/nnunet/spleen/raw" / DS / "imagesTr").iterdir())
    assert raw == sorted(c for f in ours["folds"] for c in f["val"]) and not set(ours["test"]) & set(raw)
    for k in (0, 1):
        run = proj / f"results/demo/runs/spleen/nnunet/fold{k}"
        ts = json.loads((run / "train_summary.json").read_text())
        # what nnU-Net's own do_split gave its trainer: our fold k, case for case
        assert ts["nnunet"]["splits_used"] == {"train": sorted(ours["folds"][k]["train"]),
                                               "val": sorted(ours["folds"][k]["val"])}
        assert ts["arch"] == "nnunet" and ts["budget_reduced"] and ts["epochs"] == 2 and ts["steps"] == 4
        assert ts["nnunet"]["trainer"] == "nnUNetTrainer" and ts["nnunet"]["configuration"] == "3d_fullres"
        assert ts["nnunet"]["trainer_defaults"] == {"epochs": 1000, "iterations_per_epoch": 250,
                                                    "val_iterations_per_epoch": 50}
        assert (run / f"nnUNet_results/{DS}/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_{k}/checkpoint_final.pth").is_file()
        log = _rows(run / "train_log.csv")
        assert [int(r["epoch"]) for r in log] == [0, 1] and all(np.isfinite(float(r["loss"])) for r in log)
        model = torch.load(run / "model.pt", map_location="cpu", weights_only=True)  # plain values only
        assert model["fold"] == k and model["trainer_name"] == "nnUNetTrainer"


def test_nnunet_is_scored_by_our_metrics_in_our_layout(project):
    proj, _ = project
    runs = proj / "results/demo/runs/spleen"
    ours = json.loads((proj / "data/demo/prepared/spleen/splits.json").read_text())
    for k in (0, 1):
        ev = runs / f"nnunet/fold{k}/eval/val"
        rows, full = _rows(ev / "metrics.csv"), _rows(runs / f"full/fold{k}/eval/val/metrics.csv")
        assert list(rows[0]) == list(full[0])  # the same columns as SAM2-3dMed's evaluation
        assert sorted(r["case_id"] for r in rows) == sorted(ours["folds"][k]["val"])
        assert {r["mode"] for r in rows} == {"auto"}
        summary = json.loads((ev / "summary.json").read_text())
        assert summary["arch"] == "nnunet" and summary["space"] == "original image grid, 3D, mm"
        assert summary["modes"] == ["auto"] and summary["nnunet"]["budget"].startswith("reduced: 2 epochs x 2")
        assert summary["metrics"]["auto"]["dice"]["n"] == len(rows)
        assert json.loads((proj / f"results/demo/metrics/spleen/nnunet/fold{k}_val.json").read_text())["n_cases"] == len(rows)
        # recomputed from the written prediction and the ORIGINAL label, independently of evaluate
        r = rows[0]
        pred = np.asarray(nib.load(ev / "predictions" / f"{r['case_id']}_auto.nii.gz").dataobj) > 0
        lab = nib.load(proj / f"data/demo/raw/Task09_Spleen/labelsTr/{r['case_id']}.nii.gz")
        gt = np.asarray(lab.dataobj) > 0
        inter = np.logical_and(pred, gt).sum()
        dice = 2 * inter / (pred.sum() + gt.sum()) if pred.sum() + gt.sum() else 1.0
        assert float(r["dice"]) == pytest.approx(dice, abs=1e-5)
        assert int(r["pred_voxels"]) == int(pred.sum()) and int(r["gt_voxels"]) == int(gt.sum())
        m = compute_metrics(pred.astype(np.uint8), gt.astype(np.uint8), lab.header.get_zooms()[:3], 1.0)
        assert float(r["hd95"]) == pytest.approx(m["hd95"], rel=1e-4, abs=1e-4)
    ens = json.loads((runs / "nnunet/ensemble/eval/test/summary.json").read_text())
    assert ens["ensemble"]["size"] == 2 and ens["ensemble"]["folds"] == [0, 1] and ens["fold"] is None
    assert [r["case_id"] for r in _rows(runs / "nnunet/ensemble/eval/test/metrics.csv")] == ours["test"]
    test_images = sorted((proj / "data/demo/raw/Task09_Spleen/imagesTs").iterdir())
    written = sorted((runs / "nnunet/ensemble/imagesTs").glob("*.nii.gz"))
    assert [p.name for p in written] == [p.name for p in test_images]
    assert nib.load(written[0]).shape == nib.load(test_images[0]).shape


def test_the_report_shows_nnunet_beside_sam2_3dmed_labelled_as_a_small_budget(project):
    proj, _ = project
    page = (proj / "results/demo/reports/spleen.html").read_text()
    assert 'data-variant="nnunet" data-mode="auto"' in page and 'data-variant="full" data-mode="auto"' in page
    assert "SMALL BUDGET: 2 epochs x 2 iterations instead of the trainer&#39;s 1000 x 250" in page
    assert 'class="banner random budget-banner" data-variant="nnunet"' in page
    assert "nnU-Net, which has no SRPP or BD heads" in page
    assert "budget-banner" in (proj / "results/demo/reports/index.html").read_text()


def test_the_users_own_nnunet_folders_are_never_touched(project):
    _, poison = project
    assert not any(p.exists() for p in poison.values()), poison


def test_a_preempted_nnunet_training_resumes_from_its_checkpoint(project, tmp_path):
    """A kill after epoch 1 of 2 (exit 75, checkpoint_latest.pth written as nnU-Net does
    every save_every epochs), then the same command: nnU-Net's --c continues at epoch 1."""
    proj, _ = project
    cfg = next((proj / "results/demo/configs").glob("*.yaml"))
    out = tmp_path / "fold1"
    args = ["train", "--config", cfg, "--target", "spleen", "--variant", "nnunet", "--fold", "1",
            "--prepared", proj / "data/demo/prepared/spleen", "--out", out, "--device", "cpu"]
    first = run_cli(*args, "--stop-after-step", "1", cwd=proj)
    assert first.returncode == 75, first.stderr[-3000:]
    assert not (out / "train_summary.json").exists()
    ckpt = out / f"nnUNet_results/{DS}/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_1/checkpoint_latest.pth"
    assert ckpt.is_file()
    second = run_cli(*args, cwd=proj)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming nnU-Net spleen/nnunet/fold 1 at epoch 1 of 2" in second.stderr
    ts = json.loads((out / "train_summary.json").read_text())
    assert ts["resumed_from_epoch"] == 1 and ts["epochs"] == 2
    assert [int(r["epoch"]) for r in _rows(out / "train_log.csv")] == [0, 1]
    # other settings: refused without --restart-if-changed, never silently mixed
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace("iterations_per_epoch: 2", "iterations_per_epoch: 3", 1))
    third = run_cli(*[str(other) if a == cfg else a for a in args], cwd=proj)
    assert third.returncode == 1 and "--restart-if-changed" in third.stderr
