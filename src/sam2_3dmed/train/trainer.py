"""``sam2-3dmed train``: one target x variant x fold, resumable, deterministic on CPU.

Outputs in OUT/:
  last.pt, best.pt   trainable weights + optimiser/scheduler/RNG state + full config
  train_log.csv      one row per step: every loss term separately, lr, grad norm, time
  val_log.csv        one row per validation: whole-volume 3D Dice per case and mean
  train_summary.json final state (steps, best Dice, timings, parameter counts)

A run finds OUT/last.pt and continues from it (same data order, same RNG streams), so
a run killed and restarted ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file, ensure_dir, remove_stale, write_json
from ..code_digest import package_digest
from ..config import variant_config
from ..console import log, new_progress
from ..errors import InputFileError, UserError
from ..model.boundary import bd_loss, boundary_targets
from ..model.factory import build_model, encoder_frozen
from ..model.losses import object_loss, seg_loss
from ..model.srpp import srpp_loss, srpp_targets

CKPT_FORMAT = "sam2_3dmed-checkpoint-v1"
TRAIN_FIELDS = ["step", "lr", "loss", "seg", "obj", "srpp", "bd", "grad_norm", "seconds"]


# ---------------------------------------------------------------- checkpoints
def trainable_state(model: torch.nn.Module) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, cfg: dict, meta: dict) -> None:
    state = {
        "format": CKPT_FORMAT,
        "step": step,
        "trainable": trainable_state(model),
        "frozen_names": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "config": cfg,
        **meta,
    }
    # through a Python file: a full disk then raises OSError (a path gives torch's bare RuntimeError)
    with atomic_file(path) as tmp, tmp.open("wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict:
    from ..model.backbone import safe_torch_load

    path = Path(path)
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise InputFileError(f"not a sam2-3dmed checkpoint (expected format {CKPT_FORMAT})", path)
    cfg = state.get("config")
    checks = {
        "config": isinstance(cfg, dict) and all(isinstance(cfg.get(s), dict) for s in ("model", "targets")),
        "trainable": isinstance(state.get("trainable"), dict),
        "step": isinstance(state.get("step"), int),
        "target": isinstance(state.get("target"), str),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise InputFileError(f"incomplete sam2-3dmed checkpoint: {', '.join(bad)} missing or malformed", path)
    return state


def load_trainable(model: torch.nn.Module, state: dict, path: str | Path = "checkpoint") -> None:
    """Load trainable weights strictly; everything not stored must be frozen in ``model``."""
    params = dict(model.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    have = set(state["trainable"])
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise InputFileError(
            f"checkpoint does not match the model: {len(missing)} missing ({', '.join(missing[:3])}) "
            f"and {len(extra)} unexpected ({', '.join(extra[:3])}) trainable tensors", path)
    with torch.no_grad():
        for n, t in state["trainable"].items():
            if params[n].shape != t.shape:
                raise InputFileError(f"tensor {n} has shape {tuple(t.shape)}, model expects {tuple(params[n].shape)}", path)
            params[n].copy_(t)


# ---------------------------------------------------------------- schedule, prompts
def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def make_prompt(batch: dict, tcfg: dict, rng: np.random.Generator, device):
    """Simulated prompt for this step, or (None, None) for auto mode.

    The batch is processed in one slice order, so all its clips share one conditioning
    slice: the first clip's key slice. Each clip gets a box or point from its own mask on
    that slice, or padding points (no prompt) where its organ is absent there.
    """
    from .prompts import box_from_mask, point_from_mask

    key = int(batch["key_index"][0])
    if key < 0 or rng.random() >= tcfg["prompt_prob"]:
        return None, None
    use_box = rng.random() < tcfg["prompt_box_share"]
    coords = np.zeros((batch["mask"].shape[0], 2, 2), dtype=np.float32)
    labels = -np.ones((batch["mask"].shape[0], 2), dtype=np.int32)
    for b in range(batch["mask"].shape[0]):
        m = batch["mask"][b, key].numpy() > 0.5
        if not m.any():
            continue  # padding points: this item gets no prompt
        if use_box:
            coords[b] = np.asarray(box_from_mask(m, rng=rng, jitter=tcfg["prompt_jitter"]), dtype=np.float32).reshape(2, 2)
            labels[b] = [2, 3]
        else:
            coords[b, 0] = point_from_mask(m, rng=rng)
            labels[b, 0] = 1
    return key, (torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device))


# ---------------------------------------------------------------- losses
def compute_losses(model, out: dict, batch: dict, cfg: dict) -> dict:
    mcfg, lcfg = cfg["model"], cfg["train"]["loss"]
    mask = batch["mask"]
    valid = batch["valid"]
    present = mask.flatten(2).amax(-1) > 0.5
    logits = out["mask_logits"]
    terms = {
        # without an object score (the U-Net) empty slices are learned through BCE
        "seg": seg_loss(logits.flatten(0, 1), mask.flatten(0, 1), present.flatten(), valid.flatten(), lcfg["seg"],
                        absent_bce=out["obj_logits"] is None),
    }
    total = terms["seg"]
    if out["obj_logits"] is not None:  # the U-Net reference has no object-score head
        terms["obj"] = object_loss(out["obj_logits"].flatten(), present.flatten(), valid.flatten())
        total = total + lcfg["w_obj"] * terms["obj"]
    if out["srpp"] is not None:
        tgt = srpp_targets(batch["z_mm"], batch["slice_index"], mcfg["srpp_target"], mcfg["srpp_scale_mm"])
        terms["srpp"] = srpp_loss(out["srpp"], tgt.to(out["srpp"].device), valid)
        total = total + lcfg["w_srpp"] * terms["srpp"]
    if out["bd_logits"] is not None:
        bt = boundary_targets(mask.flatten(0, 1)[:, None], mcfg["bd_width_px"])
        terms["bd"] = bd_loss(out["bd_logits"].flatten(0, 1)[:, None], bt, valid.flatten())
        total = total + lcfg["w_bd"] * terms["bd"]
    terms["loss"] = total
    return terms


# ---------------------------------------------------------------- validation
def validate(model, prepared: Path, case_ids: list[str], device) -> dict:
    from ..data.prepare import load_prepared_case
    from ..infer.volume import dice, predict_prepared

    scores = {}
    for cid in case_ids:
        image, label, _ = load_prepared_case(prepared, cid)
        prob = predict_prepared(model, np.asarray(image, dtype=np.float32), device=device)
        scores[cid] = dice(prob >= 0.5, np.asarray(label) > 0)
    return scores


# ---------------------------------------------------------------- bookkeeping
MODULES = {
    "image_encoder": "sam.image_encoder.", "memory_attention": "sam.memory_attention.",
    "memory_encoder": "sam.memory_encoder.", "prompt_encoder": "sam.sam_prompt_encoder.",
    "mask_decoder": "sam.sam_mask_decoder.", "adapter": "adapter.", "srpp": "srpp.", "bd": "bd.",
    "bd_fusion": "fusion.", "unet3d": "net.",
}


def module_parameters(model: torch.nn.Module) -> dict:
    """{module: {"total": n, "trainable": n}}; SAM2's small leftovers go to ``sam_other``."""
    out = {k: {"total": 0, "trainable": 0} for k in [*MODULES, "sam_other"]}
    for name, p in model.named_parameters():
        key = next((k for k, pre in MODULES.items() if name.startswith(pre)), "sam_other")
        out[key]["total"] += p.numel()
        out[key]["trainable"] += p.numel() if p.requires_grad else 0
    return {k: v for k, v in out.items() if v["total"]}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocated memory, or on CPU the process's peak resident set size (MB)."""
    import resource
    import sys

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------- main entry
def _csv_rows(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if int(r["step"]) <= upto_step]


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def pick_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    try:
        return torch.device(requested)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {requested!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def run_key(vcfg: dict, target: str, fold: int, prepared: Path) -> str:
    """What a run's result depends on: the model and training settings, the target, the
    fold, and the prepared data (its fingerprint and splits). A run folder whose
    checkpoint carries another key is stale, not resumable."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps({"model": vcfg["model"], "train": vcfg["train"], "target": vcfg["targets"][target],
                         "fold": fold}, sort_keys=True).encode())
    for name in ("fingerprint.json", "splits.json"):
        f = prepared / name
        h.update(f.read_bytes() if f.is_file() else b"")
    return h.hexdigest()


def _supersede(out: Path, reason: str) -> None:
    """Move a stale run's files to OUT/superseded/ (replacing an older superseded run)."""
    import shutil

    old = out / "superseded"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for f in out.iterdir():
        if f.name != "superseded" and f.is_file():
            f.rename(old / f.name)
    log.warning("%s: %s; the old run was moved to %s and training starts over", out, reason, old)


def train(cfg: dict, target: str, variant: str, fold: int, out: str | Path, prepared: str | Path | None = None,
          device: str | None = None, stop_after_step: int | None = None, on_change: str = "error") -> Path:
    """Train (or resume) one run. ``on_change``: what to do when OUT holds a run made with
    other settings or data: ``error`` (default) or ``restart`` (move it to
    OUT/superseded/ and start over; the workflow uses this when its inputs changed)."""
    from ..data.prepare import check_prepared_target
    from .dataset import ClipDataset, list_cases

    vcfg = variant_config(cfg, variant)
    mcfg, tcfg = vcfg["model"], vcfg["train"]
    if target not in vcfg["targets"]:
        raise UserError(f"unknown target {target!r}; defined targets: {', '.join(sorted(vcfg['targets']))}")
    prepared = Path(prepared) if prepared else Path(vcfg["data"]["prepared"]) / target
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder (the run folder to write into)", out)
    dev = pick_device(device)
    check_prepared_target(prepared, target)
    train_ids = list_cases(prepared, fold, "train")
    val_ids = list_cases(prepared, fold, "val")
    if tcfg["val_max_cases"]:
        val_ids = val_ids[: tcfg["val_max_cases"]]

    seed = tcfg["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    if tcfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(mcfg, dev, clip_length=tcfg["clip_length"])
    model.train()

    enc_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("sam.image_encoder.")]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("sam.image_encoder.")]
    groups = [{"params": other, "lr": tcfg["lr"]}]
    if enc_params:
        groups.append({"params": enc_params, "lr": tcfg["lr_encoder"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=tcfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg["warmup_steps"], tcfg["steps"]))

    step, best = 0, -1.0
    last = out / "last.pt"
    this_run = run_key(vcfg, target, fold, prepared)
    if last.is_file():
        state = load_checkpoint(last)
        if state.get("target") != target or state.get("variant") != variant or state.get("fold") != fold:
            raise UserError(f"holds a checkpoint of {state.get('target')}/{state.get('variant')}/fold {state.get('fold')}, "
                            f"not {target}/{variant}/fold {fold}", out)
        if state.get("run_key") != this_run:
            reason = "holds a run made with other settings or prepared data"
            if on_change != "restart":
                raise UserError(f"{reason}; pass --restart-if-changed to move it aside and start over", out)
            _supersede(out, reason)
    if last.is_file():
        load_trainable(model, state, last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, best = int(state["step"]), float(state.get("best_dice", -1.0))
        log.info("resuming %s/%s/fold %d from step %d (%s)", target, variant, fold, step, last)
    train_rows = _csv_rows(out / "train_log.csv", step)
    val_rows = _csv_rows(out / "val_log.csv", step)

    per_step = tcfg["batch_size"] * tcfg["grad_accum"]
    dataset = ClipDataset(
        prepared, train_ids, clip_length=tcfg["clip_length"], image_size=mcfg["image_size"],
        length=tcfg["steps"] * per_step, seed=seed, fg_share=tcfg["fg_share"], reverse_prob=tcfg["reverse_prob"],
        augment=tcfg["augment"], srpp_target=mcfg["srpp_target"],
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=tcfg["batch_size"], sampler=range(step * per_step, len(dataset)),
        num_workers=tcfg["num_workers"] if dev.type == "cuda" else min(tcfg["num_workers"], 1),
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG (dropout) untouched
        persistent_workers=False, drop_last=True,
    )
    use_amp = tcfg["amp"] and dev.type == "cuda"
    base_sha = None
    if mcfg["pretrained"] and encoder_frozen(mcfg):
        from ..infer.predict import sha256_file
        base_sha = sha256_file(Path(mcfg["checkpoint"]))  # predict checks the frozen weights against it
    meta = lambda: {"target": target, "variant": variant, "fold": fold, "best_dice": best,  # noqa: E731
                    "encoder_frozen": encoder_frozen(mcfg), "pretrained": mcfg["pretrained"],
                    "base_weights_sha256": base_sha, "run_key": this_run}
    trainable = [p for p in model.parameters() if p.requires_grad]
    t_start = time.perf_counter()
    it = iter(loader)

    def flush_logs():
        _write_csv(out / "train_log.csv", TRAIN_FIELDS, train_rows)
        _write_csv(out / "val_log.csv", ["step", "mean_dice", *val_ids], val_rows)

    ensure_dir(out)  # only now: a refusal above leaves no empty run folder behind
    for name in ("last.pt", "best.pt", "train_log.csv", "val_log.csv", "train_summary.json"):
        remove_stale(out / name)  # the temp file of a write that a kill interrupted
    with new_progress() as progress:
        bar = progress.add_task(f"train {target}/{variant}/f{fold}", total=tcfg["steps"], completed=step)
        while step < tcfg["steps"]:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for _ in range(tcfg["grad_accum"]):
                batch = next(it)
                # prompts are simulated from the CPU copy of the masks, before the batch moves
                key, prompt = (None, None) if getattr(model, "is_unet", False) else \
                    make_prompt(batch, tcfg, np.random.default_rng((seed, 7, step)), dev)
                batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    outp = model.forward_clip(batch["image"], key_index=key, prompt=prompt)
                    terms = compute_losses(model, outp, batch, vcfg)
                (terms["loss"] / tcfg["grad_accum"]).backward()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / tcfg["grad_accum"]
            if tcfg["grad_clip"] > 0:
                gn = float(torch.nn.utils.clip_grad_norm_(trainable, tcfg["grad_clip"]))
            else:
                gn = float(torch.norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None])))
            optimizer.step()
            scheduler.step()
            step += 1
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], "grad_norm": gn,
                   "seconds": time.perf_counter() - t0, **sums}
            train_rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            progress.update(bar, completed=step, description=f"train {target}/{variant}/f{fold} loss {sums['loss']:.3f}")

            if step % tcfg["val_every"] == 0 or step == tcfg["steps"]:
                scores = validate(model, prepared, val_ids, dev)
                mean = float(np.mean(list(scores.values()))) if scores else float("nan")
                val_rows.append({"step": step, "mean_dice": f"{mean:.6f}", **{k: f"{v:.6f}" for k, v in scores.items()}})
                log.info("step %d: validation 3D Dice %.4f over %d cases", step, mean, len(scores))
                if scores and mean > best:
                    best = mean
                    save_checkpoint(out / "best.pt", model, None, None, step, vcfg, meta())
            if step % tcfg["checkpoint_every"] == 0 or step == tcfg["steps"]:
                flush_logs()
                save_checkpoint(last, model, optimizer, scheduler, step, vcfg, meta())
            if stop_after_step is not None and step >= stop_after_step:
                flush_logs()
                log.warning("stopping after step %d as asked (simulated interruption)", step)
                os._exit(75)
    flush_logs()
    write_json(out / "train_summary.json", {
        "target": target, "variant": variant, "fold": fold, "steps": step, "best_val_dice": best,
        "device": str(dev), "seconds_this_run": time.perf_counter() - t_start, "arch": mcfg["arch"],
        "encoder_frozen": encoder_frozen(mcfg), "pretrained": mcfg["pretrained"],
        "trainable_parameters": sum(p.numel() for p in trainable),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "parameters_per_module": module_parameters(model),
        "peak_memory_mb": peak_memory_mb(dev),
        "median_step_seconds": float(np.median([float(r["seconds"]) for r in train_rows])) if train_rows else None,
        "code_digest": package_digest(),  # the package code that finished this run
    })
    return out
