"""Run the benchmark suite and write ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/run_all.py                 # every benchmark (long: the quality benchmark trains 36 models)
    python benchmarks/run_all.py --skip quality  # everything but the quality benchmark
    python benchmarks/run_all.py --only metrics prepare
    python benchmarks/run_all.py --list          # the jobs and their arguments
    python benchmarks/run_all.py --render-only   # rewrite RESULTS.md from results.json

Each job runs one ``bench_*.py`` script in its own process (output streamed, and kept in
``benchmarks/logs/<job>.log``). Every claim a script measures arrives as a ``BENCH {...}``
line (``_common.emit``): our figure, the baseline's figure measured in the same run, the
ratio, the machine. They are stored per job in ``benchmarks/results.json`` with the date,
the git commit and the run time; jobs not run this time keep their last entry, so the
table always says when and where each figure was measured. Scripts may also leave a
Markdown section (``benchmarks/sections/<name>.md``: the quality and cost tables), which
goes below the table, followed by the test counts of the reliability suites (fault,
bad-input and security tests, counted with ``pytest --collect-only``).

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


def render(entries: dict) -> str:
    out = ["# Benchmark results", "",
           "Written by `python benchmarks/run_all.py` (`make bench`) from the committed `bench_*.py` scripts; "
           "do not edit by hand. Each row: our figure and the baseline's, measured in the same run, and the "
           "ratio (> 1: ours is better by that factor; < 1: ours costs more). These machines are shared and "
           "noisy: read ratios, not absolute times. Per-job logs: `benchmarks/logs/` (local, not committed). Caveats of the published run: `benchmarks/README.md`.", "",
           "| job | what | ours | baseline (same run) | ratio | machine |",
           "|---|---|---|---|---|---|"]
    for name in JOBS:
        e = entries.get(name)
        if e is None:
            out.append(f"| {name} | not run yet | | | | |")
            continue
        if e["status"] != "ok" and not e["results"]:
            out.append(f"| {name} | **{e['status']}** (exit {e['returncode']}, {e['date']}, see logs/{name}.log) | | | | |")
            continue
        for r in e["results"]:
            note = f" ({r['note']})" if r.get("note") else ""
            out.append(f"| {name} | {r['what']}{note} | {_fmt(r['ours'])} {r['unit']} | {_fmt(r['baseline'])} "
                       f"{r['unit']}: {r['baseline_name']} | **{r['ratio']:.2f}x** | {r['machine']} |")
    out += ["", "Runs: " + "; ".join(
        f"{n} {e['date']} at {e['commit']} ({e['seconds']:.0f} s{'' if e['status'] == 'ok' else ', ' + e['status']})"
        for n, e in entries.items() if n in JOBS) + ".", ""]
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
    args = ap.parse_args()
    if args.list:
        for name, (script, a) in JOBS.items():
            print(f"{name:10s} python benchmarks/{script} {' '.join(a)}")
        return 0
    entries = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    failed = []
    if not args.render_only:
        for name in args.only or list(JOBS):
            if name in args.skip:
                continue
            script, a = JOBS[name]
            entries[name] = run_job(name, script, a)
            if entries[name]["status"] != "ok":
                failed.append(name)
            tmp = RESULTS_JSON.with_suffix(".json.tmp")  # after every job: a later failure keeps earlier figures
            tmp.write_text(json.dumps(entries, indent=1) + "\n")
            tmp.replace(RESULTS_JSON)
    tmp = RESULTS_MD.with_suffix(".md.tmp")
    tmp.write_text(render(entries))
    tmp.replace(RESULTS_MD)
    print(f"wrote {RESULTS_MD.relative_to(REPO)}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
