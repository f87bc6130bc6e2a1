"""Claim: the cost of SRPP + BD (+ adapter, fusion) over plain SAM2 fine-tuning, and that
the clip loader is not the bottleneck.

Measures, in one run on the same machine and the same synthetic prepared target:
- training step time (forward + backward + AdamW step) and peak memory (CPU: max RSS
  growth; CUDA: torch.cuda.max_memory_allocated) of the `full` variant vs `sam2_ft`
  (the named baseline) at 128 and 256 px, D=8, random init, encoder frozen (the paper's
  setting) and trained;
- ClipDataset throughput (clips/s, 0 workers) vs model throughput (clips/s) at the same size.

Prints each figure and the ratios full/sam2_ft and loader/model.
Usage: python benchmarks/bench_train.py [--sizes 128 256] [--steps 5] [--clip 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, machine


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_prepared(tmp: Path) -> Path:
    from sam2_3dmed.config import load_config
    from sam2_3dmed.data.prepare import prepare_target
    from sam2_3dmed.data.synth import synth_task

    task = synth_task("Task09_Spleen", tmp / "raw", cases=4, test_cases=0, seed=0, size=192)
    cfg = load_config(overrides={"splits": {"folds": 2, "test_fraction": 0.0},
                                 "targets": {"spleen": {"spacing_mm": [1.0, 1.0]}}})
    return prepare_target(task, "spleen", tmp / "prep", cfg)


def bench_variant(variant: str, size: int, clip: int, steps: int, frozen: bool, prep: Path, device: torch.device):
    from sam2_3dmed.config import load_config, variant_config
    from sam2_3dmed.model.factory import build_model
    from sam2_3dmed.data.prepared import PreparedTarget
    from sam2_3dmed.model.losses import compute_losses
    from sam2_3dmed.train.dataset import ClipDataset

    import logging

    logging.getLogger("sam2_3dmed").setLevel(logging.ERROR)  # fresh process: no random-init banner per build
    cfg = variant_config(load_config(overrides={"model": {"image_size": size, "pretrained": False,
                                                          "freeze_encoder": frozen}}), variant)
    torch.manual_seed(0)
    model = build_model(cfg["model"], device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ds = ClipDataset(prep, PreparedTarget(prep).cases(0, "train"), clip_length=clip, image_size=size, length=steps + 2, seed=0)
    batches = [torch.utils.data.default_collate([ds[i]]) for i in range(steps + 2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    base = rss_mb()  # peak RSS so far in this fresh process: model, optimiser, data
    times = []
    for i, batch in enumerate(batches):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model.forward_clip(batch["image"])
        compute_losses(out, batch, cfg)["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # first two steps warm up allocators and kernels
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb() - base
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model, opt
    gc.collect()
    return float(np.median(times)), peak, trainable


def bench_loader(prep: Path, size: int, clip: int, n: int = 20) -> float:
    from sam2_3dmed.data.prepared import PreparedTarget
    from sam2_3dmed.train.dataset import ClipDataset

    ds = ClipDataset(prep, PreparedTarget(prep).cases(0, "train"), clip_length=clip, image_size=size, length=n, seed=1)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--clip", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    os.environ.setdefault("SAM2_3DMED_NO_PROGRESS", "1")
    import logging

    logging.getLogger("sam2_3dmed").setLevel(logging.ERROR)
    torch.set_num_threads(torch.get_num_threads())
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; D={args.clip}; median of {args.steps} steps after 2 warm-up steps; random init")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        prep = make_prepared(Path(tmp))
        for size in args.sizes:
            for frozen in (True, False):
                # each measurement in a fresh process, so peak RSS belongs to that variant alone
                ctx = multiprocessing.get_context("spawn")
                res = {}
                for v in ("sam2_ft", "full"):
                    with ctx.Pool(1) as pool:
                        res[v] = pool.apply(bench_variant, (v, size, args.clip, args.steps, frozen, prep, device))
                (tb, mb, pb), (tf, mf, pf) = res["sam2_ft"], res["full"]
                enc = "frozen" if frozen else "trained"
                emit(f"training step cost of SRPP+BD, {size} px, encoder {enc}, D={args.clip}", tf, tb,
                     "sam2_ft (plain SAM2 fine-tune, same loop)", "s/step", better="lower",
                     machine_desc=machine(args.device), note="ratio < 1: the price of the extra heads")
                print(f"{size:4d} px, encoder {enc:7s}: step full {tf:.3f} s vs sam2_ft {tb:.3f} s -> ratio {tf / tb:.2f}x; "
                      f"peak mem full {mf:.0f} MB vs sam2_ft {mb:.0f} MB; trainable params full {pf / 1e6:.2f} M vs {pb / 1e6:.2f} M")
            loader = bench_loader(prep, size, args.clip)
            model_cps = 1.0 / res["full"][0]
            print(f"{size:4d} px: loader {loader:.1f} clips/s vs model (full, trained encoder) {model_cps:.2f} clips/s "
                  f"-> loader/model {loader / model_cps:.1f}x")


if __name__ == "__main__":
    main()
