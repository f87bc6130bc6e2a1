"""The GPU check (scripts/gpu-check.sh -> benchmarks/gpu_check.py): its CPU dry run end to end,
and benchmarks/run_all.py turning a check's JSON into RESULTS.md rows (a dry run's only with
--allow-dry-run). The real run needs a GPU node: benchmarks/README.md, "GPU check"."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture()
def run_all(monkeypatch, tmp_path):
    """run_all.py imported, pointed at copies of results.json and RESULTS.md in tmp_path."""
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("run_all")
    results, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    results.write_text((BENCH / "results.json").read_text())
    md.write_text((BENCH / "RESULTS.md").read_text())
    monkeypatch.setattr(mod, "RESULTS_JSON", results)
    monkeypatch.setattr(mod, "RESULTS_MD", md)
    monkeypatch.setattr(mod, "count_tests", lambda path: 7)  # pytest --collect-only: covered by `make bench`
    return mod


def _main(mod, monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["run_all.py", *map(str, args)])
    return mod.main()


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, run_all, monkeypatch):
    out = tmp_path / "gpu-check"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--dry-run", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert (out / "gpu-check.log").read_text().strip()
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["dry_run"] is True and rec["device"] == "cpu" and rec["ok"] is True
    steps = rec["steps"]
    assert set(steps) == {"cuda_tests", "train", "predict", "bench_infer"}
    for name, s in steps.items():
        assert s["status"] in ("ok", "none"), (name, s.get("error"))
        assert s["seconds"] > 0
    assert steps["cuda_tests"]["failed"] == 0 and steps["cuda_tests"]["errors"] == 0  # no CUDA: they skip

    tr = steps["train"]
    assert tr["run_a"]["last_step"] == tr["run_b"]["last_step"] == rec["settings"]["steps"]
    assert tr["run_b_stopped_at"] == rec["settings"]["stop_after"]
    assert tr["run_a"]["s_per_step"] > 0 and tr["run_a"]["peak_memory_mb"] > 0
    res = tr["resume"]
    assert res["bitwise_equal"] is True and res["max_abs_diff"] == 0.0 and res["pass"] is True
    assert res["tolerance"].startswith("bitwise") and res["weights_moved_after_stop"] > 0

    pr = steps["predict"]
    assert pr["output_matches_input"] and pr["output_shape"] == pr["input_shape"]
    assert len(pr["input_shape"]) == 3 and pr["input_shape"][2] == pr["slices"]
    assert pr["cli"]["s_per_volume"] > 0 and pr["api"]["s_per_slice"] > 0
    assert pr["api"]["feature_cache_mb"] > 0 and pr["api"]["steps"] >= pr["api"]["slices"]

    bi = steps["bench_infer"]
    assert bi["ratio"] > 0 and bi["results"]
    for setting, v in bi["settings"].items():
        assert v["ratio"] > 0 and v["dice"] >= 0.99, (setting, v)

    # its figures into RESULTS.md rows (copies in tmp_path; the repo's files are untouched)
    before = (BENCH / "results.json").read_bytes(), (BENCH / "RESULTS.md").read_bytes()
    assert _main(run_all, monkeypatch, "--from-gpu-check", out, "--allow-dry-run") == 0
    assert ((BENCH / "results.json").read_bytes(), (BENCH / "RESULTS.md").read_bytes()) == before
    stored = json.loads(run_all.RESULTS_JSON.read_text())
    assert {"gpu_tests", "gpu_train", "gpu_predict", "gpu_infer"} <= set(stored)
    md = run_all.RESULTS_MD.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| gpu_")]
    assert {ln.split(" | ")[0] for ln in rows} == {"| gpu_tests", "| gpu_train", "| gpu_predict", "| gpu_infer"}
    assert all("DRY RUN" in ln for ln in rows)
    assert all(rec["machine"] in ln for ln in rows if not ln.startswith("| gpu_infer"))
    assert any("bitwise equal" in ln for ln in rows) and any("SAM2VideoPredictor" in ln for ln in rows)


def _fake_check(folder: Path, dry: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gpu = None if dry else {"name": "NVIDIA H200", "capability": "9.0", "memory_gb": 139.8, "count": 1}
    mach = "cpu X, 2 cores" if dry else "NVIDIA H200 (GPU, compute capability 9.0), torch 2.11.0+cu130, CUDA 13.0"
    rec = {
        "dry_run": dry, "device": "cpu" if dry else "cuda", "gpu": gpu, "machine": mach, "commit": "abc1234",
        "started": "2026-12-03T10:00:00",
        "settings": {"backbone": "small", "image_size": 512, "clip_length": 12, "steps": 30, "stop_after": 15},
        "steps": {
            "cuda_tests": {"status": "ok", "started": "2026-12-03T10:00:00", "seconds": 20.0, "files": ["tests/t.py"],
                           "passed": 3, "skipped": 0, "failed": 0, "errors": 0},
            "train": {"status": "ok", "started": "2026-12-03T10:00:20", "seconds": 120.0, "deterministic": True,
                      "run_b_stopped_at": 15,
                      "run_a": {"s_per_step": 0.42, "peak_memory_mb": 20480.0},
                      "resume": {"max_abs_diff": 0.0, "bitwise_equal": True, "pass": True, "atol": 1e-6,
                                 "tolerance": "atol 1e-06 (CUDA; bitwise expected with train.deterministic true)"}},
            "predict": {"status": "error", "started": "2026-12-03T10:02:20", "seconds": 3.0, "slices": 300,
                        "error": "predict exited 1 (expected 0): boom"},
            "bench_infer": {"status": "ok", "started": "2026-12-03T10:02:23", "seconds": 90.0, "results": [
                {"what": "whole-volume inference (full passes), hiera-small 512 px, 64 slices", "ours": 2.0,
                 "baseline": 3.5, "baseline_name": "sam2 SAM2VideoPredictor (same weights, frames, box)",
                 "ratio": 1.75, "unit": "s/volume", "better": "lower",
                 "machine": "NVIDIA H200 (GPU), torch 2.11.0+cu130", "note": "outputs agree: Dice 1.0000"}],
                "amp": {"rc": 0, "ratio": 2.6, "results": [
                    {"what": "whole-volume inference (full passes, bf16 autocast, lockstep), hiera-small 512 px, "
                             "64 slices", "ours": 1.0, "baseline": 2.6,
                     "baseline_name": "sam2 SAM2VideoPredictor (same weights, frames, box)", "ratio": 2.6,
                     "unit": "s/volume", "better": "lower", "machine": "NVIDIA H200 (GPU), torch 2.11.0+cu130",
                     "note": "outputs agree: Dice 0.9990"}]}},
        },
    }
    (folder / "gpu_check.json").write_text(json.dumps(rec))
    return folder


def test_run_all_refuses_a_dry_run_without_the_flag(tmp_path):
    folder = _fake_check(tmp_path / "dry", dry=True)
    results, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--from-gpu-check", str(folder),
                           "--results-json", str(results), "--results-md", str(md)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "a dry run measures nothing" in proc.stderr and "--allow-dry-run" in proc.stderr
    assert not results.exists() and not md.exists()


def test_run_all_renders_a_gpu_check_naming_the_card(tmp_path, run_all, monkeypatch):
    folder = _fake_check(tmp_path / "gpu", dry=False)
    before = run_all.render(json.loads(run_all.RESULTS_JSON.read_text()))
    assert _main(run_all, monkeypatch, "--from-gpu-check", folder) == 0
    md = run_all.RESULTS_MD.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| gpu_")]
    assert all("NVIDIA H200" in ln.rsplit(" | ", 1)[1] for ln in rows)  # the machine column names the card
    assert any(ln.startswith("| gpu_train | training step") and "| 0.42 s/step | - | - |" in ln for ln in rows)
    assert any("bitwise equal; PASS" in ln for ln in rows)
    assert any(ln.startswith("| gpu_predict |") and "**error**" in ln for ln in rows)
    assert any(ln.startswith("| gpu_infer |") and "**1.75x**" in ln for ln in rows)
    assert any(ln.startswith("| gpu_infer |") and "bf16 autocast" in ln and "**2.60x**" in ln for ln in rows)
    # the other jobs' rows are rendered as before
    old = [ln for ln in before.splitlines() if ln.startswith("| ") and not ln.startswith("| gpu_")]
    new = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| gpu_")]
    assert new == old
