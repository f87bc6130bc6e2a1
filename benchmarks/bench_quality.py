"""Quality on synthetic data: SAM2-3dMed vs its ablations vs plain SAM2 vs a MONAI 3D U-Net.

Question: at a fixed, small CPU budget, do SRPP and BD help, and how does the SAM2 route
compare with a conventional 3D U-Net trained and scored by the same pipeline?

Protocol (all settings printed and written to the section):

* data: the three synthetic tasks (``sam2-3dmed synth``: Task09_Spleen, Task07_Pancreas,
  Task06_Lung phantoms), ``--cases`` labelled cases each, prepared with this project's
  ``prepare`` at a coarse in-plane spacing; 3 folds, fold 0 scored (its validation cases);
* models: variants ``full``, ``no_srpp``, ``no_bd``, ``sam2_ft`` (the config's variants),
  SAM2.1 Hiera-tiny, **random init** (no SAM2 weights can be downloaded here, so the
  encoder is trained too: this is the paper's "without pretraining" setting, where it
  reports much lower numbers), and ``unet3d`` (MONAI UNet, same clips, losses, schedule);
* budget: the same number of optimiser steps for every model (``--steps``), and for the
  U-Net also 5x as many (``unet3d_time``: a U-Net step is ~5x cheaper here, so that is
  about the same training time), clips of
  ``--clip`` slices at ``--image-size`` px, each seed changes initialisation and data order;
* scoring: ``sam2-3dmed evaluate`` code path (``evaluate_run``): auto mode (no prompt),
  prediction mapped back to the original grid, largest component for organs, Dice and
  HD95 in 3D, in mm, against the original label files;
* aggregation: per run, the mean over the validation cases; then mean +- std over seeds.
  A difference is called "within noise" when it is smaller than twice its standard error
  (sqrt(s1^2/n + s2^2/n) over the seed means).

Runs are cached under ``--work`` (one folder per target/variant/seed, keyed by the
settings), so an interrupted benchmark resumes; ``--fresh`` starts over.

Usage: python benchmarks/bench_quality.py [--targets spleen pancreas lung_tumour]
       [--variants full no_srpp no_bd sam2_ft unet3d] [--seeds 0 1 2] [--steps 100]
       [--image-size 64] [--clip 4] [--cases 9] [--size 96] [--work benchmarks/.work/quality]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, machine, write_section

TASKS = {"spleen": "Task09_Spleen", "pancreas": "Task07_Pancreas", "lung_tumour": "Task06_Lung"}
LABELS = {"full": "SAM2-3dMed (full)", "no_srpp": "without SRPP", "no_bd": "without BD",
          "sam2_ft": "plain SAM2 fine-tune", "unet3d": "MONAI 3D U-Net (same steps)",
          "unet3d_time": "MONAI 3D U-Net (5x steps: about the same time)"}
UNET_TIME_FACTOR = 5  # a U-Net step costs ~0.2 s here, a SAM2-3dMed step ~1 s (hiera-tiny trained from scratch)


def settings(args) -> dict:
    return {
        "data": {"source": "synthetic", "root": str(args.work / "raw"), "prepared": str(args.work / "prepared")},
        "targets": {t: {"spacing_mm": [args.spacing, args.spacing]} for t in TASKS},
        "splits": {"folds": 3, "test_fraction": 0.0, "seed": 0},
        "model": {"backbone": "tiny", "image_size": args.image_size, "pretrained": False,
                  "adapter_blocks": 1, "srpp_layers": 1},
        "train": {"clip_length": args.clip, "steps": args.steps, "lr": 1e-3, "lr_encoder": 1e-3,
                  "warmup_steps": max(1, args.steps // 10), "checkpoint_every": args.steps,
                  "val_every": args.steps, "val_max_cases": 1, "num_workers": 0, "amp": False,
                  "prompt_prob": 0.25},
        "evaluate": {"modes": ["auto"], "save_predictions": False, "checkpoint": "last"},
        "infer": {"chunk": 4},
        "variants": {"unet3d_time": {"model": {"arch": "unet3d", "pretrained": False},
                                     "train": {"steps": UNET_TIME_FACTOR * args.steps,
                                               "warmup_steps": max(1, UNET_TIME_FACTOR * args.steps // 10),
                                               "checkpoint_every": UNET_TIME_FACTOR * args.steps,
                                               "val_every": UNET_TIME_FACTOR * args.steps}}},
    }


def mean_std(values):
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size)


def run_one(cfg: dict, target: str, variant: str, seed: int, work: Path, key: str) -> dict:
    from sam2_3dmed.config import deep_merge
    from sam2_3dmed.evaluate.evaluation import EvalJob, evaluate_run
    from sam2_3dmed.train.trainer import train

    run_dir = work / "runs" / target / variant / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("key") == key:
            return rec
        shutil.rmtree(run_dir)  # made with other settings
    # an interrupted run's folder stays: the trainer resumes it from last.pt
    scfg = deep_merge(cfg, {"train": {"seed": seed}})
    t0 = time.perf_counter()
    train(scfg, target, variant, 0, run_dir / "train", device="cpu")
    t_train = time.perf_counter() - t0
    evaluate_run(scfg, EvalJob(target, variant, 0, run_dir / "train", run_dir / "eval", device="cpu", overwrite=True))
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    auto = summary["metrics"]["auto"]
    ts = json.loads((run_dir / "train" / "train_summary.json").read_text())
    rec = {"key": key, "target": target, "variant": variant, "seed": seed,
           "dice": auto["dice"]["mean"], "hd95": auto["hd95"]["mean"], "nsd": auto["nsd"]["mean"],
           "n_cases": auto["dice"]["n"], "train_seconds": t_train,
           "median_step_seconds": ts.get("median_step_seconds"),
           "trainable_parameters": ts.get("trainable_parameters"), "val_dice_prepared": ts.get("best_val_dice")}
    done.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def verdict(a: list[float], b: list[float]) -> str:
    """a - b with its standard error over seeds, and whether it exceeds 2 SE."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if not (na and nb):
        return "n/a"
    d = ma - mb
    se = math.sqrt(sa ** 2 / na + sb ** 2 / nb) if na > 1 and nb > 1 else float("nan")
    tag = "within noise" if not math.isfinite(se) or abs(d) < 2 * se else ("better" if d > 0 else "worse")
    return f"{d:+.4f} (SE {se:.4f}: {tag})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--variants", nargs="+", default=list(LABELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--clip", type=int, default=4)
    ap.add_argument("--cases", type=int, default=9)
    ap.add_argument("--size", type=int, default=96, help="in-plane matrix of the phantoms")
    ap.add_argument("--spacing", type=float, default=1.5, help="prepared in-plane spacing (mm)")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work" / "quality")
    ap.add_argument("--fresh", action="store_true", help="delete cached runs first")
    args = ap.parse_args()
    os.environ.setdefault("SAM2_3DMED_NO_PROGRESS", "1")
    import logging

    logging.getLogger("sam2_3dmed").setLevel(logging.WARNING)
    from sam2_3dmed.config import load_config
    from sam2_3dmed.data.prepare import prepare_target
    from sam2_3dmed.data.synth import synth_task

    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    over = settings(args)
    cfg = load_config(overrides=over)
    # what a cached run depends on (the extra variants only add runs of their own)
    base = {k: v for k, v in over.items() if k != "variants"}
    key = hashlib.sha256(json.dumps([base, args.cases, args.size], sort_keys=True).encode()).hexdigest()[:16]
    t_all = time.perf_counter()
    for target in args.targets:
        task = TASKS[target]
        raw = args.work / "raw" / task
        if not raw.is_dir():
            synth_task(task, args.work / "raw", cases=args.cases, test_cases=0, seed=0, size=args.size)
        prep = args.work / "prepared" / target
        if not prep.is_dir():
            prepare_target(raw, target, prep, cfg)

    records = []
    total = len(args.targets) * len(args.variants) * len(args.seeds)
    i = 0
    for seed in args.seeds:  # seed-major: stopped early, it still has every model for the first seeds
        for target in args.targets:
            for variant in args.variants:
                i += 1
                t0 = time.perf_counter()
                rec = run_one(cfg, target, variant, seed, args.work, key)
                records.append(rec)
                print(f"[{i}/{total}] {target:12s} {variant:8s} seed {seed}: Dice {rec['dice']:.4f} "
                      f"HD95 {rec['hd95']:.2f} mm ({time.perf_counter() - t0:.0f} s)", flush=True)

    def vals(t, v, m):
        return [r[m] for r in records if r["target"] == t and r["variant"] == v]

    lines = [
        f"## Quality on synthetic phantoms (fixed CPU budget, {len(args.seeds)} seeds)", "",
        f"Measured on {machine()} by `python benchmarks/bench_quality.py {' '.join(sys.argv[1:])}`: "
        f"{len(records)} runs, {sum(r['train_seconds'] for r in records) / 60:.0f} min of training in all "
        f"(runs are cached under --work; this invocation took {time.perf_counter() - t_all:.0f} s).", "",
        f"Synthetic phantoms (not MSD data), {args.cases} labelled cases per task at {args.size} px, prepared at "
        f"{args.spacing} mm in-plane; fold 0 of 3 scored ({records[0]['n_cases'] if records else '?'} validation cases); "
        f"every model trained {args.steps} steps (`unet3d_time`: {UNET_TIME_FACTOR * args.steps}) on clips of {args.clip} slices at {args.image_size} px, random init "
        f"(no SAM2 weights offline; the paper's 'without pretraining' setting), seeds {args.seeds}; "
        "scored by `evaluate` (auto mode, original grid, 3D, mm). Mean +- std over seeds of each run's mean over cases.",
        "", "| target | model | Dice | HD95 (mm) | NSD | trainable params | s/step | train s/run |",
        "|---|---|---|---|---|---|---|---|"]
    for t in args.targets:
        for v in args.variants:
            d, h, n = vals(t, v, "dice"), vals(t, v, "hd95"), vals(t, v, "nsd")
            if not d:
                continue
            md, sd, k = mean_std(d)
            mh, sh, _ = mean_std(h)
            mn, sn, _ = mean_std(n)
            steps = [r["median_step_seconds"] for r in records if r["target"] == t and r["variant"] == v]
            params = next(r["trainable_parameters"] for r in records if r["target"] == t and r["variant"] == v)
            lines.append(f"| {t} | {LABELS.get(v, v)} | {md:.4f} +- {sd:.4f} | {mh:.2f} +- {sh:.2f} | "
                         f"{mn:.4f} +- {sn:.4f} | {params / 1e6:.2f} M | {np.median(steps):.2f} | "
                         f"{np.median([r['train_seconds'] for r in records if r['target'] == t and r['variant'] == v]):.0f} |")
    lines += ["", "Differences in Dice against `full` (mean over seeds; SE from the seed spread; "
              "'within noise' = smaller than 2 SE):", "",
              "| target | " + " | ".join(LABELS.get(v, v) for v in args.variants if v != "full") + " |",
              "|---|" + "---|" * (len(args.variants) - 1)]
    for t in args.targets:
        if "full" not in args.variants:
            break
        lines.append(f"| {t} | " + " | ".join(verdict(vals(t, v, "dice"), vals(t, "full", "dice"))
                                              for v in args.variants if v != "full") + " |")
    md_text = "\n".join(lines)
    print(md_text)
    write_section("quality", md_text + "\n\nWhat these numbers do and do not show: see `benchmarks/README.md`.")
    for t in args.targets:
        if "full" in args.variants:
            for base in ("sam2_ft", "unet3d_time"):
                if base in args.variants and vals(t, base, "dice"):
                    emit(f"3D Dice on synthetic {t}, full ({args.steps} steps) vs {base} ({len(args.seeds)} seeds)",
                         mean_std(vals(t, "full", "dice"))[0], mean_std(vals(t, base, "dice"))[0],
                         LABELS[base] + ", same budget", "Dice", better="higher")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
