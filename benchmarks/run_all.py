"""Run the benchmark suite and write ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/run_all.py                 # every benchmark (long: the quality benchmark trains 36 models)
    python benchmarks/run_all.py --skip quality  # everything but the quality benchmark
    python benchmarks/run_all.py --only metrics prepare
    python benchmarks/run_all.py --list          # the jobs and their arguments
    python benchmarks/run_all.py --render-only   # rewrite RESULTS.md from results.json
    python benchmarks/run_all.py --from-gpu-check gpu-check/   # store a GPU check's figures, rewrite RESULTS.md

Each job runs one ``bench_*.py`` script in its own process (output streamed, and kept in
``benchmarks/logs/<job>.log``). Every claim a script measures arrives as a ``BENCH {...}``
line (``_common.emit``): our figure, the baseline's figure measured in the same run, the
ratio, the machine. They are stored per job in ``benchmarks/results.json`` with the date,
the git commit and the run time; jobs not run this time keep their last entry, so the
table always says when and where each figure was measured. Scripts may also leave a
Markdown section (``benchmarks/sections/<name>.md``: the quality and cost tables), which
goes below the table, followed by the test counts of the reliability suites (fault,
bad-input and security tests, counted with ``pytest --collect-only``).

``--from-gpu-check DIR`` runs nothing: it reads ``DIR/gpu_check.json`` (written on a GPU
node by ``scripts/gpu-check.sh``, driver ``benchmarks/gpu_check.py``) and stores its figures
as the jobs ``gpu_tests``, ``gpu_train``, ``gpu_predict`` and ``gpu_infer`` (rows below the
CPU jobs, the card in the machine column; figures without a same-run baseline show "-"
there). A dry run's JSON (CPU) is refused unless ``--allow-dry-run`` (tests only).

Exit status: non-zero when a job failed (its entry records the failure; RESULTS.md is
still written, saying so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
LOGS = HERE / "logs"
SECTIONS = HERE / "sections"

# job name -> (script, arguments): the settings behind the figures in RESULTS.md
JOBS: dict[str, tuple[str, list[str]]] = {
    "prepare": ("bench_prepare.py", []),
    "loader": ("bench_loader.py", ["--image-sizes", "128", "256", "--workers", "0", "2"]),
    "metrics": ("bench_metrics.py", []),
    "train": ("bench_train.py", ["--sizes", "128", "256"]),
    "infer_128": ("bench_infer.py", ["--size", "128", "--slices", "64"]),
    "infer_512": ("bench_infer.py", ["--size", "512", "--slices", "12", "--settings", "full"]),
    "cost": ("bench_cost.py", []),
    "predict_folder": ("bench_predict_folder.py", ["--cases", "5", "--rounds", "2"]),
    "quality": ("bench_quality.py", ["--seeds", "0", "1"]),  # 2 seeds: ~70 min on 2 CPU cores
    # the rehearsal workflow (config/rehearsal.yaml, ~1 h on 2 CPU cores), predict on the longest case, FLOPs
    "scale": ("bench_scale.py", ["--run", "--predict-longest", "--flops"]),
}
#: jobs filled from a GPU check's gpu_check.json (--from-gpu-check), never run by this script;
#: rendered after JOBS, and only when results.json has them
GPU_JOBS = ("gpu_tests", "gpu_train", "gpu_predict", "gpu_infer")
# (title, test file) of the reliability suites counted in RESULTS.md
SUITES = [
    ("bad-input sweep (malformed inputs x every command)", "tests/test_bad_inputs.py"),
    ("fault tests (SIGKILL, interrupted download, full disk, SIGINT)", "tests/test_faults.py"),
    ("security tests (tar members, pickles, shell metacharacters)", "tests/test_security.py"),
]


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_job(name: str, script: str, args: list[str]) -> dict:
    LOGS.mkdir(exist_ok=True)
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    results, t0 = [], time.perf_counter()
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    with (LOGS / f"{name}.log").open("w") as log, subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            if line.startswith("BENCH "):
                results.append(json.loads(line[6:]))
            else:
                print(f"   {line}", end="", flush=True)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    status = "ok" if rc == 0 and results else ("failed" if rc else "no result lines")
    print(f"== {name}: {status} in {seconds:.0f} s, {len(results)} result(s)", flush=True)
    return {"script": script, "args": args, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "commit": git_commit(), "seconds": round(seconds, 1), "returncode": rc, "status": status,
            "results": results}


def count_tests(path: str) -> int | None:
    if not (REPO / path).is_file():
        return None
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", path],
                          cwd=REPO, capture_output=True, text=True)
    m = re.search(r"(\d+) tests? collected", proc.stdout)
    return int(m.group(1)) if m else None


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


class GpuCheckError(ValueError):
    pass


def _row(what: str, ours: float | None, unit: str, machine: str, note: str = "", better: str = "lower") -> dict:
    """A figure without a same-run baseline (rendered with "-" in the baseline and ratio columns)."""
    return {"what": what, "ours": None if ours is None else float(ours), "baseline": None, "baseline_name": "", "ratio": None, "unit": unit,
            "better": better, "machine": machine, "note": note}


def gpu_entries(folder: Path, allow_dry_run: bool = False) -> dict:
    """results.json entries (GPU_JOBS) from a GPU check's ``gpu_check.json`` (a folder or the file)."""
    path = Path(folder)
    path = path / "gpu_check.json" if path.is_dir() else path
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GpuCheckError(f"{path}: cannot read a GPU check's results ({exc})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("steps"), dict):
        raise GpuCheckError(f"{path}: not a gpu_check.json (no 'steps')")
    dry = bool(rec.get("dry_run")) or rec.get("device") != "cuda" or not rec.get("gpu")
    if dry and not allow_dry_run:
        raise GpuCheckError(f"a dry run measures nothing: {path} was written by `scripts/gpu-check.sh --dry-run` "
                            f"on {rec.get('machine') or 'a CPU'}; run the check on a GPU node "
                            "(benchmarks/README.md, 'GPU check'), or pass --allow-dry-run (tests only)")
    mach = rec.get("machine") or "unknown"
    tag = "[DRY RUN, CPU: measures nothing] " if dry else ""
    st = rec.get("settings", {})
    steps = rec["steps"]
    entries = {}

    def entry(job: str, step: str, rows: list) -> None:
        s = steps.get(step)
        if s is None:
            return
        status = "ok" if s.get("status") in ("ok", "none") else str(s.get("status"))
        if status != "ok" and s.get("error"):
            rows = rows + [_row(f"{tag}{step}: **{status}**: {str(s['error']).splitlines()[0][:200]}", None, "", mach)]
        entries[job] = {"script": "gpu_check.py", "args": [step] + (["--dry-run"] if dry else []),
                        "date": s.get("started") or rec.get("started"), "commit": rec.get("commit", "unknown"),
                        "seconds": float(s.get("seconds") or 0.0), "returncode": 0 if status == "ok" else 1,
                        "status": status, "results": [r for r in rows if r is not None]}

    def get(d, *keys):
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    t = steps.get("cuda_tests", {})
    if t:
        files = ", ".join(t.get("files") or []) or "no file"
        what = (f"{tag}`pytest -m cuda` ({files}): {t.get('passed', 0)} passed, {t.get('skipped', 0)} skipped, "
                f"{t.get('failed', 0)} failed, {t.get('errors', 0)} errors")
        entry("gpu_tests", "cuda_tests", [_row(what, t.get("passed", 0), "tests passed", mach, better="higher")])

    tr = steps.get("train", {})
    if tr:
        desc = (f"Hiera-{st.get('backbone')} {st.get('image_size')} px, D={st.get('clip_length')}, encoder frozen, "
                f"{'float32 (CPU: no autocast)' if dry else 'bf16 autocast'}, random init (no SAM2 weights on "
                f"the node), {st.get('steps')} steps")
        det = tr.get("deterministic")
        rows = []
        a = tr.get("run_a") or {}
        if a.get("s_per_step") is not None:
            rows.append(_row(f"{tag}training step, {desc}", a["s_per_step"], "s/step", mach,
                             f"median of train_log.csv steps 2-{st.get('steps')}, train.deterministic "
                             f"{str(det).lower()}" + (" (deterministic mode was refused: see the JSON)"
                                                      if tr.get("deterministic_error") else "")))
        if a.get("peak_memory_mb") is not None:
            rows.append(_row(f"{tag}training peak memory, {desc}", a["peak_memory_mb"], "MB", mach,
                             "torch.cuda.max_memory_allocated" if not dry else "peak RSS"))
        r = tr.get("resume")
        if r:
            verdict = ("bitwise equal" if r["bitwise_equal"] else "not bitwise equal") + \
                f"; {'PASS' if r['pass'] else 'FAIL'} at {r['tolerance']}"
            rows.append(_row(f"{tag}resume: stopped after step {tr.get('run_b_stopped_at')}, resumed to "
                             f"{st.get('steps')}, vs uninterrupted (trainable tensors of last.pt)",
                             r["max_abs_diff"], "max abs diff", mach, verdict))
        entry("gpu_train", "train", rows)

    pr = steps.get("predict", {})
    if pr:
        n = pr.get("slices")
        shape = "x".join(str(v) for v in (get(pr, "api", "shape") or [n, "?", "?"]))
        rows = []
        cli = pr.get("cli") or {}
        if cli.get("rc") == 0:
            rows.append(_row(f"{tag}`sam2-3dmed predict`, one {n}-slice CT ({'x'.join(map(str, pr.get('input_shape') or []))} "
                             "voxels), whole command (start-up, model load, read, predict, write)",
                             cli["s_per_volume"], "s/volume", mach, f"{cli['s_per_slice']:.3g} s/slice"))
        api = pr.get("api") or {}
        if api:
            rows.append(_row(f"{tag}whole-volume inference in-process (predict_by_propagation, auto mode), {shape}",
                             api["s_per_volume"], "s/volume", mach,
                             f"{api['s_per_slice']:.3g} s/slice; feature cache {api['feature_cache_mb']:.0f} MB "
                             f"({api['feature_cache_mb_per_slice']:.2f} MB/slice, {api.get('feature_dtype')})"))
            rows.append(_row(f"{tag}whole-volume inference peak memory, {shape}", api["peak_memory_mb"], "MB", mach,
                             api.get("peak_memory_kind", "")))
        entry("gpu_predict", "predict", rows)

    bi = steps.get("bench_infer", {})
    if bi:
        # float32 on both sides, then (time allowing) both under bf16 autocast
        rows = [dict(r, what=tag + r["what"]) for r in [*(bi.get("results") or []),
                                                        *((bi.get("amp") or {}).get("results") or [])]]
        entry("gpu_infer", "bench_infer", rows)
    return entries


def render(entries: dict) -> str:
    out = ["# Benchmark results", "",
           "Written by `python benchmarks/run_all.py` (`make bench`) from the committed `bench_*.py` scripts; "
           "do not edit by hand. Each row: our figure and the baseline's, measured in the same run, and the "
           "ratio (> 1: ours is better by that factor; < 1: ours costs more). These machines are shared and "
           "noisy: read ratios, not absolute times. Per-job logs: `benchmarks/logs/` (local, not committed). Caveats of the published run: `benchmarks/README.md`.", "",
           "| job | what | ours | baseline (same run) | ratio | machine |",
           "|---|---|---|---|---|---|"]
    for name in [*JOBS, *(g for g in GPU_JOBS if g in entries)]:
        e = entries.get(name)
        if e is None:
            out.append(f"| {name} | not run yet | | | | |")
            continue
        if e["status"] != "ok" and not e["results"]:
            out.append(f"| {name} | **{e['status']}** (exit {e['returncode']}, {e['date']}, see logs/{name}.log) | | | | |")
            continue
        for r in e["results"]:
            note = f" ({r['note']})" if r.get("note") else ""
            if r.get("baseline") is None:  # a GPU check's figure without a same-run baseline
                ours = "-" if r.get("ours") is None else f"{_fmt(r['ours'])} {r['unit']}"
                out.append(f"| {name} | {r['what']}{note} | {ours} | - | - | {r['machine']} |")
                continue
            out.append(f"| {name} | {r['what']}{note} | {_fmt(r['ours'])} {r['unit']} | {_fmt(r['baseline'])} "
                       f"{r['unit']}: {r['baseline_name']} | **{r['ratio']:.2f}x** | {r['machine']} |")
    out += ["", "Runs: " + "; ".join(
        f"{n} {e['date']} at {e['commit']} ({e['seconds']:.0f} s{'' if e['status'] == 'ok' else ', ' + e['status']})"
        for n, e in entries.items() if n in JOBS or n in GPU_JOBS) + ".", ""]
    for name in ("quality", "cost", "scale"):
        sec = SECTIONS / f"{name}.md"
        if sec.is_file():
            out += [sec.read_text().rstrip(), ""]
    for name in sorted(p.stem for p in SECTIONS.glob("*.md")) if SECTIONS.is_dir() else []:
        if name not in ("quality", "cost", "scale"):
            out += [(SECTIONS / f"{name}.md").read_text().rstrip(), ""]
    out += ["## Reliability suites", "",
            "Run in CI with every other test (`make test`); counted here with `pytest --collect-only`.", "",
            "| suite | test file | cases |", "|---|---|---|"]
    for title, path in SUITES:
        n = count_tests(path)
        out.append(f"| {title} | `{path}` | {n if n is not None else 'missing'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(JOBS), help="run only these jobs")
    ap.add_argument("--skip", nargs="+", choices=list(JOBS), default=[], help="do not run these jobs")
    ap.add_argument("--list", action="store_true", help="print the jobs and exit")
    ap.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results.json, run nothing")
    ap.add_argument("--from-gpu-check", metavar="DIR", type=Path, default=None,
                    help="store DIR/gpu_check.json's figures (scripts/gpu-check.sh) as the gpu_* jobs, run nothing")
    ap.add_argument("--allow-dry-run", action="store_true",
                    help="with --from-gpu-check: accept a dry run's (CPU) JSON (tests only: it measures nothing)")
    ap.add_argument("--results-json", type=Path, default=None, help="results file (default: benchmarks/results.json)")
    ap.add_argument("--results-md", type=Path, default=None, help="table to write (default: benchmarks/RESULTS.md)")
    args = ap.parse_args()
    if args.list:
        for name, (script, a) in JOBS.items():
            print(f"{name:10s} python benchmarks/{script} {' '.join(a)}")
        return 0
    results_json, results_md = args.results_json or RESULTS_JSON, args.results_md or RESULTS_MD
    entries = json.loads(results_json.read_text()) if results_json.is_file() else {}
    failed = []
    if args.from_gpu_check is not None:
        try:
            new = gpu_entries(args.from_gpu_check, allow_dry_run=args.allow_dry_run)
        except GpuCheckError as exc:
            print(f"run_all: error: {exc}", file=sys.stderr)
            return 2
        entries.update(new)
        for name, e in new.items():
            print(f"== {name}: {e['status']}, {len(e['results'])} row(s) from {args.from_gpu_check}")
        tmp = results_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        tmp.replace(results_json)
    elif not args.render_only:
        for name in args.only or list(JOBS):
            if name in args.skip:
                continue
            script, a = JOBS[name]
            entries[name] = run_job(name, script, a)
            if entries[name]["status"] != "ok":
                failed.append(name)
            tmp = results_json.with_suffix(".json.tmp")  # after every job: a later failure keeps earlier figures
            tmp.write_text(json.dumps(entries, indent=1) + "\n")
            tmp.replace(results_json)
    tmp = results_md.with_suffix(".md.tmp")
    tmp.write_text(render(entries))
    tmp.replace(results_md)
    shown = results_md.resolve().relative_to(REPO) if results_md.resolve().is_relative_to(REPO) else results_md
    print(f"wrote {shown}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
