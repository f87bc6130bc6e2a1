"""Claim: the clip loader (memory-mapped window reads) is faster than loading whole volumes.

Both variants run the identical ClipDataset pipeline (window choice, reversal, augmentation,
fit_to_square, SAM2 normalisation, key slice) over the same synthetic prepared target made
in a temp dir; they differ only in how the D slices are read:

- ours: ``np.load(mmap_mode="r")`` once per worker, then read slices ``start:stop`` only;
- baseline (naive): ``np.load`` of the whole image and label volumes, without mmap, for
  every clip, then slice.

Prints clips/s of a DataLoader (batch 4) with num_workers 0 and 2 at each image size, and
the ratio ours / naive (> 1: ours is faster). Each row is the best of ``--repeats`` runs,
ours and naive interleaved, so that load from other processes hurts both alike. Files are warm in the OS page cache for both
(the first batch is a warm-up), so the naive cost is copying whole arrays, not disk reads;
on a cold disk or network storage the gap grows.

Usage: python benchmarks/bench_loader.py [--cases 4] [--size 512] [--clips 96]
       [--clip-length 8] [--image-sizes 128 256] [--workers 0 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from _common import emit


def make_target(root: Path, cases: int, size: int) -> Path:
    from sam2_3dmed.config import load_config
    from sam2_3dmed.data.prepare import prepare_target
    from sam2_3dmed.data.synth import synth_task

    task = synth_task("Task09_Spleen", root / "raw", cases=cases, test_cases=0, seed=0, size=size)
    cfg = load_config(overrides={"splits": {"folds": 2, "test_fraction": 0.0}})
    return prepare_target(task, "spleen", root / "prep", cfg)


def naive_dataset_class():
    from sam2_3dmed.train.dataset import ClipDataset

    class NaiveClipDataset(ClipDataset):
        """Same pipeline; reads the whole volume into memory for every clip."""

        def read_window(self, case_id, start, stop):
            d = self.prepared.path / "cases" / case_id
            image = np.load(d / "image.npy", allow_pickle=False)
            label = np.load(d / "label.npy", allow_pickle=False)
            return image[start:stop].astype(np.float32), label[start:stop].copy()

    return NaiveClipDataset


def clips_per_s(ds, workers: int, batch: int, n_clips: int) -> float:
    dl = DataLoader(ds, batch_size=batch, num_workers=workers,
                    persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(dl)
    next(it)  # warm-up: worker start, first file opens, page cache
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["image"].shape[0]
        if n >= n_clips:
            break
    dt = time.perf_counter() - t0
    del it
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--size", type=int, default=512, help="in-plane matrix of the synthetic phantoms (CT: 512)")
    ap.add_argument("--clips", type=int, default=96, help="timed clips per configuration")
    ap.add_argument("--clip-length", type=int, default=8)
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the main process (workers always use 1, as DataLoader sets)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from sam2_3dmed.console import log
    log.setLevel("WARNING")
    from sam2_3dmed.data.prepared import PreparedTarget
    from sam2_3dmed.train.dataset import ClipDataset

    Naive = naive_dataset_class()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prep = make_target(Path(tmp), args.cases, args.size)
        target = PreparedTarget(prep)
        ids = target.cases(0, "train") + target.cases(0, "val")
        shapes = [target.case(c)[0].shape for c in ids]
        mb = [np.prod(s) * 3 / 2**20 for s in shapes]  # float16 image + uint8 label
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {len(ids)} synthetic cases prepared in "
              f"{time.perf_counter() - t0:.1f} s")
        print(f"# prepared (z, y, x): {shapes}; image+label {np.median(mb):.1f} MB median per case")
        print(f"# D={args.clip_length}, batch {args.batch}, {args.clips} timed clips per run, best of "
              f"{args.repeats} runs, default augmentation")
        print(f"{'S':>5} {'workers':>7} {'ours clips/s':>13} {'naive clips/s':>14} {'ours/naive':>10}")
        for s in args.image_sizes:
            for w in args.workers:
                kw = dict(clip_length=args.clip_length, image_size=s, length=10_000, seed=0)
                ours = naive = 0.0
                for _ in range(args.repeats):
                    ours = max(ours, clips_per_s(ClipDataset(prep, ids, **kw), w, args.batch, args.clips))
                    naive = max(naive, clips_per_s(Naive(prep, ids, **kw), w, args.batch, args.clips))
                print(f"{s:>5} {w:>7} {ours:>13.1f} {naive:>14.1f} {ours / naive:>10.2f}")
                emit(f"training clip loader, {s} px, D={args.clip_length}, {w} workers", ours, naive,
                     "naive loader (whole case read per clip, same augmentation)", "clips/s", better="higher")


if __name__ == "__main__":
    main()
