"""The benchmark suite's plumbing: every script is run by run_all.py, result lines parse,
RESULTS.md is rendered from them (the benchmarks themselves are too long for CI: `make bench`)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def run_all(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("run_all")
    monkeypatch.setattr(mod, "SECTIONS", tmp_path / "sections")
    monkeypatch.setattr(mod, "count_tests", lambda path: 7)  # pytest --collect-only: covered by `make bench`
    return mod


def test_every_script_is_a_job(run_all):
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts == {s for s, _ in run_all.JOBS.values()}


def test_every_script_documents_usage_and_emits():
    for p in BENCH.glob("bench_*.py"):
        text = p.read_text()
        assert "Usage:" in text.split('"""')[1], p.name
        assert "emit(" in text, f"{p.name} never reports a result line"


def test_emit_line_parses_and_ratio_follows_direction(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    common = importlib.import_module("_common")
    assert common.emit("x", 2.0, 4.0, "base", "s", better="lower", machine_desc="m") == 2.0
    assert common.emit("y", 3.0, 1.5, "base", "cases/min", better="higher", machine_desc="m") == 2.0
    with pytest.raises(ValueError):
        common.emit("z", 1.0, 1.0, "base", "s", better="faster")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("BENCH ")]
    recs = [json.loads(ln[6:]) for ln in lines]
    assert [r["what"] for r in recs] == ["x", "y"] and recs[0]["baseline_name"] == "base"


def test_render_table_sections_and_failures(run_all, tmp_path):
    (tmp_path / "sections").mkdir()
    (tmp_path / "sections" / "quality.md").write_text("## Quality\n\n| a | b |\n")
    rec = {"what": "prepare throughput", "ours": 232.7, "baseline": 55.8, "baseline_name": "MONAI chain",
           "ratio": 4.17, "unit": "cases/min", "better": "higher", "machine": "cpu X", "note": ""}
    entries = {
        "prepare": {"script": "bench_prepare.py", "args": [], "date": "2026-11-28T07:00:00", "commit": "abc",
                    "seconds": 12.0, "returncode": 0, "status": "ok", "results": [rec]},
        "metrics": {"script": "bench_metrics.py", "args": [], "date": "2026-11-28T07:01:00", "commit": "abc",
                    "seconds": 3.0, "returncode": 1, "status": "failed", "results": []},
    }
    md = run_all.render(entries)
    assert "| prepare | prepare throughput | 233 cases/min | 55.80 cases/min: MONAI chain | **4.17x** | cpu X |" in md
    assert "**failed** (exit 1" in md
    assert "| loader | not run yet |" in md
    assert "## Quality" in md and "## Reliability suites" in md
    assert "| `tests/test_bad_inputs.py` | 7 |" in md


def test_list_runs_without_error():
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--list"], capture_output=True, text=True,
                         check=True).stdout
    assert "bench_quality.py" in out and "bench_infer.py --size 512" in out


def test_count_tests_counts_what_pytest_collects(monkeypatch):
    """The real count (the rendering test above replaces it): a file whose tests are
    known by construction, and a missing file."""
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("run_all")
    path = "tests/test_layers.py"
    tree = ast.parse((BENCH.parent / path).read_text())
    n = sum(isinstance(node, ast.FunctionDef) and node.name.startswith("test_") for node in tree.body)
    assert n >= 4 and mod.count_tests(path) == n
    assert mod.count_tests("tests/no_such_file.py") is None


# ------------------------------------------------------------------ bench_scale's parsing


@pytest.fixture()
def scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("bench_scale")


def test_scale_reads_snakemake_benchmark_files(scale, tmp_path):
    f = tmp_path / "x.bench.tsv"
    f.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "12.3456\t0:00:12\t1536.25\t2000.1\t1400.0\t1450.0\t0.1\t20.5\t95.0\t11.8\n")
    assert scale.read_bench(f) == {"s": 12.3456, "max_rss_mb": 1536.25, "cpu_s": 11.8}
    f.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "0.5\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")  # a job too short to sample
    assert scale.read_bench(f) == {"s": 0.5, "max_rss_mb": None, "cpu_s": None}
    f.write_text("s\th:m:s\n")
    with pytest.raises(ValueError, match="no benchmark row"):
        scale.read_bench(f)


def test_scale_growth_exponent(scale):
    sizes = [1e6, 4e6, 16e6, 64e6]
    assert scale.fit_exponent(sizes, [2 * s for s in sizes]) == pytest.approx(1.0)
    assert scale.fit_exponent(sizes, [s ** 2 for s in sizes]) == pytest.approx(2.0)
    assert scale.fit_exponent(sizes, [100 + 1e-6 * s for s in sizes]) < 0.5  # a fixed part dominates
    assert scale.fit_exponent(sizes[:2], [1, 2]) is None  # fewer than 3 sizes: no fit
    assert scale.fit_exponent([5, 5, 5], [1, 2, 3]) is None


def test_scale_declared_memory_from_a_dry_run(scale):
    text = ("rule prepare:\n    input: x\n    resources: tmpdir=/tmp, mem_mb=12000, mem=12 GB, runtime=120\n\n"
            "localrule fetch_weights:\n    resources: tmpdir=/tmp, mem_mb=4000\n"
            "rule prepare:\n    resources: tmpdir=/tmp, mem_mb=99\n"
            "rule all:\n    resources: tmpdir=/tmp\n")
    assert scale.parse_declared(text) == {"prepare": 12000, "fetch_weights": 4000}


def test_scale_real_run_estimate_adds_up(scale):
    fl = {"train_step_flops": 1e15, "infer_flops_per_slice": 1e11}
    real = {"train": {"steps": 100, "val_every": 10, "val_max_cases": 5}, "splits": {"folds": 5, "test_fraction": 0.2},
            "evaluate": {"modes": ["auto", "prompted"]}}
    est = scale.real_run_estimate(fl, real)
    assert est["train"] == pytest.approx(1e15 * 100 * 5 * 3)
    assert est["total"] == pytest.approx(est["train"] + est["validation"] + est["evaluation"])
    assert est["hours_at_peak"] == pytest.approx(est["total"] / scale.GPU_PEAK_FLOPS / 3600)
    spleen_val = 1e11 * 90 * 5 * 10 * 5
    assert est["validation"] > spleen_val


def test_scale_reads_the_exact_peak_from_a_job_log(scale, tmp_path):
    log = tmp_path / "j.log"
    assert scale.read_peak(log) is None
    log.write_text("== 2026-12-02 on host\nINFO something (3 s, peak RSS 9 MB)\n"
                   "ok trained spleen/full/fold 0 -> out (120 s, peak RSS 10600 MB)\n"
                   "== 2026-12-02 resumed\nok trained spleen/full/fold 0 -> out (30 s, peak RSS 10712 MB)\n")
    assert scale.read_peak(log) == 10712.0  # the last attempt's
    log.write_text("ok wrote 2 pages -> r\n")
    assert scale.read_peak(log) is None
