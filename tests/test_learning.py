"""Learning test: the demo settings learn the synthetic spleen on a CPU.

Random init (no SAM2 weights offline, so the encoder is trained), 128 px, the full
variant, config/demo.yaml's training budget (250 steps): 3D Dice >= 0.8 on fold 0's
held-out validation cases. The budget is a step count, not a timer (timed assertions are
flaky on shared machines); the run takes about 8 minutes on a 2-core CPU and prints its
time.
"""

import csv
import time
from pathlib import Path

import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.synth import synth_task
from sam2_3dmed.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_variant_learns_synthetic_spleen(tmp_path):
    cfg = load_config(REPO / "config" / "demo.yaml")
    syn = cfg["data"]["synthetic"]
    task = synth_task("Task09_Spleen", tmp_path / "raw", cases=syn["cases"], test_cases=0,
                      seed=syn["seed"], size=syn["size"])
    prep = prepare_target(task, "spleen", tmp_path / "prep", cfg)
    t0 = time.perf_counter()
    out = train(cfg, "spleen", "full", 0, tmp_path / "run", prepared=prep, device="cpu")
    minutes = (time.perf_counter() - t0) / 60
    rows = list(csv.DictReader((out / "val_log.csv").open()))
    final = rows[-1]
    n_val = len(final) - 2
    dice = float(final["mean_dice"])
    print(f"\nfull variant, {final['step']} steps, {n_val} validation cases: 3D Dice {dice:.4f}, {minutes:.1f} min")
    assert int(final["step"]) == cfg["train"]["steps"] and n_val >= 2
    assert dice >= 0.8, rows
