"""Claim: every stage's time and memory at MSD size (512 x 512, up to 751 slices) grow at most
linearly with voxels, and each rule stays inside the memory it declares.

The figures come from a real run of the workflow, ``config/rehearsal.yaml``: the real
configuration (Hiera-small, 512 px, clips of 12, the real targets, splits and rules) on
MSD-size synthetic volumes (``data.synthetic.profile: msd``: each task's real range of slice
counts and spacings, the longest case of each task included), with only the budgets cut
(3 training steps, validation and evaluation on one case). This script

1. (``--run``) runs that workflow: ``snakemake --cores N --configfile config/rehearsal.yaml``
   (jobs already done are skipped, as in any Snakemake run);
2. reads every job's Snakemake benchmark file (``results/rehearsal/logs/<rule>/*.bench.tsv``:
   wall seconds and max RSS of the job's whole process tree), the job's size in voxels
   (synth, prepare: every case of the task; train: its step count and its validation
   case; evaluate: the evaluated cases; report: the evaluated cases of every run), the
   artifacts (prepared MB, checkpoint MB, feature cache MB, report MB) and the memory each
   rule declares (``mem_mb``, from a dry run of the same config);
3. (``--predict-longest``) times ``sam2-3dmed predict`` on the longest case of the data
   (Pancreas, 751 slices) with the rehearsal's trained model: wall seconds and peak RSS of
   the process (``resource.getrusage(RUSAGE_CHILDREN)``), kept in
   ``results/rehearsal/predict_longest.json``;
4. (``--flops``) counts FLOPs (``torch.utils.flop_counter``, with bench_cost's formulas for the
   CPU attention kernel) of one real training step (``Trainer.train_step``, clip of 12 at
   512 px) and of whole-volume inference per slice, and derives a **lower bound** for the
   full real run on one GPU: 3 targets x 5 folds x 20000 steps, 20 validations of 5 cases,
   and the evaluation of every case in 2 modes, at the GPU's dense bf16 peak (an estimate:
   real utilisation is well below peak, so real runs take several times longer).

Growth with voxels: for a rule with jobs of 3 or more sizes, the exponent ``k`` of a
least-squares fit ``cost ~ voxels^k`` on log-log axes (k <= 1: at most linear); RSS is fitted
above the process's fixed start-up memory (torch and the package imported: the smallest
job's RSS is not subtracted, the fit is on the raw figures, so a large fixed part pulls k
below 1). The BENCH line per rule: the per-voxel cost of its largest job against its
smallest (named baseline: the smallest job of the same rule in the same run); 1.0 is
linear, below 1 sub-linear.

Writes the Markdown section ``benchmarks/sections/scale.md``.

Usage: python benchmarks/bench_scale.py [--run] [--predict-longest] [--flops] [--cores 2]
       [--config config/rehearsal.yaml]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import emit, machine, write_section  # noqa: E402

RULE_ORDER = ["synth", "fetch_msd", "prepare", "train", "evaluate", "report"]
#: dense bf16 peak of the GPU the estimate assumes (NVIDIA H100 SXM: 989 TFLOP/s without sparsity)
GPU_PEAK_FLOPS = 989e12
GPU_NAME = "one NVIDIA H100 SXM at its dense bf16 peak (989 TFLOP/s)"
#: the real MSD tasks the estimate covers: (target, labelled cases, mean slices per case)
#: counts as shipped; mean slice counts from the tasks' dataset.json / NIfTI headers
REAL_TASKS = [("spleen", 41, 90), ("pancreas", 281, 93), ("lung_tumour", 63, 268)]


# ------------------------------------------------------------------ reading a run


def read_bench(path: Path) -> dict:
    """One Snakemake benchmark file -> {"s": wall seconds, "max_rss_mb": MB, "cpu_s": ...}
    (the last row when the job was benchmarked several times)."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no benchmark row")
    r = rows[-1]

    def num(key):
        v = r.get(key, "NA")
        return float(v) if v not in ("NA", "", "-") else None

    return {"s": num("s"), "max_rss_mb": num("max_rss"), "cpu_s": num("cpu_time")}


def read_peak(log: Path) -> float | None:
    """The exact peak RSS (MB) a sam2-3dmed command reports on its last ``ok`` line (kernel
    high-water mark, children included); None when the log has none."""
    if not log.is_file():
        return None
    found = re.findall(r"^ok .*\(\d+ s, peak RSS (\d+) MB\)\s*$", log.read_text(errors="replace"), flags=re.M)
    return float(found[-1]) if found else None


def fit_exponent(sizes, costs) -> float | None:
    """k of cost ~ size^k (least squares in log-log); None with fewer than 3 distinct sizes."""
    pts = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs) if s and c and s > 0 and c > 0]
    if len({round(x, 6) for x, _ in pts}) < 3:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def declared_mem(config: str, cores: int) -> dict:
    """{rule: mem_mb} from a dry run of every job of the config (the requests SLURM gets)."""
    proc = subprocess.run(["snakemake", "-n", "--forceall", "--cores", str(cores), "--configfile", config],
                          cwd=REPO, capture_output=True, text=True)
    return parse_declared(proc.stdout)


def parse_declared(text: str) -> dict:
    out, rule = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            mm = re.search(r"\bmem_mb=(\d+)", line)
            if mm:
                out.setdefault(rule, int(mm.group(1)))
    return out


def _nifti_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(int(n) for n in nib.load(str(path)).shape[:3])


def raw_cases(raw_root: Path, task: str) -> dict[str, tuple]:
    """{case_id: shape} of a raw task's labelled images."""
    ds = json.loads((raw_root / task / "dataset.json").read_text())
    out = {}
    for item in ds["training"]:
        p = raw_root / task / item["image"]
        out[p.name.split(".nii")[0]] = _nifti_shape(p)
    return out


def prepared_cases(prepared: Path) -> dict[str, tuple]:
    """{case_id: (z, y, x)} of a prepared target (shapes read from the .npy headers)."""
    return {d.name: tuple(np.load(d / "image.npy", mmap_mode="r").shape)
            for d in sorted((prepared / "cases").iterdir()) if d.is_dir()}


def mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20 if path.is_dir() else 0.0


def collect(cfg: dict, results: Path) -> list[dict]:
    """One row per benchmarked job: rule, name, size (voxels), wall s, max RSS, and artifacts."""
    raw, prep_root = Path(cfg["data"]["root"]), Path(cfg["data"]["prepared"])
    logs = results / "logs"
    targets = cfg["run"]["targets"]
    task_of = {t: cfg["targets"][t]["task"] for t in targets}
    raw_shapes = {task: raw_cases(raw, task) for task in sorted(set(task_of.values())) if (raw / task).is_dir()}
    prep_shapes = {t: prepared_cases(prep_root / t) for t in targets if (prep_root / t / "cases").is_dir()}
    vox = lambda shp: int(np.prod(shp))  # noqa: E731
    rows = []
    for rule in RULE_ORDER:
        for bench in sorted((logs / rule).glob("*.bench.tsv")) if (logs / rule).is_dir() else []:
            name = bench.name[: -len(".bench.tsv")]
            b = read_bench(bench)
            # Snakemake samples the job's memory (every second, then every 30 s after 30 s):
            # its max_rss can miss a short peak; the command's own high-water mark cannot
            exact = read_peak(logs / rule / f"{name}.log")
            b["sampled_rss_mb"] = b["max_rss_mb"]
            if exact is not None:
                b["max_rss_mb"] = max(exact, b["max_rss_mb"] or 0.0)
            row = {"rule": rule, "job": name, **b, "voxels": None, "detail": "", "artifact": ""}
            if rule in ("synth", "fetch_msd") and name in raw_shapes:
                shapes = raw_shapes[name]
                row["voxels"] = sum(vox(s) for s in shapes.values())
                longest = max(shapes.items(), key=lambda kv: vox(kv[1]))
                row["detail"] = f"{len(shapes)} cases, longest {longest[0]} {'x'.join(map(str, longest[1]))}"
                row["artifact"] = f"raw {mb(raw / name):,.0f} MB"
            elif rule == "prepare" and name in prep_shapes:
                shapes = raw_shapes.get(task_of[name], {})
                row["voxels"] = sum(vox(s) for s in shapes.values())
                pshapes = prep_shapes[name]
                longest = max(pshapes.items(), key=lambda kv: vox(kv[1]))
                row["detail"] = (f"{len(shapes)} cases; largest prepared {longest[0]} "
                                 f"{'x'.join(map(str, longest[1]))} (z, y, x)")
                row["artifact"] = f"prepared {mb(prep_root / name):,.0f} MB"
            elif rule in ("train", "evaluate"):
                m = re.match(r"(.+)_(\w+?)_fold(\d+)$", name)
                target = next((t for t in targets if name.startswith(t + "_")), None)
                if not (m and target):
                    continue
                variant = name[len(target) + 1:].rsplit("_fold", 1)[0]
                run = results / "runs" / target / variant / f"fold{m.group(3)}"
                if rule == "train":
                    summ = json.loads((run / "train_summary.json").read_text()) if (run / "train_summary.json").is_file() else {}
                    val_log = run / "val_log.csv"
                    val_ids = []
                    if val_log.is_file():
                        with val_log.open() as fh:
                            val_ids = [c for c in (csv.DictReader(fh).fieldnames or []) if c not in ("step", "mean_dice")]
                    pshapes = prep_shapes.get(target, {})
                    row["voxels"] = sum(vox(pshapes[c]) for c in val_ids if c in pshapes) or None
                    step_s = summ.get("median_step_seconds")
                    row["detail"] = (f"{summ.get('steps', '?')} steps, median {step_s:.1f} s/step; validation on "
                                     f"{', '.join(f'{c} ({pshapes[c][0]} slices)' for c in val_ids if c in pshapes)}"
                                     if step_s is not None else "")
                    row["step_s"] = step_s
                    row["artifact"] = f"last.pt {mb(run / 'last.pt'):,.0f} MB, best.pt {mb(run / 'best.pt'):,.0f} MB"
                else:
                    ev = next((p for p in sorted((run / "eval").glob("*/metrics.csv"))), None) if (run / "eval").is_dir() else None
                    if ev is None:
                        continue
                    with ev.open() as fh:
                        recs = list(csv.DictReader(fh))
                    ids = sorted({r["case_id"] for r in recs})
                    pshapes = prep_shapes.get(target, {})
                    row["voxels"] = sum(vox(pshapes[c]) for c in ids if c in pshapes) or None
                    per_mode = ", ".join(f"{r['mode']} {float(r['seconds']):.0f} s ({float(r['slices_per_s']):.2f} slices/s)"
                                         for r in recs)
                    row["detail"] = f"{', '.join(f'{c} ({pshapes[c][0]} slices)' for c in ids if c in pshapes)}: {per_mode}"
                    cache = max((float(r.get("feature_cache_mb") or 0) for r in recs), default=0.0)
                    row["artifact"] = f"feature cache {cache:,.0f} MB; predictions {mb(ev.parent / 'predictions'):,.0f} MB"
            elif rule == "report":
                row["artifact"] = f"reports {mb(results / 'reports'):,.0f} MB"
            rows.append(row)
    return rows


# ------------------------------------------------------------------ predict, FLOPs


def predict_longest(cfg: dict, results: Path, device: str = "cpu") -> dict:
    """Time `sam2-3dmed predict` on the data's longest raw case with a trained model of its target."""
    raw = Path(cfg["data"]["root"])
    best = None
    for t in cfg["run"]["targets"]:
        task = cfg["targets"][t]["task"]
        for cid, shp in raw_cases(raw, task).items():
            if best is None or int(np.prod(shp)) > best[3]:
                best = (t, task, cid, int(np.prod(shp)), shp)
    target, task, cid, voxels, shape = best
    runs = sorted((results / "runs" / target).glob("*/fold*/best.pt"))
    if not runs:
        raise SystemExit(f"no trained model of {target} under {results / 'runs'}: run the rehearsal first (--run)")
    out = results / "predict_longest" / f"{cid}.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["sam2-3dmed", "predict", str(runs[0]), str(raw / task / "imagesTr" / f"{cid}.nii.gz"), str(out),
           "--device", device, "--overwrite"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, SAM2_3DMED_NO_PROGRESS="1"))
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rec = {"target": target, "case": cid, "shape": list(shape), "voxels": voxels, "seconds": seconds,
           "slices": int(max(shape)), "max_rss_mb": max(rss, before) / 1024, "model": str(runs[0]),
           "machine": machine(device), "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "output_mb": mb(out)}
    (results / "predict_longest.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def count_flops(cfg: dict, target: str, results: Path) -> dict:
    """FLOPs of one real training step (clip of D at the config's size) and of inference per slice."""
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench_cost import CUSTOM
    from sam2_3dmed.infer.inference import InferenceSettings, predict_prepared
    from sam2_3dmed.train.trainer import Trainer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, target, "full", 0, Path(tmp) / "run", prepared=Path(cfg["data"]["prepared"]) / target,
                     device="cpu")
        tr.model = tr.build_network()
        tr.optimizer, tr.scheduler = tr.configure_optimizer()
        tr.trainable = [p for p in tr.model.parameters() if p.requires_grad]
        batches = iter(tr.make_loader())
        with FlopCounterMode(display=False, custom_mapping=CUSTOM) as fc:
            row = tr.train_step(batches)
        step = fc.get_total_flops()
        tr.model.eval().requires_grad_(False)  # else the counter's module tracker hooks autograd at inference
        n = 16  # slices: a full memory bank after 7, so the later slices cost what a long volume's do
        size = cfg["model"]["image_size"]
        vol = np.random.default_rng(0).random((n, size, size), dtype=np.float32)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM) as fc2:
            predict_prepared(tr.model, vol, settings=InferenceSettings.from_config(tr.cfg, target), device="cpu")
        per_slice = fc2.get_total_flops() / n
    return {"train_step_flops": step, "train_step_seconds_cpu": row["seconds"], "infer_flops_per_slice": per_slice,
            "clip_length": cfg["train"]["clip_length"], "image_size": size, "backbone": cfg["model"]["backbone"]}


def real_run_estimate(fl: dict, real_cfg: dict) -> dict:
    """Lower bound (FLOPs / GPU peak) for config/config.yaml's full run on one GPU."""
    t = real_cfg["train"]
    folds = real_cfg["splits"]["folds"]
    n_val_rounds = t["steps"] // t["val_every"]
    train = fl["train_step_flops"] * t["steps"] * folds * len(REAL_TASKS)
    val = evaluate = 0.0
    for _, cases, mean_slices in REAL_TASKS:
        val += fl["infer_flops_per_slice"] * mean_slices * min(t["val_max_cases"] or cases, cases) * n_val_rounds * folds
        non_test = cases - round(cases * real_cfg["splits"]["test_fraction"])
        evaluate += fl["infer_flops_per_slice"] * mean_slices * non_test * len(real_cfg["evaluate"]["modes"])
    total = train + val + evaluate
    return {"train": train, "validation": val, "evaluation": evaluate, "total": total,
            "hours_at_peak": total / GPU_PEAK_FLOPS / 3600, "steps": t["steps"], "folds": folds,
            "val_rounds": n_val_rounds, "val_max_cases": t["val_max_cases"]}


# ------------------------------------------------------------------ the section


def _f(v, nd=0):
    return "-" if v is None else f"{v:,.{nd}f}"


def section(rows, declared, pred, flops, est, cfg_path, took) -> str:
    by_rule = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r)
    out = ["## Scale: the real configuration at MSD size (`config/rehearsal.yaml`)", "",
           f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()} by `python benchmarks/bench_scale.py`"
           f" from the Snakemake benchmark files of a real run of `{cfg_path}` (`snakemake --cores 2 --configfile "
           f"{cfg_path}`): Hiera-small, 512 px, clips of 12, the real targets, splits and resampling, random init "
           "with the encoder frozen; MSD-size synthetic volumes (512 x 512, each task's real slice range, the "
           "longest case of each task included); budgets cut to 3 training steps, validation and evaluation on "
           "one case. Wall seconds: Snakemake's `benchmark:` of the job. Max RSS: the larger of the command's own "
           "peak (the kernel's high-water mark, children included, on its `ok` line) and Snakemake's sampled "
           "maximum of the job's process tree. "
           "*declared*: the rule's `mem_mb` (what SLURM is asked for). synth and prepare run one thread each and "
           "Snakemake ran two of them at a time on the 2 cores (and the synth jobs beside other work on this "
           "machine), so their wall times include that sharing; train and evaluate ran one at a time. The "
           "metrics of this run mean nothing (3 steps from random init).", "",
           "| rule | job | voxels | wall s | max RSS MB | declared MB | RSS / declared | what | artifacts |",
           "|---|---|---|---|---|---|---|---|---|"]
    for rule in RULE_ORDER:
        for r in by_rule.get(rule, []):
            dec = declared.get(rule)
            frac = f"{r['max_rss_mb'] / dec:.0%}" if dec and r["max_rss_mb"] else "-"
            if dec and r["max_rss_mb"] and r["max_rss_mb"] > dec:
                frac = f"**{frac} (over)**"
            vx = f"{r['voxels'] / 1e6:,.0f} M" if r["voxels"] else "-"
            out.append(f"| {rule} | {r['job']} | {vx} | {_f(r['s'])} | {_f(r['max_rss_mb'])} | {_f(dec)} | {frac} | "
                       f"{r['detail']} | {r['artifact']} |")
    out += ["", "Growth with voxels (least-squares exponent k of cost ~ voxels^k over the rule's jobs; <= 1 is at "
            "most linear; memory includes the process's fixed start-up, which pulls k down). Per-voxel cost of "
            "the largest job / the smallest: 1.0 linear.", "",
            "| rule | jobs | voxels (smallest .. largest) | k (wall) | k (RSS) | per-voxel wall, largest / smallest | "
            "per-voxel RSS, largest / smallest |", "|---|---|---|---|---|---|---|"]
    for rule in RULE_ORDER:
        rs = [r for r in by_rule.get(rule, []) if r["voxels"]]
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r["voxels"])
        kt = fit_exponent([r["voxels"] for r in rs], [r["s"] for r in rs])
        km = fit_exponent([r["voxels"] for r in rs], [r["max_rss_mb"] for r in rs])
        lo, hi = rs[0], rs[-1]
        pt = (hi["s"] / hi["voxels"]) / (lo["s"] / lo["voxels"])
        pm = (hi["max_rss_mb"] / hi["voxels"]) / (lo["max_rss_mb"] / lo["voxels"])
        out.append(f"| {rule} | {len(rs)} | {lo['voxels'] / 1e6:,.0f} M .. {hi['voxels'] / 1e6:,.0f} M | "
                   f"{_f(kt, 2)} | {_f(km, 2)} | {pt:.2f} | {pm:.2f} |")
    if pred:
        out += ["", f"**The longest case through `predict`**: {pred['case']} ({'x'.join(map(str, pred['shape']))}, "
                f"{pred['voxels'] / 1e6:,.0f} M voxels) with the rehearsal's {pred['target']} model: "
                f"{pred['seconds']:,.0f} s wall ({pred['seconds'] / pred['slices']:.2f} s per slice), peak RSS "
                f"{pred['max_rss_mb']:,.0f} MB, on {pred['machine']} ({pred['date']})."]
    if flops and est:
        gf = lambda x: f"{x / 1e12:,.1f} TFLOPs"  # noqa: E731
        out += ["", "### Estimate: the full real run on one GPU (a lower bound, not a measurement)", "",
                f"FLOPs counted by `torch.utils.flop_counter` on this machine: one real training step "
                f"(`Trainer.train_step`, one clip of {flops['clip_length']} slices at {flops['image_size']} px, "
                f"Hiera-{flops['backbone']}, encoder frozen, forward + backward) = {gf(flops['train_step_flops'])} "
                f"({flops['train_step_seconds_cpu']:.0f} s here on the CPU); whole-volume inference (auto mode, "
                f"both directions) = {flops['infer_flops_per_slice'] / 1e9:,.0f} GFLOPs per slice. "
                f"`config/config.yaml`: 3 targets x {est['folds']} folds x {est['steps']:,} steps; "
                f"{est['val_rounds']} validations per run on {est['val_max_cases']} cases; evaluation of every "
                "non-test case in 2 modes; MSD cases and mean slices per case (approximate): "
                + ", ".join(f"{t} {n} cases x {s}" for t, n, s in REAL_TASKS) + ".", "",
                "| part | FLOPs | hours at peak |", "|---|---|---|"]
        for part in ("train", "validation", "evaluation", "total"):
            out.append(f"| {part} | {est[part] / 1e15:,.0f} PFLOPs | {est[part] / GPU_PEAK_FLOPS / 3600:,.1f} |")
        step_s = [r.get("step_s") for r in rows if r["rule"] == "train" and r.get("step_s")]
        cpu = (f" For scale, on this machine's CPU a training step took {np.median(step_s):.0f} s (median over "
               f"the rehearsal's runs): {est['steps']:,} steps would be {np.median(step_s) * est['steps'] / 86400:,.0f} "
               "days per run, which is why `config/config.yaml` pins `run.device: cuda`.") if step_s else ""
        out += ["", f"At {GPU_NAME}: at least **{est['hours_at_peak']:,.1f} GPU-hours** for the whole run "
                f"({est['hours_at_peak'] / 0.3:,.1f} h at 30 % of peak). A lower bound: uncounted elementwise "
                "work, data loading, validation between steps and real utilisation (well below peak for batch-1 "
                "clips of this mix of attention and convolutions) make a real run longer, likely by several "
                "times." + cpu]
    out += ["", f"Script run time: {took:,.0f} s."]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/rehearsal.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--run", action="store_true", help="run the rehearsal workflow first")
    ap.add_argument("--predict-longest", action="store_true", help="time predict on the longest case")
    ap.add_argument("--flops", action="store_true", help="count FLOPs and estimate the real run")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.chdir(REPO)
    t0 = time.perf_counter()
    from sam2_3dmed.config import load_config, results_root

    cfg = load_config(args.config)
    results = results_root(cfg)
    if args.run:
        cmd = ["snakemake", "--cores", str(args.cores), "--configfile", args.config]
        print("running:", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc != 0:
            print(f"the rehearsal failed (exit {rc}); see {results / 'logs'}", file=sys.stderr)
            return rc
    rows = collect(cfg, results)
    if not rows:
        print(f"no benchmark files under {results / 'logs'}: run the rehearsal first (--run)", file=sys.stderr)
        return 1
    declared = declared_mem(args.config, args.cores)
    pred_path = results / "predict_longest.json"
    pred = predict_longest(cfg, results, args.device) if args.predict_longest else (
        json.loads(pred_path.read_text()) if pred_path.is_file() else None)
    flops_path = results / "flops.json"
    flops = est = None
    if args.flops:
        flops = count_flops(cfg, cfg["run"]["targets"][0], results)
        flops_path.write_text(json.dumps(flops, indent=1) + "\n")
    elif flops_path.is_file():
        flops = json.loads(flops_path.read_text())
    if flops:
        est = real_run_estimate(flops, load_config(REPO / "config" / "config.yaml"))
    for r in rows:
        print(f"{r['rule']:9s} {r['job']:28s} {(r['voxels'] or 0) / 1e6:8.0f} Mvox {r['s'] or 0:8.0f} s "
              f"{r['max_rss_mb'] or 0:8.0f} MB (declared {declared.get(r['rule'], '-')}) {r['detail']}")
    for rule in RULE_ORDER:
        if rule == "train":  # its cost is steps x clip, not the validation case's voxels (table only)
            continue
        rs = sorted((r for r in rows if r["rule"] == rule and r["voxels"]), key=lambda r: r["voxels"])
        if len(rs) >= 2 and rs[-1]["voxels"] > rs[0]["voxels"]:
            lo, hi = rs[0], rs[-1]
            emit(f"{rule}: wall s per voxel, largest job ({hi['job']}, {hi['voxels'] / 1e6:,.0f} M voxels)",
                 hi["s"] / hi["voxels"] * 1e6, lo["s"] / lo["voxels"] * 1e6,
                 f"smallest job ({lo['job']}, {lo['voxels'] / 1e6:,.0f} M voxels)", "s/Mvoxel",
                 note="1.0 = linear in voxels")
    over = [r for r in rows if declared.get(r["rule"]) and r["max_rss_mb"] and r["max_rss_mb"] > declared[r["rule"]]]
    for r in over:
        print(f"OVER DECLARED MEMORY: {r['rule']} {r['job']}: {r['max_rss_mb']:.0f} MB > {declared[r['rule']]} MB")
    write_section("scale", section(rows, declared, pred, flops, est, args.config, time.perf_counter() - t0))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
