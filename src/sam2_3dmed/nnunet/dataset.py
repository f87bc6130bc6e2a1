"""``sam2-3dmed nnunet-plan``: a prepared target -> nnU-Net's raw dataset, our folds, nnU-Net's plans.

Which cases: every case of ``splits.json`` that is not in the held-out test split, so
nnU-Net's dataset fingerprint (intensity statistics, spacings) never sees a test case,
and its folds (``splits_final.json``) are ours, fold for fold and case for case. The
images are the task's own files (linked, not copied or resampled: nnU-Net does its own
resampling); the labels are the task's label files with ``targets.<t>.labels`` merged to
1, read by the same function that ``evaluate`` uses for the ground truth.

Then ``nnUNetv2_plan_and_preprocess -d NNN -c <configuration> -pl <planner>
--verify_dataset_integrity`` runs as nnU-Net's own command (its planning untouched), with
nnUNet_raw and nnUNet_preprocessed set to the folders written here. Everything appears
at once under ``<nnunet.root>/<target>/`` (built in a temporary folder beside it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..atomic import atomic_dir
from ..config import target_config
from ..console import log, track
from ..data.io import load_label_mask
from ..data.prepared import PreparedTarget
from ..data.readers import write_nifti_like
from ..errors import InputFileError, UserError
from . import PLAN_FILE, dataset_id, dataset_name, environment, import_nnunet, nnunet_version


def nnunet_splits(splits: dict) -> list[dict]:
    """Our splits.json folds as nnU-Net's splits_final.json: ``[{"train": [...], "val": [...]}]``
    per fold, in fold order (the held-out test cases are in no fold)."""
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in splits["folds"]]


def training_cases(prepared: PreparedTarget) -> list[str]:
    """The cases nnU-Net may see: every fold's train + val cases (= all cases but the test
    split), checked to be exactly the prepared cases minus the test split."""
    splits, path = prepared.splits, prepared.path / "splits.json"
    test = set(splits.get("test", []))
    folds = nnunet_splits(splits)
    in_folds = sorted({c for f in folds for c in f["train"] + f["val"]})
    every = [c["case_id"] for c in prepared.fingerprint["cases"]]
    leaked = sorted(test.intersection(in_folds))
    if leaked:
        raise InputFileError(f"held-out test case(s) {', '.join(leaked[:3])} also in a fold; re-run prepare", path)
    expected = sorted(c for c in every if c not in test)
    if in_folds != expected:
        missing = sorted(set(expected) - set(in_folds)) or sorted(set(in_folds) - set(expected))
        raise InputFileError(f"the folds do not cover the prepared non-test cases exactly (e.g. {missing[0]!r}); "
                             "re-run prepare", path)
    return expected


def _link(src: Path, dest: Path, final_dir: Path) -> None:
    """``dest`` -> ``src`` as a relative symlink valid from ``final_dir`` (dest's folder once
    the temporary tree is renamed; both are at the same depth), or a copy where links fail."""
    rel = os.path.relpath(src.resolve(), final_dir.resolve())
    try:
        dest.symlink_to(rel)
    except OSError:
        shutil.copy2(src, dest)


def _nnunet_command(name: str) -> str:
    """An nnU-Net console script: beside this Python (a venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} not found beside {sys.executable} or on PATH; reinstall nnunetv2 "
                        "(pip install -e '.[nnunet]')")
    return found


def write_raw_dataset(cfg: dict, target: str, prepared: PreparedTarget, raw_root: Path, final_raw_root: Path) -> dict:
    """nnU-Net's raw dataset of the target under ``raw_root`` (imagesTr links, merged
    labelsTr, dataset.json, splits_final.json); returns what it wrote."""
    tcfg = target_config(cfg, target)
    name = dataset_name(cfg, target)
    ds, final_ds = raw_root / name, final_raw_root / name
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    task_dir = Path(prepared.fingerprint["task_dir"])
    cases = training_cases(prepared)
    for cid in track(cases, f"nnU-Net raw {name}"):
        rec = prepared.case_record(cid)
        image, label = task_dir / rec["image"], task_dir / rec["label"]
        if not image.name.endswith(".nii.gz"):
            raise InputFileError("nnU-Net's raw format needs .nii.gz images here", image)
        if not image.is_file():
            raise InputFileError("image listed in fingerprint.json is missing; re-run prepare", image)
        _link(image, ds / "imagesTr" / f"{cid}_0000.nii.gz", final_ds / "imagesTr")
        mask, vol = load_label_mask(label, tcfg["labels"])  # exactly as prepare and evaluate merge them
        write_nifti_like(mask, vol, ds / "labelsTr" / f"{cid}.nii.gz")
    dataset_json = {
        "name": target,
        "description": f"sam2-3dmed target {target} of {tcfg['task']}: labels {tcfg['labels']} merged to 1; "
                       "the held-out test split left out",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, target: 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    splits = nnunet_splits(prepared.splits)
    (ds / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n")
    return {"dataset": name, "n_cases": len(cases), "folds": splits, "test": list(prepared.splits.get("test", []))}


def plan_target(cfg: dict, target: str, prepared: Path, out: Path, overwrite: bool = False) -> Path:
    """Write OUT/raw (nnUNet_raw), OUT/preprocessed (nnUNet_preprocessed, with our
    splits_final.json) and OUT/nnunet_plan.json for one target."""
    import_nnunet("sam2-3dmed nnunet-plan")
    ncfg = cfg["nnunet"]
    target_config(cfg, target)  # an unknown target first, before any file is read
    prep = PreparedTarget(prepared).check_target(target)
    name = dataset_name(cfg, target)
    out = Path(out)
    nproc = max(1, min(int(ncfg["planning_processes"]), os.cpu_count() or 1))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        wrote = write_raw_dataset(cfg, target, prep, tmp / "raw", out / "raw")
        t_convert = time.perf_counter() - t0
        argv = [_nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id(name)),
                "-c", ncfg["configuration"], "-pl", ncfg["planner"], "-np", str(nproc), "-npfp", str(nproc),
                "--verify_dataset_integrity"]
        log.info("nnU-Net planning: %s", " ".join(argv))
        (tmp / "preprocessed").mkdir()
        with environment(raw=tmp / "raw", preprocessed=tmp / "preprocessed"):
            t1 = time.perf_counter()
            sys.stdout.flush()
            sys.stderr.flush()
            rc = subprocess.call(argv, env=dict(os.environ))  # an argument list: no shell
            t_plan = time.perf_counter() - t1
        if rc != 0:
            raise UserError(f"nnUNetv2_plan_and_preprocess failed (exit {rc}); its output is above",
                            tmp / "raw" / name)
        pre = tmp / "preprocessed" / name
        plans_file = pre / f"{ncfg['plans']}.json"
        if not plans_file.is_file():
            raise UserError(f"nnU-Net wrote no {plans_file.name}: nnunet.plans must be what nnunet.planner "
                            f"({ncfg['planner']}) writes", pre)
        plans = json.loads(plans_file.read_text())
        conf = plans["configurations"].get(ncfg["configuration"])
        if conf is None:
            raise UserError(f"nnU-Net planned no {ncfg['configuration']} configuration (it planned "
                            f"{', '.join(plans['configurations'])})", plans_file)
        shutil.copy2(tmp / "raw" / name / "splits_final.json", pre / "splits_final.json")
        record = {
            **wrote, "target": target, "dataset_id": dataset_id(name), "configuration": ncfg["configuration"],
            "planner": ncfg["planner"], "plans": ncfg["plans"],
            "patch_size": conf.get("patch_size"), "batch_size": conf.get("batch_size"),
            "spacing": conf.get("spacing"), "median_image_size": conf.get("median_image_size_in_voxels"),
            "command": argv[1:], "processes": nproc,
            "seconds": {"convert": round(t_convert, 2), "plan_and_preprocess": round(t_plan, 2)},
            "nnunetv2": nnunet_version(),
        }
        (tmp / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("nnU-Net %s %s: patch %s, batch %s, spacing %s (%.0f s planning)", name, ncfg["configuration"],
             record["patch_size"], record["batch_size"], record["spacing"], t_plan)
    return out


def check_planned(cfg: dict, target: str, prepared: PreparedTarget, root: Path) -> Path:
    """The target's nnUNet_preprocessed dataset folder, checked: planned, and its
    splits_final.json still equal to the prepared splits.json (a re-prepared target
    needs planning again)."""
    name = dataset_name(cfg, target)
    pre = Path(root) / "preprocessed" / name
    plans = pre / f"{cfg['nnunet']['plans']}.json"
    if not plans.is_file():
        raise UserError("not planned: run `sam2-3dmed nnunet-plan` for this target first", plans)
    sf = pre / "splits_final.json"
    try:
        theirs = json.loads(sf.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"unreadable ({type(exc).__name__}); run nnunet-plan again", sf) from None
    if theirs != nnunet_splits(prepared.splits):
        raise InputFileError(f"differs from the folds of {prepared.path / 'splits.json'}; run nnunet-plan again", sf)
    return pre
