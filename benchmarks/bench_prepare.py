"""Claim: `sam2-3dmed prepare` is at least as fast as the equivalent MONAI transform chain.

Both process the same synthetic Task09_Spleen cases from .nii.gz on disk, single process:
- ours: the full `prepare_target` (load + checks, reorient, in-plane resample, crop,
  window, and writing the arrays, fingerprint and splits to disk);
- baseline: MONAI LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) ->
  Spacingd(in-plane target, native slice spacing) -> ScaleIntensityRanged -> CropForegroundd,
  in memory only (it writes nothing, so the comparison favours MONAI).

Prints cases/min for each and the ratio ours/MONAI (> 1 means we are faster).
Usage: python benchmarks/bench_prepare.py [--cases 8] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import warnings
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit


def run_ours(task_dir: Path, out: Path, cfg: dict) -> float:
    from sam2_3dmed.data.prepare import prepare_target

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    prepare_target(task_dir, "spleen", out, cfg)
    return time.perf_counter() - t0


def run_monai(files: list[dict], cfg: dict) -> float:
    from monai import transforms as T

    tcfg, pcfg = cfg["targets"]["spleen"], cfg["prepare"]
    lo, hi = tcfg["hu_window"]
    thr = (pcfg["body_threshold_hu"] - lo) / (hi - lo)
    sx, sy = tcfg["spacing_mm"]
    chain = T.Compose([
        T.LoadImaged(keys=["image", "label"], image_only=True),
        T.EnsureChannelFirstd(keys=["image", "label"]),
        T.Orientationd(keys=["image", "label"], axcodes="RAS"),
        # a non-positive pixdim keeps that axis' native spacing (the slice axis here)
        T.Spacingd(keys=["image", "label"], pixdim=(sx, sy, -1.0), mode=("bilinear", "nearest")),
        T.ScaleIntensityRanged(keys=["image"], a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys=["image", "label"], source_key="image", select_fn=lambda x: x > thr,
                          margin=int(round(tcfg["crop_margin_mm"] / sx)), allow_smaller=True),
    ])
    t0 = time.perf_counter()
    for item in files:
        out = chain(item)
        assert out["image"].ndim == 4
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", type=int, default=256, help="in-plane matrix of the synthetic cases")
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings for each side")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")

    import os

    os.environ.setdefault("SAM2_3DMED_NO_PROGRESS", "1")
    from sam2_3dmed.config import load_config
    from sam2_3dmed.data.msd import load_dataset_json
    from sam2_3dmed.data.synth import synth_task

    cfg = load_config(overrides={"splits": {"folds": 2, "test_fraction": 0.0}})
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        task_dir = synth_task("Task09_Spleen", tmp / "raw", cases=args.cases, test_cases=0, seed=0, size=args.size)
        files = [{"image": str(c.image), "label": str(c.label)} for c in load_dataset_json(task_dir).training]
        voxels = sum(int(np.prod(__import__("nibabel").load(f["image"]).shape)) for f in files)
        # interleave the two sides so machine noise hits both alike; keep the best of each
        ours, monai_t = [], []
        for _ in range(args.repeats):
            ours.append(run_ours(task_dir, tmp / "prepared", cfg))
            monai_t.append(run_monai(files, cfg))
    t_ours, t_monai = min(ours), min(monai_t)
    cpm_ours, cpm_monai = 60 * args.cases / t_ours, 60 * args.cases / t_monai
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch threads={torch.get_num_threads()}")
    print(f"cases: {args.cases} synthetic Task09_Spleen, {args.size} px in-plane, {voxels / args.cases / 1e6:.1f} Mvoxel/case")
    print(f"ours  (sam2-3dmed prepare, incl. writing outputs): {cpm_ours:8.1f} cases/min  ({t_ours:.2f} s)")
    print(f"MONAI (LoadImaged..CropForegroundd, in memory):    {cpm_monai:8.1f} cases/min  ({t_monai:.2f} s)")
    print(f"ratio ours/MONAI: {cpm_ours / cpm_monai:.2f}x")
    emit(f"prepare throughput, {args.cases} synthetic spleen cases at {args.size} px", cpm_ours, cpm_monai,
         "MONAI LoadImaged..CropForegroundd (in memory, writes nothing)", "cases/min", better="higher",
         note="ours includes writing arrays, fingerprint and splits")


if __name__ == "__main__":
    main()
