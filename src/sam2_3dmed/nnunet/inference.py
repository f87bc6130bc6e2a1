"""Prediction and evaluation with trained nnU-Net runs (``evaluate`` / ``predict`` dispatch here).

Models are our ``model.pt`` files (written at the end of training: weights, plans,
dataset.json, trainer name), read with ``torch.load(weights_only=True)``; the network
is rebuilt by nnU-Net's trainer class from the plans and handed to nnU-Net's own
``nnUNetPredictor`` (``manual_initialization``). Several folds' models are averaged by
nnU-Net itself (logits averaged, as ``nnUNetv2_predict -f 0 1 2 3 4``). Each case is
predicted from its raw image file by ``predict_from_files_sequential``: nnU-Net's
preprocessing (its resampling and CT normalisation), sliding windows (Gaussian weighted,
``nnunet.tile_step_size``, test-time mirroring when ``nnunet.mirroring``) and export to
the image's own grid. The written mask is then scored by **our** metrics against the
original label, exactly as the other variants' masks are (no post-processing of ours is
applied: nnU-Net's prediction is scored as nnU-Net writes it).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_dir, ensure_dir
from ..config import target_config
from ..console import log, new_progress
from ..data.io import load_label_mask
from ..data.prepared import PreparedTarget
from ..device import peak_memory_mb, pick_device
from ..errors import InputFileError, UserError
from ..model.backbone import safe_torch_load
from . import MODEL_FILE, import_nnunet, nnunet_version

FORMAT = "sam2-3dmed nnunet model 1"


def load_models(paths) -> list[dict]:
    """Every nnU-Net model.pt behind ``paths`` (files, fold folders, run folders of
    fold*/), checked to be ours and to agree on target, plans and configuration."""
    from ..infer.ensemble import resolve_checkpoints

    files = resolve_checkpoints(paths, which="model")
    models = []
    for f in files:
        m = safe_torch_load(f)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise InputFileError("not an nnU-Net model.pt written by sam2-3dmed train", f)
        m["path"] = f
        if models:
            first = models[0]
            for key in ("target", "configuration", "plans", "dataset_json", "trainer_name"):
                if m[key] != first[key]:
                    raise UserError(f"differs from {first['path']} in {key}: the members of an ensemble must come "
                                    "from one nnU-Net plan", f)
        models.append(m)
    return models


def make_predictor(models: list[dict], device, ncfg: dict):
    """nnU-Net's predictor holding every model's weights (averaged per case)."""
    import_nnunet("an nnU-Net model")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    first = models[0]
    pm = PlansManager(first["plans"])
    cm = pm.get_configuration(first["configuration"])
    n_in = determine_num_input_channels(pm, cm, first["dataset_json"])
    n_out = pm.get_label_manager(first["dataset_json"]).num_segmentation_heads
    trainer_class = recursive_find_trainer_class_by_name(first["trainer_name"])
    network = trainer_class.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=float(ncfg["tile_step_size"]), use_gaussian=True,
                                use_mirroring=bool(ncfg["mirroring"]), perform_everything_on_device=True,
                                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    axes = first["inference_allowed_mirroring_axes"]
    predictor.manual_initialization(network, pm, cm, [m["network_weights"] for m in models], first["dataset_json"],
                                    first["trainer_name"], None if axes is None else tuple(axes))
    return predictor


def predict_file(predictor, image: Path, out_dir: Path) -> tuple[Path, float]:
    """One image -> ``out_dir/case.nii.gz`` by nnU-Net, on the image's grid; (mask, seconds)."""
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential([[str(image)]], [str(out_dir / "case")], save_probabilities=False,
                                            overwrite=True)
    return out_dir / "case.nii.gz", time.perf_counter() - t0


def evaluate_nnunet(cfg: dict, job) -> Path:
    """``evaluate`` of nnU-Net run(s): auto mode only (nnU-Net takes no prompts); the same
    outputs as :func:`~sam2_3dmed.evaluate.evaluation.evaluate_run`."""
    from ..evaluate.evaluation import case_metrics, check_member, metrics_row, select_cases, write_evaluation

    import_nnunet(f"variant {job.variant!r}")
    ecfg = cfg["evaluate"]
    split = job.split or ecfg["split"]
    bands = [float(b) for b in ecfg["boundary_bands_mm"]]
    pcts = [float(q) for q in ecfg["surface_percentiles"]]
    target, fold = job.target, job.fold
    tcfg = target_config(cfg, target)
    prepared = PreparedTarget(job.prepared or Path(cfg["data"]["prepared"]) / target)
    runs = job.run_dirs
    if len(runs) > 1 and split != "test":
        raise UserError(f"an ensemble of {len(runs)} runs can be scored on the held-out test split only (--split "
                        f"test): each fold's {split} cases are the other folds' training cases")
    if job.checkpoint not in (None, "best", "last"):
        raise UserError(f"--checkpoint {job.checkpoint}: an nnU-Net run has one model (its final weights, "
                        f"{MODEL_FILE}); leave --checkpoint out")
    synthetic = prepared.synthetic
    cases, n_split = select_cases(prepared, target, fold, split, job.max_cases or ecfg["max_cases"])
    for r in runs:
        if not (Path(r) / MODEL_FILE).is_file():
            raise UserError(f"holds no {MODEL_FILE}: has this nnU-Net run been trained?", r)
    models = load_models(runs)
    for m in models:
        check_member(m["target"], m["fold"], m["path"], target, fold, split)
    modes = list(job.modes or ecfg["modes"])
    skipped = {m: "an nnU-Net model takes no prompts" for m in modes if m != "auto"}
    if "auto" not in modes:
        raise UserError("an nnU-Net model takes no prompts, and --modes asks for prompted only", models[0]["path"])
    if skipped:
        log.info("an nnU-Net model takes no prompts; %s skipped (auto mode only)", ", ".join(skipped))
    dev = pick_device(job.device)
    ncfg = cfg["nnunet"]
    predictor = make_predictor(models, dev, ncfg)
    tol = float(tcfg["nsd_tolerance_mm"])
    save = bool(ecfg["save_predictions"]) if job.save_predictions is None else job.save_predictions
    task_dir = Path(prepared.fingerprint["task_dir"])
    rows = []
    with atomic_dir(Path(job.out), overwrite=job.overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix=".nnunet-", dir=tmp) as scratch:
        if save:
            (tmp / "predictions").mkdir()
        with new_progress() as progress:
            bar = progress.add_task(f"nnU-Net {target} {split} ({len(cases)} cases)", total=len(cases))
            for i, cid in enumerate(cases):
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                image = task_dir / prepared.case_record(cid)["image"]
                mask_file, seconds = predict_file(predictor, image, Path(scratch))
                pred, _ = load_label_mask(mask_file, [1])
                gt, gt_vol = prepared.original_label(cid, tcfg["labels"])
                if pred.shape != gt.shape:
                    raise InputFileError(f"nnU-Net's prediction has shape {pred.shape}, the label {gt.shape}", image)
                m = case_metrics(pred, gt, gt_vol.spacing, tol, bands, pcts)
                row = metrics_row(cid, "auto", m, float(np.prod(gt_vol.spacing)) / 1000.0, seconds=seconds,
                                  slices=int(gt.shape[2]), device=dev)
                row["peak_mem_mb"] = peak_memory_mb(dev)
                rows.append(row)
                if save:
                    shutil.move(str(mask_file), tmp / "predictions" / f"{cid}_auto.nii.gz")
                log.info("(%d/%d) %s", i + 1, len(cases), cid)
                progress.advance(bar)
        first = models[0]
        summary = {
            "target": target, "variant": job.variant, "fold": fold if len(models) == 1 else None, "split": split,
            "modes": ["auto"], "prompt": None, "prompt_counts": [], "boundary_bands_mm": bands,
            "surface_percentiles": pcts,
            "checkpoint": str(first["path"]), "checkpoint_step": first["steps"],
            "ensemble": {"size": len(models), "folds": [m["fold"] for m in models],
                         "checkpoints": [str(m["path"]) for m in models], "steps": [m["steps"] for m in models],
                         "variants": sorted({m["variant"] for m in models})},
            "nsd_tolerance_mm": tol, "n_cases": len(cases), "n_cases_in_split": n_split,
            "space": "original image grid, 3D, mm", "synthetic": synthetic,
            **({"modes_skipped": skipped} if skipped else {}),
            "arch": "nnunet", "pretrained": False, "backbone": None, "image_size": None,
            "nnunet": {"nnunetv2": nnunet_version(), "trainer": first["trainer_name"],
                       "configuration": first["configuration"], "budget": first["budget"],
                       "epochs": [m["epochs"] for m in models], "mirroring": bool(ncfg["mirroring"]),
                       "tile_step_size": float(ncfg["tile_step_size"]),
                       "patch_size": first["plans"]["configurations"][first["configuration"]].get("patch_size"),
                       "post_processing": "none (nnU-Net's prediction as it writes it)"},
            "device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
        }
        write_evaluation(tmp, rows, summary, bands, pcts, first["steps"])
    s = summary["metrics"]["auto"]
    log.info("%s/%s/%s auto (%s, %d cases): Dice %.4f +- %.4f, HD95 %.2f mm", target, job.variant,
             f"fold {fold}" if len(models) == 1 else f"ensemble of {len(models)}", split, s["dice"]["n"],
             s["dice"]["mean"], s["dice"]["std"], s["hd95"]["mean"])
    return Path(job.out)


def predict_nnunet(paths: list[Path], input_path: Path, output: Path, opts) -> dict:
    """``predict`` with nnU-Net run(s): one NIfTI/NRRD/MHA scan -> one mask, or a folder of
    them -> a folder (``<name>.nii.gz``), on each scan's own grid. Auto mode only."""
    from ..infer.predict import _check_mask_path, case_name, find_cases

    import_nnunet("an nnU-Net model")
    if opts.prompts:
        raise UserError("an nnU-Net model takes no prompts: leave out the --prompt-* options", paths[0])
    if opts.save_probabilities:
        raise UserError("--save-probabilities is not offered for nnU-Net models", paths[0])
    models = load_models(paths)
    ncfg = models[0]["nnunet_config"]  # mirroring, tile step: the settings it was trained with
    if input_path.is_dir():
        cases = [(n, p) for n, p in find_cases(input_path) if p.is_file()]
        if output.name.endswith((".nii", ".nii.gz")) or (output.exists() and not output.is_dir()):
            raise UserError("INPUT is a folder of scans, so OUTPUT must be a folder", output)
        todo = [(n, p) for n, p in cases if opts.overwrite or not (output / f"{n}.nii.gz").exists()]
        dests = [output / f"{n}.nii.gz" for n, _ in todo]
    else:
        _check_mask_path(output)
        if output.exists() and not opts.overwrite:
            raise UserError("exists; pass --overwrite to replace it", output)
        todo, dests = [(case_name(input_path), input_path)], [output]
        cases = todo
    result = {"input": str(input_path), "output": str(output), "cases": len(cases), "skipped": len(cases) - len(todo),
              "written": 0, "target": models[0]["target"], "models": len(models), "mode": "auto"}
    if not todo:
        return result
    ensure_dir(dests[0].parent)
    predictor = make_predictor(models, pick_device(opts.device), ncfg)
    with tempfile.TemporaryDirectory(prefix=".nnunet-", dir=dests[0].parent) as scratch:
        for (name, path), dest in zip(todo, dests):
            mask_file, seconds = predict_file(predictor, path, Path(scratch))
            shutil.move(str(mask_file), dest)  # whole, after nnU-Net has finished writing it
            result["written"] += 1
            log.info("%s: nnU-Net (%d model(s)), %.1f s -> %s", name, len(models), seconds, dest)
    if not input_path.is_dir():
        mask, vol = load_label_mask(output, [1])
        result.update(voxels=int(mask.sum()), volume_ml=float(mask.sum() * np.prod(vol.spacing) / 1000.0))
        result.pop("cases")
    return result

