"""``sam2-3dmed train``: one target x variant x fold, resumable, deterministic on CPU.

Outputs in OUT/:
  last.pt, best.pt   trainable weights + optimiser/scheduler/RNG state + full config
  train_log.csv      one row per step: every loss term separately, lr, grad norm, time, and the
                     new heads' statistics (bd_gate, bd_fusion_ratio, srpp_mae_mm)
  val_log.csv        one row per validation: whole-volume 3D Dice per case and mean
  train_summary.json final state (steps, best Dice, timings, parameter counts)

A run finds OUT/last.pt and continues from it (same data order, same RNG streams), so
a run killed and restarted ends with the same weights as an uninterrupted one.

:class:`Trainer` is a set of small hooks, in the manner of nnU-Net's trainer, that a
variant can override: :meth:`~Trainer.configure_optimizer`, :meth:`~Trainer.resume_or_supersede`,
:meth:`~Trainer.make_loader`, :meth:`~Trainer.train_step`, :meth:`~Trainer.after_step`
(validation, checkpoints) and :meth:`~Trainer.summary`; :meth:`~Trainer.run` calls them.
The losses are in ``model/losses.py``, the prompts in ``model/prompts.py``, the clips in
``train/dataset.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file, ensure_dir, remove_stale, write_json
from ..code_digest import package_digest
from ..config import target_config, variant_config
from ..console import log, new_progress
from ..data.prepared import PreparedTarget
from ..device import amp_dtype, autocast, describe_gpu, peak_memory_mb, pick_device, set_deterministic, set_rng_state
from ..errors import UserError
from ..infer.inference import InferenceSettings, dice, predict_prepared
from ..model.boundary import BDFusion
from ..model.checkpoint import load_checkpoint, load_trainable, save_checkpoint, sha256_file
from ..model.factory import build_model, encoder_frozen
from ..model.losses import compute_losses
from ..model.prompts import clip_prompts
from .dataset import ClipDataset

#: the heads' statistics follow the losses: mean |gate| of BD-fusion after the step, the relative
#: change fusion made to the pixel features in the step (mean over its calls), and the SRPP head's
#: error in mm; empty for a model without the head (as srpp/bd)
TRAIN_FIELDS = ["step", "lr", "loss", "seg", "obj", "srpp", "bd", "grad_norm", "seconds", "bd_gate",
                "bd_fusion_ratio", "srpp_mae_mm"]
#: a stream of the run's seed kept for prompt simulation (apart from clip sampling and init)
PROMPT_STREAM = 7
#: exit code of a run stopped by ``stop_after_step`` (a simulated interruption, for tests)
EXIT_STOPPED = 75
ENCODER_PREFIX = "sam.image_encoder."


# ---------------------------------------------------------------- schedule, prompts
def lr_lambda(warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
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
    key = int(batch["key_index"][0])
    if key < 0 or rng.random() >= tcfg["prompt_prob"]:
        return None, None
    use_box = rng.random() < tcfg["prompt_box_share"]
    coords, labels = clip_prompts([m[key].numpy() for m in batch["mask"]], use_box, rng, tcfg["prompt_jitter"])
    return key, (torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device))


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


def run_key(vcfg: dict, target: str, fold: int, prepared: PreparedTarget) -> str:
    """What a run's result depends on: the model and training settings, the target, the
    fold, and the prepared data (its fingerprint and splits). A run folder whose
    checkpoint carries another key is stale, not resumable."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": vcfg["model"], "train": vcfg["train"], "target": vcfg["targets"][target],
                         "fold": fold}, sort_keys=True).encode())
    h.update(prepared.content_key())
    return h.hexdigest()


def _supersede(out: Path, reason: str) -> None:
    """Move a stale run's files to OUT/superseded/ (replacing an older superseded run)."""
    old = out / "superseded"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for f in out.iterdir():
        if f.name != "superseded" and f.is_file():
            f.rename(old / f.name)
    log.warning("%s: %s; the old run was moved to %s and training starts over", out, reason, old)


# ---------------------------------------------------------------- the trainer
class Trainer:
    """One run (target x variant x fold) into OUT. ``on_change``: what to do when OUT holds
    a run made with other settings or data: ``error`` or ``restart`` (move it to
    OUT/superseded/ and start over; the workflow uses this when its inputs changed)."""

    def __init__(self, cfg: dict, target: str, variant: str, fold: int, out: str | Path,
                 prepared: str | Path | None = None, device: str | None = None, on_change: str = "error"):
        self.cfg = variant_config(cfg, variant)
        self.mcfg, self.tcfg = self.cfg["model"], self.cfg["train"]
        target_config(self.cfg, target)
        self.target, self.variant, self.fold = target, variant, fold
        self.prepared = PreparedTarget(prepared or Path(self.cfg["data"]["prepared"]) / target)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UserError("exists and is not a folder (the run folder to write into)", self.out)
        self.on_change = on_change
        self.device = pick_device(device)
        self.prepared.check_target(target)
        self.train_ids = self.prepared.cases(fold, "train")
        # the first val_max_cases of the fold's (sorted, seeded) validation list: the same cases
        # at every validation and on resume; the setting is part of run_key
        self.val_ids = self.prepared.cases(fold, "val")[: self.tcfg["val_max_cases"] or None]
        # validation predicts whole volumes exactly as evaluate does (the infer section)
        self.val_settings = InferenceSettings.from_config(self.cfg, target)
        self.step, self.best = 0, -1.0
        self.train_rows: list[dict] = []
        self.val_rows: list[dict] = []
        self._synced_at: float | None = None  # when the device was last waited for (materialise)

    # ------------------------------------------------------------ hooks
    def build_network(self):
        torch.manual_seed(self.tcfg["seed"])
        np.random.seed(self.tcfg["seed"])
        set_deterministic(self.tcfg["deterministic"], self.device)
        gpu = describe_gpu(self.device)
        if gpu:
            log.info("training on %s (compute capability %s, %.1f GB, CUDA %s)", gpu["name"], gpu["capability"],
                     gpu["memory_gb"], gpu["cuda"])
        self.amp = amp_dtype(self.device, self.tcfg["amp"])
        model = build_model(self.mcfg, self.device, clip_length=self.tcfg["clip_length"])
        model.train()
        return model

    def configure_optimizer(self):
        """AdamW with its own learning rate for a trained encoder; warm-up + cosine schedule."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        enc = [p for n, p in named if n.startswith(ENCODER_PREFIX)]
        groups = [{"params": [p for n, p in named if not n.startswith(ENCODER_PREFIX)], "lr": self.tcfg["lr"]}]
        if enc:
            groups.append({"params": enc, "lr": self.tcfg["lr_encoder"]})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.tcfg["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lr_lambda(self.tcfg["warmup_steps"], self.tcfg["steps"]))
        return optimizer, scheduler

    def resume_or_supersede(self) -> None:
        """Continue from OUT/last.pt of this run, or move a stale run aside (``on_change``)."""
        last = self.out / "last.pt"
        self.run_key = run_key(self.cfg, self.target, self.fold, self.prepared)
        if last.is_file():
            state = load_checkpoint(last)
            if (state.get("target"), state.get("variant"), state.get("fold")) != (self.target, self.variant, self.fold):
                raise UserError(f"holds a checkpoint of {state.get('target')}/{state.get('variant')}/fold "
                                f"{state.get('fold')}, not {self.target}/{self.variant}/fold {self.fold}", self.out)
            if state.get("run_key") != self.run_key:
                reason = "holds a run made with other settings or prepared data"
                if self.on_change != "restart":
                    raise UserError(f"{reason}; pass --restart-if-changed to move it aside and start over", self.out)
                _supersede(self.out, reason)
        if last.is_file():
            load_trainable(self.model, state, last)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state.get("rng") or {"cpu": state["torch_rng"]}, self.device, str(last))
            self.step, self.best = int(state["step"]), float(state.get("best_dice", -1.0))
            log.info("resuming %s/%s/fold %d from step %d (%s)", self.target, self.variant, self.fold, self.step, last)
        self.train_rows = _csv_rows(self.out / "train_log.csv", self.step)
        self.val_rows = _csv_rows(self.out / "val_log.csv", self.step)

    def make_loader(self):
        """Clips from where the run stands: sample ``step x per-step`` onwards, so a resumed
        run sees exactly the clips an uninterrupted one would."""
        t = self.tcfg
        per_step = t["batch_size"] * t["grad_accum"]
        dataset = ClipDataset(self.prepared, self.train_ids, clip_length=t["clip_length"],
                              image_size=self.mcfg["image_size"], length=t["steps"] * per_step, seed=t["seed"],
                              fg_share=t["fg_share"], reverse_prob=t["reverse_prob"], augment=t["augment"])
        return torch.utils.data.DataLoader(
            dataset, batch_size=t["batch_size"], sampler=range(self.step * per_step, len(dataset)),
            num_workers=t["num_workers"] if self.device.type == "cuda" else min(t["num_workers"], 1),
            generator=torch.Generator().manual_seed(t["seed"]),  # keeps the global RNG (dropout) untouched
            persistent_workers=False, drop_last=True,
            pin_memory=self.device.type == "cuda",  # page-locked batches: the copies below do not block
        )

    def train_step(self, batches) -> dict:
        """One optimiser step over ``grad_accum`` batches; returns the step's log row.

        Nothing in the step waits for the device: the row holds the loss terms, the gradient
        norm and the heads' statistics as device tensors, made into numbers by
        :meth:`materialise` every ``log_every`` steps (one synchronisation for all of them)."""
        t, dev = self.tcfg, self.device
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        fusions = [m for m in self.model.modules() if isinstance(m, BDFusion)]
        for m in fusions:  # count this step's forward passes only (not a validation's)
            m.pop_fusion_ratio()
        sums: dict[str, torch.Tensor] = {}
        for _ in range(t["grad_accum"]):
            batch = next(batches)
            # prompts are simulated from the CPU copy of the masks, before the batch moves
            key, prompt = make_prompt(batch, t, np.random.default_rng((t["seed"], PROMPT_STREAM, self.step)), dev) \
                if self.model.accepts_prompts else (None, None)
            batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with autocast(dev, self.amp):
                terms = compute_losses(self.model.forward_clip(batch["image"], key_index=key, prompt=prompt), batch,
                                       self.cfg)
            (terms["loss"] / t["grad_accum"]).backward()
            for k, v in terms.items():
                v = v.detach().float() / t["grad_accum"]
                sums[k] = v if k not in sums else sums[k] + v
        if t["grad_clip"] > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.trainable, t["grad_clip"])
        else:
            grads = [p.grad for p in self.trainable if p.grad is not None]
            gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        heads = {}
        if fusions:  # absent keys are written as empty cells
            heads["bd_gate"] = torch.stack([m.gate_magnitude() for m in fusions]).mean()
            ratios = [r for r in (m.pop_fusion_ratio() for m in fusions) if r is not None]
            if ratios:
                heads["bd_fusion_ratio"] = torch.stack(ratios).mean()
        return {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": gn,
                "seconds": time.perf_counter() - t0, **sums, **heads}

    def materialise(self) -> None:
        """The pending rows' device tensors as numbers, with one copy from the device. On a GPU
        the host runs ahead of the device, so each pending step's ``seconds`` is the mean wall
        time per step since the last materialisation; on a CPU it is the step's own time."""
        start = len(self.train_rows)  # the pending rows are the tail: walk back over them only
        while start and any(torch.is_tensor(v) for v in self.train_rows[start - 1].values()):
            start -= 1
        pending = self.train_rows[start:]
        if not pending:
            return
        keys = [(i, k) for i, r in enumerate(pending) for k, v in r.items() if torch.is_tensor(v)]
        values = torch.stack([pending[i][k].detach().float().reshape(()) for i, k in keys]).cpu().tolist()
        for (i, k), v in zip(keys, values):
            pending[i][k] = v
        now = time.perf_counter()
        if self.device.type == "cuda" and self._synced_at is not None:
            per_step = (now - self._synced_at) / len(pending)
            for r in pending:
                r["seconds"] = per_step
        self._synced_at = now
        for r in pending:
            if not math.isfinite(r.get("srpp_mae_mm", 0.0)):  # no pair of valid slices: an empty cell
                del r["srpp_mae_mm"]
            for k, v in r.items():
                if isinstance(v, float):
                    r[k] = f"{v:.6g}"

    def validate(self) -> dict[str, float]:
        """3D Dice of each validation case, whole volumes through the inference path."""
        scores = {}
        for cid in self.val_ids:
            image, label, _ = self.prepared.case(cid, mmap=True)  # read a chunk of slices at a time
            prob = predict_prepared(self.model, image, settings=self.val_settings,
                                    device=self.device)
            scores[cid] = dice(prob >= self.val_settings.threshold, np.asarray(label) > 0)
        return scores

    def after_step(self) -> None:
        """Validation every ``val_every`` steps (best.pt on a new best) and last.pt every
        ``checkpoint_every`` steps, both also at the last step."""
        step, t = self.step, self.tcfg
        last = step == t["steps"]
        validate, save = step % t["val_every"] == 0 or last, step % t["checkpoint_every"] == 0 or last
        if step % t["log_every"] == 0 or validate or save:
            self.materialise()  # before validating: the pending steps' time is theirs alone
        if validate:
            scores = self.validate()
            mean = float(np.mean(list(scores.values()))) if scores else float("nan")
            self.val_rows.append({"step": step, "mean_dice": f"{mean:.6f}", **{k: f"{v:.6f}" for k, v in scores.items()}})
            log.info("step %d: validation 3D Dice %.4f over %d cases", step, mean, len(scores))
            if scores and mean > self.best:
                self.best = mean
                save_checkpoint(self.out / "best.pt", self.model, None, None, step, self.cfg, self.meta())
        if save:
            self.flush_logs()
            save_checkpoint(self.out / "last.pt", self.model, self.optimizer, self.scheduler, step, self.cfg, self.meta())
        if validate or save:
            self._synced_at = time.perf_counter()  # the next steps' clock starts after the work above

    def summary(self) -> dict:
        """train_summary.json: the final state, costs and provenance of the run."""
        model, rows = self.model, self.train_rows
        return {
            "target": self.target, "variant": self.variant, "fold": self.fold, "steps": self.step,
            "best_val_dice": self.best, "device": str(self.device), "seconds_this_run": time.perf_counter() - self.t_start,
            "arch": self.mcfg["arch"], "encoder_frozen": encoder_frozen(self.mcfg), "pretrained": self.mcfg["pretrained"],
            "trainable_parameters": sum(p.numel() for p in self.trainable),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "parameters_per_module": module_parameters(model),
            "peak_memory_mb": peak_memory_mb(self.device),
            "median_step_seconds": float(np.median([float(r["seconds"]) for r in rows])) if rows else None,
            "code_digest": package_digest(),  # the package code that finished this run
        }

    # ------------------------------------------------------------ plumbing
    def meta(self) -> dict:
        """What a checkpoint records about its run besides weights and config."""
        return {"target": self.target, "variant": self.variant, "fold": self.fold, "best_dice": self.best,
                "encoder_frozen": encoder_frozen(self.mcfg), "pretrained": self.mcfg["pretrained"],
                "base_weights_sha256": self.base_sha, "run_key": self.run_key}

    def flush_logs(self) -> None:
        self.materialise()
        _write_csv(self.out / "train_log.csv", TRAIN_FIELDS, self.train_rows)
        _write_csv(self.out / "val_log.csv", ["step", "mean_dice", *self.val_ids], self.val_rows)

    def prepare(self):
        """Model, optimiser, resumed state and data: everything :meth:`run` needs before its
        first step. Returns the iterator of batches from where the run stands."""
        self.model = self.build_network()
        self.optimizer, self.scheduler = self.configure_optimizer()
        self.resume_or_supersede()
        loader = self.make_loader()
        # predict checks the frozen SAM2 weights a model was trained on against this hash
        self.base_sha = sha256_file(Path(self.mcfg["checkpoint"])) \
            if self.mcfg["pretrained"] and encoder_frozen(self.mcfg) else None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.t_start = time.perf_counter()
        return iter(loader)

    def run(self, stop_after_step: int | None = None) -> Path:
        t, out = self.tcfg, self.out
        batches = self.prepare()
        ensure_dir(out)  # only now: a refusal above leaves no empty run folder behind
        for name in ("last.pt", "best.pt", "train_log.csv", "val_log.csv", "train_summary.json"):
            remove_stale(out / name)  # the temp file of a write that a kill interrupted
        name = f"train {self.target}/{self.variant}/f{self.fold}"
        self._synced_at = time.perf_counter()
        with new_progress() as progress:
            bar = progress.add_task(name, total=t["steps"], completed=self.step)
            while self.step < t["steps"]:
                self.train_rows.append(self.train_step(batches))
                self.after_step()
                shown = self.train_rows[-1]["loss"]  # the latest materialised loss
                progress.update(bar, completed=self.step,
                                description=name if torch.is_tensor(shown) else f"{name} loss {float(shown):.3f}")
                if stop_after_step is not None and self.step >= stop_after_step:
                    self.flush_logs()
                    log.warning("stopping after step %d as asked (simulated interruption)", self.step)
                    os._exit(EXIT_STOPPED)
        self.flush_logs()
        write_json(out / "train_summary.json", self.summary())
        return out


def train(cfg: dict, target: str, variant: str, fold: int, out: str | Path, prepared: str | Path | None = None,
          device: str | None = None, stop_after_step: int | None = None, on_change: str = "error") -> Path:
    """Train (or resume) one run; see :class:`Trainer`. The process's deterministic-algorithms
    setting (``train.deterministic``) is restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return Trainer(cfg, target, variant, fold, out, prepared, device, on_change).run(stop_after_step)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
