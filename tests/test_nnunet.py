"""The nnU-Net v2 reference arm without training: its raw dataset (our cases, our folds,
labels merged as prepare merges them), the checks on a stale plan, the one-line error
without nnunetv2, the real config's DAG with `variants: [full, nnunet]`, and DVC's
outputs. Training, prediction and scoring through the DAG: tests/test_workflow_nnunet.py."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from sam2_3dmed.config import ConfigError, load_config, workflow_config
from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.data.synth import synth_task
from sam2_3dmed.errors import InputFileError, UserError
from sam2_3dmed.nnunet import dataset_name, environment, nnunet_base, nnunet_root
from sam2_3dmed.nnunet.dataset import check_planned, nnunet_splits, write_raw_dataset

from _cli import one_line_error
from _snakemake import job_counts, make_project

REPO = Path(__file__).resolve().parents[1]
CFG = {"splits": {"folds": 2, "test_fraction": 0.2, "seed": 3},
       "targets": {"pancreas": {"spacing_mm": [3.0, 3.0]}}}


@pytest.fixture(scope="module")
def pancreas(tmp_path_factory):
    """A synthetic Task07 (labels 1 pancreas, 2 tumour), 6 cases, prepared as target pancreas."""
    root = tmp_path_factory.mktemp("nnunet")
    task = synth_task("Task07_Pancreas", root / "raw", cases=6, test_cases=0, seed=2, size=48)
    cfg = load_config(None, CFG)
    prep = prepare_target(task, "pancreas", root / "prep", cfg)
    return root, task, cfg, PreparedTarget(prep)


def test_the_raw_dataset_holds_our_folds_case_for_case_and_no_test_case(pancreas):
    root, task, cfg, prep = pancreas
    out = root / "nn" / "raw"
    wrote = write_raw_dataset(cfg, "pancreas", prep, out, out)
    ds = out / "Dataset007_pancreas"
    splits = prep.splits
    assert splits["test"], "the fixture needs a held-out test case"
    # nnU-Net's splits_final.json: our folds, in order, case for case
    theirs = json.loads((ds / "splits_final.json").read_text())
    assert theirs == [{"train": f["train"], "val": f["val"]} for f in splits["folds"]] == wrote["folds"]
    assert len(theirs) == 2
    trainval = sorted({c for f in splits["folds"] for c in f["train"] + f["val"]})
    images = sorted(p.name[: -len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir())
    labels = sorted(p.name[: -len(".nii.gz")] for p in (ds / "labelsTr").iterdir())
    assert images == labels == trainval
    assert not set(splits["test"]) & set(images), "a held-out test case reached nnU-Net's training data"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == len(trainval) and meta["labels"] == {"background": 0, "pancreas": 1}
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    for cid in trainval:
        rec = prep.case_record(cid)
        link = ds / "imagesTr" / f"{cid}_0000.nii.gz"
        assert link.resolve() == (task / rec["image"]).resolve()  # the task's own image, not a copy
        # labels 1 (pancreas) and 2 (tumour) merged to 1, as prepare merges them, on the label's own grid
        orig = nib.load(task / rec["label"])
        merged = nib.load(ds / "labelsTr" / f"{cid}.nii.gz")
        want = np.isin(np.asarray(orig.dataobj), [1, 2]).astype(np.uint8)
        assert np.array_equal(np.asarray(merged.dataobj), want)
        assert np.allclose(merged.affine, orig.affine)
    assert any(np.isin(np.asarray(nib.load(task / prep.case_record(c)["label"]).dataobj), [2]).any()
               for c in trainval), "no tumour voxels: the merge above was not exercised"


def test_a_plan_whose_folds_differ_from_splits_json_is_refused(pancreas, tmp_path):
    root, _, cfg, prep = pancreas
    pre = tmp_path / "preprocessed" / dataset_name(cfg, "pancreas")
    with pytest.raises(UserError, match="not planned"):
        check_planned(cfg, "pancreas", prep, tmp_path)
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text("{}")
    folds = nnunet_splits(prep.splits)
    (pre / "splits_final.json").write_text(json.dumps(folds))
    assert check_planned(cfg, "pancreas", prep, tmp_path) == pre
    swapped = [{"train": folds[0]["train"][1:], "val": folds[0]["val"] + folds[0]["train"][:1]}, folds[1]]
    (pre / "splits_final.json").write_text(json.dumps(swapped))
    with pytest.raises(InputFileError, match="differs from the folds of"):
        check_planned(cfg, "pancreas", prep, tmp_path)


def test_a_fold_holding_a_test_case_is_refused(pancreas, tmp_path):
    _, _, cfg, prep = pancreas
    bad = tmp_path / "prep"
    shutil.copytree(prep.path, bad)
    splits = json.loads((bad / "splits.json").read_text())
    splits["folds"][0]["train"].append(splits["test"][0])
    (bad / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputFileError, match="held-out test case"):
        write_raw_dataset(cfg, "pancreas", PreparedTarget(bad), tmp_path / "raw", tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset007_pancreas" / "splits_final.json").exists()


def test_the_folders_are_ours_and_the_users_own_variables_come_back(tmp_path, monkeypatch):
    cfg = load_config(None, {"data": {"prepared": str(tmp_path / "d" / "prepared")}})
    assert nnunet_base(cfg) == tmp_path / "d" / "nnunet"
    assert nnunet_root(cfg, "spleen") == tmp_path / "d" / "nnunet" / "spleen"
    assert nnunet_root(load_config(None, {"nnunet": {"root": "/x/nn"}}), "spleen") == Path("/x/nn/spleen")
    assert dataset_name(cfg, "lung_tumour") == "Dataset006_lung_tumour"
    monkeypatch.setenv("nnUNet_results", "/home/someone/nnUNet_results")
    monkeypatch.setenv("nnUNet_raw", "/home/someone/raw")
    with environment(raw=tmp_path / "r", preprocessed=tmp_path / "p"):
        assert os.environ["nnUNet_raw"] == str((tmp_path / "r").resolve())
        assert "nnUNet_results" not in os.environ  # never the user's, even when not needed
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

        assert str(nnUNet_preprocessed) == str((tmp_path / "p").resolve()) and not nnUNet_results.is_set()
    assert os.environ["nnUNet_results"] == "/home/someone/nnUNet_results"
    assert os.environ["nnUNet_raw"] == "/home/someone/raw"


def _without_nnunetv2(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "nnunetv2" else real(name, *a))


def test_the_variant_without_nnunetv2_stops_the_workflow_in_one_line(monkeypatch):
    _without_nnunetv2(monkeypatch)
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())  # Snakemake's merged --configfile
    with pytest.raises(ConfigError) as exc:
        workflow_config(demo, ["config/demo.yaml"], {"run": {"variants": ["full", "nnunet"]}})
    msg = str(exc.value)
    assert "variant 'nnunet' needs nnunetv2" in msg and "pip install -e '.[nnunet]'" in msg and "\n" not in msg
    workflow_config(demo, ["config/demo.yaml"], {"run": {"variants": ["full", "unet3d"]}})  # the others need none


def test_the_cli_without_nnunetv2_names_the_extra(tmp_path):
    """As a real process: nnunetv2 made unfindable, `nnunet-plan` exits 1 with one line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"variants": ["nnunet"]}}))
    code = ("import importlib.util as u, sys; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n.split('.')[0] == 'nnunetv2' else real(n, *a); "
            "from sam2_3dmed.cli import main; main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, "nnunet-plan", "--config", str(cfg), "--target", "spleen",
                           "--prepared", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    line = one_line_error(proc)
    assert "nnunetv2" in line and ".[nnunet]" in line, line
    assert not (tmp_path / "out").exists()


def _sh(*args, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def _jobs(text: str) -> list[dict]:
    """Every job of a dry run's listing: rule, wildcards line, resources line, shell command."""
    jobs, cur = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            cur = {"rule": m.group(1), "wildcards": "", "resources": "", "shell": ""}
            jobs.append(cur)
        elif cur is not None and line.strip().startswith(("wildcards:", "resources:")):
            cur[line.strip().split(":")[0]] = line.strip()
        elif cur is not None and not cur["shell"] and "sam2-3dmed " in line:
            cur["shell"] = line.strip()
    return jobs


def test_dry_run_of_the_real_config_with_nnunet_beside_full(tmp_path):
    """`variants: [full, nnunet]` on config/config.yaml: one CPU planning job per target,
    nnU-Net's train/evaluate/ensemble/imagesTs jobs on GPUs beside SAM2-3dMed's, 5 folds."""
    proj = make_project(tmp_path, {}, name="unused.yaml")
    shutil.copy(REPO / "config" / "config.yaml", proj / "config" / "config.yaml")
    text = _sh("snakemake", "-n", "-p", "--cores", "8", "--profile", "slurm",
               "--config", "run={variants: [full, nnunet]}", cwd=proj)
    (tmp_path / "dry-run.txt").write_text(text)
    counts = job_counts(text)
    assert counts["nnunet_plan"] == 3, counts
    assert counts["train"] == 30 and counts["evaluate"] == 30, counts  # 3 targets x 2 variants x 5 folds
    assert counts["evaluate_ensemble"] == 6 and counts["predict_test_images"] == 6, counts
    jobs = _jobs(text)
    plans = [j for j in jobs if j["rule"] == "nnunet_plan"]
    assert len(plans) == 3 and all("gpu" not in j["resources"] for j in plans), plans[:1]
    assert all("sam2-3dmed nnunet-plan" in j["shell"] and "data/nnunet/" in j["shell"] for j in plans), plans[:1]
    nn = [j for j in jobs if "variant=nnunet" in j["wildcards"] and j["rule"] != "curves"]  # curves: a local copy
    assert {j["rule"] for j in nn} == {"train", "evaluate", "evaluate_ensemble", "predict_test_images"}
    assert len(nn) == 15 + 15 + 3 + 3
    assert all("gpu=1" in j["resources"] for j in nn), [j for j in nn if "gpu=1" not in j["resources"]][:1]
    assert all("--device cuda" in j["shell"] for j in nn), [j["shell"] for j in nn][:2]
    train = [j for j in nn if j["rule"] == "train"]
    assert all("--variant nnunet" in j["shell"] and "--restart-if-changed" in j["shell"] for j in train)
    assert all("mem_mb=32000" in j["resources"] for j in train)
    pred = [j for j in nn if j["rule"] == "predict_test_images"]
    assert all(re.search(r"predict results/runs/\w+/nnunet/fold0 ", j["shell"]) and j["shell"].count(" --model ") == 4
               for j in pred), pred[:1]
    full_train = [j for j in jobs if j["rule"] == "train" and "variant=full" in j["wildcards"]]
    assert len(full_train) == 15 and all("mem_mb=16000" in j["resources"] for j in full_train)


def test_dvc_tracks_the_nnunet_folders_of_both_stages():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, config in (("demo", "config/demo.yaml"), ("msd", "config/config.yaml")):
        outs = [Path(next(iter(o))) if isinstance(o, dict) else Path(o) for o in stages[stage]["outs"]]
        assert f"bash scripts/workflow.sh {config}" in stages[stage]["cmd"]
        base = nnunet_base(load_config(REPO / config))
        assert any(base == o or o in base.parents for o in outs), (stage, base, outs)


def test_evaluate_refuses_to_mix_nnunet_runs_and_other_variants(pancreas, tmp_path):
    """One line, before anything is loaded: an nnU-Net variant's --run must be an nnU-Net run
    (fold folder with model.pt), and an nnU-Net run must be evaluated as an nnU-Net variant."""
    from _cli import run_cli

    _, _, _, prep = pancreas
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    sam_run, nn_run = tmp_path / "sam", tmp_path / "nn"
    sam_run.mkdir()
    nn_run.mkdir()
    (nn_run / "model.pt").write_bytes(b"")
    (nn_run / "nnunet_run.json").write_text("{}")  # what marks an nnU-Net run folder
    (sam_run / "model.pt").write_bytes(b"")  # a SAM2-3dMed checkpoint may be called model.pt too
    common = ["evaluate", "--config", cfg, "--target", "pancreas", "--fold", "0", "--prepared", prep.path]
    line = one_line_error(run_cli(*common, "--variant", "nnunet", "--run", sam_run, "--out", tmp_path / "o1"))
    assert "is not an nnU-Net run" in line and str(sam_run) in line
    line = one_line_error(run_cli(*common, "--variant", "unet3d", "--run", nn_run, "--out", tmp_path / "o2"))
    assert "is an nnU-Net run, but variant 'unet3d' is not an nnU-Net variant" in line
    line = one_line_error(run_cli(*common, "--variant", "nnunet", "--run", nn_run, "--out", tmp_path / "o3"))
    assert "checkpoint file is empty" in line  # model.pt is read with the same safe loader as checkpoints
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
