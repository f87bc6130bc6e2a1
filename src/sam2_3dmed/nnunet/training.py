"""``sam2-3dmed train`` of an nnU-Net variant: nnU-Net's trainer on one of our folds.

What runs is what ``nnUNetv2_train <dataset> <configuration> <fold> -tr <trainer> -p
<plans> --c`` runs (nnU-Net's ``get_trainer_from_args`` and ``maybe_load_checkpoint``),
with three differences, all recorded in train_summary.json:

* nnUNet_raw / nnUNet_preprocessed / nnUNet_results point into this project's data and
  run folders (``nnunet.root``, ``RUNS/<t>/<v>/fold<k>/nnUNet_results``);
* ``nnunet.epochs`` / ``iterations_per_epoch`` / ``val_iterations_per_epoch``, when set,
  replace the trainer's own numbers on the trainer instance before training starts (the
  learning-rate schedule is built from them), because nnU-Net finds trainer classes only
  inside its own package. Null (the real config) keeps nnUNetTrainer's 1000 x 250 x 50;
* nnU-Net's final validation (``perform_actual_validation``) is not run here: ``evaluate``
  predicts the fold's validation cases from their raw images and scores them with our
  metrics, like every other variant.

The run folder gets, besides nnU-Net's own files: ``model.pt`` (the final weights, the
plans and the settings; plain tensors and JSON values, loaded with weights_only=True),
``train_log.csv`` / ``val_log.csv`` (nnU-Net's per-epoch log: training and validation
loss, pseudo Dice on validation patches, learning rate, seconds), ``train_summary.json``
(including the train/val cases nnU-Net's own ``do_split`` used) and ``nnunet_run.json``
(the settings the run was made with; other settings: ``--restart-if-changed`` moves the
old run to ``superseded/``, otherwise an error).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file, write_json
from ..code_digest import package_digest
from ..config import variant_config
from ..console import log
from ..data.prepared import PreparedTarget
from ..device import describe_gpu, peak_memory_mb, pick_device
from ..errors import UserError
from . import MODEL_FILE, RUN_FILE, dataset_name, environment, import_nnunet, nnunet_root, nnunet_version
from .dataset import check_planned

EXIT_STOPPED = 75
TRAIN_FIELDS = ["step", "epoch", "loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "seconds"]
#: nnunet.* budget keys -> the nnUNetTrainer attributes they set
BUDGET = {"epochs": "num_epochs", "iterations_per_epoch": "num_iterations_per_epoch",
          "val_iterations_per_epoch": "num_val_iterations_per_epoch"}


def run_settings(cfg: dict, target: str, variant: str, fold: int, preprocessed: Path) -> dict:
    """What an nnU-Net run depends on: trainer, plans, configuration, budget, fold, and the
    planned dataset (a hash of its plans and splits files)."""
    n = cfg["nnunet"]
    h = hashlib.sha256()
    for f in (f"{n['plans']}.json", "dataset.json", "splits_final.json", "dataset_fingerprint.json"):
        p = preprocessed / f
        h.update(p.read_bytes() if p.is_file() else b"")
    return {"target": target, "variant": variant, "fold": fold, "dataset": preprocessed.name,
            "trainer": n["trainer"], "plans": n["plans"], "configuration": n["configuration"],
            **{k: n[k] for k in BUDGET}, "planned_sha256": h.hexdigest()}


def _supersede(out: Path, reason: str) -> None:
    old = out / "superseded"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for f in list(out.iterdir()):
        if f.name != "superseded":
            f.rename(old / f.name)
    log.warning("%s: %s; the old run was moved to %s and training starts over", out, reason, old)


def _check_run(out: Path, settings: dict, on_change: str) -> None:
    f = out / RUN_FILE
    if not f.is_file():
        if (out / "nnUNet_results").exists():
            reason = f"holds nnU-Net results but no {RUN_FILE}"
        else:
            return
    else:
        try:
            have = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            have = None
        if have == settings:
            return
        if isinstance(have, dict) and (have.get("target"), have.get("fold")) != (settings["target"], settings["fold"]):
            raise UserError(f"holds an nnU-Net run of {have.get('target')}/fold {have.get('fold')}, not "
                            f"{settings['target']}/fold {settings['fold']}", out)
        reason = "holds an nnU-Net run made with other settings or another plan"
    if on_change != "restart":
        raise UserError(f"{reason}; pass --restart-if-changed to move it aside and start over", out)
    _supersede(out, reason)


def _logged(trainer) -> dict:
    keys = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
            "epoch_start_timestamps", "epoch_end_timestamps")
    return {k: list(trainer.logger.get_value(k, None)) for k in keys}


def _write_logs(out: Path, logged: dict, iterations: int) -> list[dict]:
    n = min(len(v) for v in logged.values())
    rows = []
    for e in range(n):
        sec = float(logged["epoch_end_timestamps"][e] - logged["epoch_start_timestamps"][e])
        rows.append({"step": (e + 1) * iterations, "epoch": e, "loss": float(logged["train_losses"][e]),
                     "val_loss": float(logged["val_losses"][e]), "pseudo_dice": float(logged["mean_fg_dice"][e]),
                     "ema_pseudo_dice": float(logged["ema_fg_dice"][e]), "lr": float(logged["lrs"][e]),
                     # an epoch's wall time per training iteration (its validation iterations included)
                     "seconds": sec / iterations})
    with atomic_file(out / "train_log.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TRAIN_FIELDS)
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    # the report's validation curve: nnU-Net's pseudo Dice (foreground Dice over the epoch's
    # validation patches, not whole volumes), and its moving average
    with atomic_file(out / "val_log.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "mean_dice", "ema_dice"])
        w.writeheader()
        w.writerows({"step": r["step"], "mean_dice": f"{r['pseudo_dice']:.6g}", "ema_dice": f"{r['ema_pseudo_dice']:.6g}"}
                    for r in rows)
    return rows


def _save_model(trainer, out: Path, meta: dict) -> None:
    """model.pt: the final weights plus everything prediction needs, as plain values."""
    net = trainer.network
    net = getattr(net, "_orig_mod", net)  # torch.compile'd
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    axes = trainer.inference_allowed_mirroring_axes
    payload = {
        "format": "sam2-3dmed nnunet model 1", **meta,
        "network_weights": state,
        "trainer_name": trainer.__class__.__name__,
        "configuration": trainer.configuration_name,
        "inference_allowed_mirroring_axes": None if axes is None else [int(a) for a in axes],
        "plans": json.loads(json.dumps(trainer.plans_manager.plans)),
        "dataset_json": json.loads(json.dumps(trainer.dataset_json)),
    }
    with atomic_file(out / MODEL_FILE) as tmp:
        torch.save(payload, tmp)


def train_nnunet(cfg: dict, target: str, variant: str, fold: int, out: str | Path,
                 prepared: str | Path | None = None, device: str | None = None, on_change: str = "error",
                 stop_after_epoch: int | None = None) -> Path:
    """Train (or resume, as ``--c``) nnU-Net on ``fold`` of the target into run folder OUT."""
    import_nnunet(f"variant {variant!r}")
    vcfg = variant_config(cfg, variant)
    ncfg = vcfg["nnunet"]
    prep = PreparedTarget(prepared or Path(vcfg["data"]["prepared"]) / target).check_target(target)
    ours = {"train": sorted(prep.cases(fold, "train")), "val": sorted(prep.cases(fold, "val"))}  # fold checked
    root = nnunet_root(vcfg, target)
    pre = check_planned(vcfg, target, prep, root)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder (the run folder to write into)", out)
    dev = pick_device(device)
    settings = run_settings(vcfg, target, variant, fold, pre)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, settings, on_change)
    write_json(out / RUN_FILE, settings)
    extra = {}
    if ncfg["augmentation_workers"] is not None:
        extra["nnUNet_n_proc_DA"] = ncfg["augmentation_workers"]
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    t0 = time.perf_counter()
    with environment(raw=root / "raw", preprocessed=root / "preprocessed", results=out / "nnUNet_results",
                     extra=extra):
        try:
            trainer = get_trainer_from_args(dataset_name(vcfg, target), ncfg["configuration"], fold,
                                            ncfg["trainer"], ncfg["plans"], continue_training=True, device=dev)
        except RuntimeError as exc:  # e.g. an unknown trainer class
            raise UserError(f"nnunet.trainer {ncfg['trainer']!r}: {exc}") from None
        own = {k: getattr(trainer, attr) for k, attr in BUDGET.items()}
        for k, attr in BUDGET.items():
            if ncfg[k] is not None:
                setattr(trainer, attr, int(ncfg[k]))
        used = {k: getattr(trainer, attr) for k, attr in BUDGET.items()}
        # the cases nnU-Net's own do_split gives the trainer (splits_final.json): ours, checked before training
        tr_keys, val_keys = trainer.do_split()
        used_split = {"train": sorted(tr_keys), "val": sorted(val_keys)}
        if used_split != ours:
            raise UserError(f"nnU-Net would train fold {fold} on other cases than splits.json lists; run "
                            "nnunet-plan again", pre / "splits_final.json")
        maybe_load_checkpoint(trainer, True, False)  # nnUNetv2_train --c: final, else latest, else best, else new
        start_epoch = trainer.current_epoch
        if start_epoch:
            log.info("resuming nnU-Net %s/%s/fold %d at epoch %d of %d", target, variant, fold, start_epoch,
                     trainer.num_epochs)
        if stop_after_epoch is not None:  # testing aid: a kill after that epoch's checkpoint
            _stop_after(trainer, stop_after_epoch)
        trainer.run_training()
    seconds = time.perf_counter() - t0
    logged = _logged(trainer)
    rows = _write_logs(out, logged, trainer.num_iterations_per_epoch)
    cm = trainer.configuration_manager
    n_params = sum(p.numel() for p in trainer.network.parameters())
    budget = ("nnU-Net's default" if used == own else
              f"reduced: {used['epochs']} epochs x {used['iterations_per_epoch']} iterations "
              f"(the trainer's own: {own['epochs']} x {own['iterations_per_epoch']})")
    meta = {"target": target, "variant": variant, "fold": fold, "epochs": trainer.current_epoch,
            "steps": trainer.current_epoch * trainer.num_iterations_per_epoch, "budget": budget,
            "nnunet_config": dict(ncfg)}
    _save_model(trainer, out, meta)
    summary = {
        "target": target, "variant": variant, "fold": fold, "arch": "nnunet",
        "steps": meta["steps"], "epochs": trainer.current_epoch, "budget": budget, "budget_reduced": used != own,
        "device": str(dev), **({"gpu": describe_gpu(dev)} if dev.type == "cuda" else {}),
        "seconds_this_run": seconds, "resumed_from_epoch": start_epoch,
        "encoder_frozen": None, "pretrained": False,
        "trainable_parameters": sum(p.numel() for p in trainer.network.parameters() if p.requires_grad),
        "total_parameters": n_params,
        "peak_memory_mb": peak_memory_mb(dev),
        "median_step_seconds": float(np.median([r["seconds"] for r in rows])) if rows else None,
        "best_ema_pseudo_dice": None if trainer._best_ema is None else float(trainer._best_ema),
        "nnunet": {
            "nnunetv2": nnunet_version(), "trainer": trainer.__class__.__name__, "plans": ncfg["plans"],
            "configuration": ncfg["configuration"], "dataset": pre.name, "budget": used, "trainer_defaults": own,
            "patch_size": list(cm.patch_size), "batch_size": int(cm.batch_size),
            "spacing": [float(s) for s in cm.spacing],
            "results_folder": str(Path(trainer.output_folder)),
            "splits_used": used_split,  # what nnU-Net's do_split returned (checked above to be ours)
            "augmentation_workers": ncfg["augmentation_workers"],  # null: nnU-Net's own choice
        },
        "code_digest": package_digest(),
    }
    write_json(out / "train_summary.json", summary)
    log.info("nnU-Net %s/%s/fold %d: %d epochs (%s), best EMA pseudo Dice %s, %.0f s", target, variant, fold,
             trainer.current_epoch, budget, summary["best_ema_pseudo_dice"], seconds)
    return out


def _stop_after(trainer, epoch: int) -> None:
    """Make the trainer save checkpoint_latest.pth after ``epoch`` (1-based count of
    epochs done) and exit abruptly, as a preempted job would."""
    end = trainer.on_epoch_end

    def on_epoch_end():
        end()  # ends with current_epoch += 1; nnU-Net saves checkpoints before that increment
        if trainer.current_epoch >= epoch:
            trainer.current_epoch -= 1
            trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
            log.warning("stopping after %d epoch(s) as asked (simulated interruption)", trainer.current_epoch + 1)
            os._exit(EXIT_STOPPED)

    trainer.on_epoch_end = on_epoch_end
