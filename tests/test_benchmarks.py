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
