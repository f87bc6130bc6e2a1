"""What the new heads learned: the BD-fusion ratio and gate, the SRPP error in mm, as the
trainer logs them (train_log.csv) and as the report's section *What the new heads learned*
shows them. Expected values are computed here, independently of the code under test."""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config
from sam2_3dmed.model.boundary import BDFusion
from sam2_3dmed.model.losses import compute_losses, srpp_mae_mm
from sam2_3dmed.report import build_report

from _tiny import make_tiny_target, tiny_config
from test_report import FOLDS, build_tree

HEAD_COLUMNS = ("bd_gate", "bd_fusion_ratio", "srpp_mae_mm")


# ---------------------------------------------------------------- the fusion ratio
def _fusion_inputs(seed: int, n=2, c=32, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g) for _ in range(4)]  # pix, bd_query, slice_feat, pos


def test_fusion_ratio_is_the_relative_change_of_the_pixel_features():
    torch.manual_seed(0)
    fusion = BDFusion(32, heads=4).train()
    with torch.no_grad():
        fusion.gate.copy_(torch.linspace(-0.3, 0.5, 32))
    want = []
    for seed in (1, 2, 3):  # three calls (three propagated slices) in one step
        pix, q, kv, pos = _fusion_inputs(seed)
        fused = fusion(pix, q, kv, pos).detach().double().numpy()
        p = pix.double().numpy()
        want.append(np.linalg.norm(fused - p) / np.linalg.norm(p))  # Frobenius over the whole batch
    got = float(fusion.pop_fusion_ratio())
    assert got == pytest.approx(float(np.mean(want)), rel=1e-4)
    assert 0.01 < got < 10
    assert fusion.pop_fusion_ratio() is None  # popping resets
    # the same calls in eval mode (inference, validation) record nothing and give the same output
    pix, q, kv, pos = _fusion_inputs(1)
    train_out = fusion(pix, q, kv, pos)
    fusion.pop_fusion_ratio()
    fusion.eval()
    assert torch.equal(fusion(pix, q, kv, pos), train_out)  # measuring does not change the features
    assert fusion.pop_fusion_ratio() is None
    assert float(fusion.gate_magnitude()) == pytest.approx(float(np.abs(np.linspace(-0.3, 0.5, 32)).mean()), rel=1e-6)


def test_fusion_ratio_is_zero_with_the_initial_gate():
    fusion = BDFusion(32, heads=4).train()
    pix, q, kv, pos = _fusion_inputs(4)
    assert torch.equal(fusion(pix, q, kv, pos), pix)
    assert float(fusion.pop_fusion_ratio()) == 0.0
    assert float(fusion.gate_magnitude()) == 0.0


def test_fusion_ratio_accumulates_on_the_device_without_a_graph():
    fusion = BDFusion(32, heads=4).train()
    with torch.no_grad():
        fusion.gate.fill_(0.2)
    pix, q, kv, pos = _fusion_inputs(5)
    fusion(pix.requires_grad_(), q, kv, pos).sum().backward()
    assert torch.is_tensor(fusion._ratio_sum) and not fusion._ratio_sum.requires_grad
    assert fusion._ratio_sum.dim() == 0 and fusion._ratio_calls == 1


# ---------------------------------------------------------------- the SRPP error in mm
def _srpp_case():
    """Two clips: clip 0 from a volume with 3 mm slices (indices 10..13), clip 1 reversed from a
    volume with 2 mm slices, its last slice padding (not valid)."""
    idx = torch.tensor([[10, 11, 12, 13], [7, 6, 5, 5]])
    spacing = torch.tensor([3.0, 2.0])
    z = idx.float() * spacing[:, None]
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    pred = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    return idx, z, valid, pred, spacing


def _hand_mae(pred, idx, z, valid, spacing, mode, scale):
    errs = []
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            for j in range(pred.shape[2]):
                if i == j or not (valid[b, i] and valid[b, j]):
                    continue
                p = float(pred[b, i, j])
                if mode == "mm":
                    errs.append(abs(p - (float(z[b, j]) - float(z[b, i])) / scale) * scale)
                else:
                    errs.append(abs(p - (int(idx[b, j]) - int(idx[b, i]))) * float(spacing[b]))
    return statistics.fmean(errs), len(errs)


@pytest.mark.parametrize("mode,scale", [("mm", 10.0), ("mm", 4.0), ("index", 10.0)])
def test_srpp_mae_mm_by_hand(mode, scale):
    from sam2_3dmed.model.srpp import srpp_targets

    idx, z, valid, pred, spacing = _srpp_case()
    want, n_pairs = _hand_mae(pred, idx, z, valid, spacing, mode, scale)
    assert n_pairs == 12 + 6
    got = srpp_mae_mm(pred, srpp_targets(z, idx, mode, scale), z, idx, valid, mode, scale)
    assert got.dim() == 0 and not got.requires_grad
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_srpp_mae_mm_without_a_pair_is_nan():
    from sam2_3dmed.model.srpp import srpp_targets

    idx, z, valid, pred, _ = _srpp_case()
    none = torch.zeros_like(valid)
    none[:, 0] = True  # one valid slice per clip: no pair
    assert math.isnan(float(srpp_mae_mm(pred, srpp_targets(z, idx), z, idx, none)))


def _fake_out_and_batch(srpp=True, bd=True, b=2, d=4, s=16):
    g = torch.Generator().manual_seed(3)
    idx, z, valid, pred, _ = _srpp_case()
    mask = torch.zeros(b, d, s, s)
    mask[:, 1:, 4:10, 5:12] = 1.0
    out = {"mask_logits": torch.randn(b, d, s, s, generator=g).requires_grad_(),
           "obj_logits": torch.randn(b, d, generator=g).requires_grad_(),
           "srpp": pred.clone().requires_grad_() if srpp else None,
           "bd_logits": torch.randn(b, d, s, s, generator=g).requires_grad_() if bd else None}
    batch = {"mask": mask, "valid": valid, "z_mm": z, "slice_index": idx}
    return out, batch


@pytest.mark.parametrize("mode", ["mm", "index"])
def test_compute_losses_logs_srpp_mae_outside_the_loss(mode):
    cfg = load_config(overrides={"model": {"srpp_target": mode, "srpp_scale_mm": 5.0},
                                 "train": {"loss": {"w_obj": 0.7, "w_srpp": 0.3, "w_bd": 0.9}}})
    out, batch = _fake_out_and_batch()
    terms = compute_losses(out, batch, cfg)
    assert set(terms) == {"seg", "obj", "srpp", "bd", "srpp_mae_mm", "loss"}
    lw = cfg["train"]["loss"]
    total = terms["seg"] + lw["w_obj"] * terms["obj"]
    total = total + lw["w_srpp"] * terms["srpp"]
    total = total + lw["w_bd"] * terms["bd"]
    assert torch.equal(terms["loss"], total)  # the statistic is not part of the loss
    assert not terms["srpp_mae_mm"].requires_grad
    idx, z, valid, pred, spacing = _srpp_case()
    want, _ = _hand_mae(pred, idx, z, valid, spacing, mode, 5.0)
    assert float(terms["srpp_mae_mm"]) == pytest.approx(want, rel=1e-5)
    # without the SRPP head (no_srpp, unet3d) there is no statistic, as there is no srpp term
    out, batch = _fake_out_and_batch(srpp=False)
    assert "srpp_mae_mm" not in compute_losses(out, batch, cfg) and "srpp" not in compute_losses(out, batch, cfg)


# ---------------------------------------------------------------- the training log
TINY = tiny_config(train={"steps": 4, "checkpoint_every": 2, "val_every": 4})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_target(tmp_path_factory.mktemp("heads"), TINY)


def _train(t, out, variant="full", *extra):
    env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "sam2_3dmed.cli", "train", "--config", str(t.cfg_path), "--target", "spleen",
         "--variant", variant, "--fold", "0", "--out", str(out), "--prepared", str(t.prepared), "--device", "cpu",
         *extra], capture_output=True, text=True, env=env, timeout=900)


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full_run(tiny):
    out = tiny.root / "full"
    r = _train(tiny, out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_train_log_has_the_head_columns(tiny, full_run):
    rows = _rows(full_run / "train_log.csv")
    assert list(rows[0])[-3:] == list(HEAD_COLUMNS)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for c in HEAD_COLUMNS:
            assert r[c] != "" and math.isfinite(float(r[c])), (c, r)
        assert float(r["srpp_mae_mm"]) > 0 and float(r["bd_gate"]) > 0
    # the zero-initialised gate: the first step's forward passes leave the features as they are
    assert float(rows[0]["bd_fusion_ratio"]) == 0.0
    assert all(float(r["bd_fusion_ratio"]) > 0 for r in rows[1:])

    no_bd = tiny.root / "no_bd"
    r = _train(tiny, no_bd, "no_bd")
    assert r.returncode == 0, r.stderr
    for row in _rows(no_bd / "train_log.csv"):
        assert row["bd_gate"] == "" and row["bd_fusion_ratio"] == "" and row["bd"] == ""
        assert math.isfinite(float(row["srpp_mae_mm"]))


@pytest.mark.slow
def test_resumed_run_logs_the_same_head_statistics(tiny, full_run):
    out = tiny.root / "resumed"
    killed = _train(tiny, out, "full", "--stop-after-step", "3")
    assert killed.returncode == 75
    resumed = _train(tiny, out)
    assert resumed.returncode == 0 and "from step 2" in resumed.stderr, resumed.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(out / "train_log.csv")) == strip(_rows(full_run / "train_log.csv"))


# ---------------------------------------------------------------- the report section
def _report(root: Path, gate_open_ratio: float | None = None, strip=()) -> str:
    """The fixture tree of test_report, its train_log.csv files without the head columns for the
    runs in ``strip`` ("all" for every run); the spleen page."""
    cfg_path = build_tree(root)
    runs = root / "results" / "demo" / "runs"
    for log in sorted(runs.glob("spleen/*/fold*/train_log.csv")):
        name = f"{log.parent.parent.name}/{log.parent.name}"
        if strip == "all" or name in strip:
            rows = _rows(log)
            fields = [c for c in rows[0] if c not in HEAD_COLUMNS]
            with log.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
    overrides = None if gate_open_ratio is None else {"report": {"gate_open_ratio": gate_open_ratio}}
    cfg = load_config(cfg_path, overrides=overrides)
    out = root / "reports"
    build_report(cfg, cfg_path, out, runs_dir=runs, cwd=root)
    return (out / "spleen.html").read_text(encoding="utf-8")


def _section(page: str) -> str:
    return re.search(r'<h2 id="heads">(.*?)(?=<h2 )', page, re.S)[1]


def _cells(section: str, run: str) -> dict[str, tuple[str, str]]:
    row = re.search(rf'<tr data-run="{re.escape(run)}">(.*?)</tr>', section, re.S)[1]
    return {m[1]: (m[2], m[3]) for m in re.finditer(r'<td data-col="([a-z_]+)" data-value="([^"]*)">(.*?)</td>', row)}


# the fixture's formulas (tests/test_report.py::build_tree), over its 20 steps
STEPS = range(1, 21)


def _ratio(fold, step):
    return float(repr(0.001 * step if fold == 0 else 0.0002))  # as the CSV carries it


def _gate(fold, step):
    return 0.0005 * step * (1 + fold)


def _srpp(step):
    return 20.0 / step


@pytest.fixture(scope="module")
def heads_page(tmp_path_factory):
    return _report(tmp_path_factory.mktemp("heads_report"))


def test_section_statements_and_first_open_step(heads_page):
    sec = _section(heads_page)
    thr = 0.01  # the default report.gate_open_ratio
    for fold in FOLDS:
        opened = [s for s in STEPS if _ratio(fold, s) >= thr]
        largest = max(_ratio(fold, s) for s in STEPS)
        cells = _cells(sec, f"full/fold{fold}")
        statement = (f"full/fold{fold}: the BD-fusion gate never opened: its largest ratio was {largest:.3g} "
                     f"(threshold {thr:.3g}), so the boundary branch barely changed the masks in this run")
        if opened:
            assert cells["open_step"][1] == str(opened[0]) == "10"
            assert statement.split(":")[0] + ": the BD-fusion gate never opened" not in sec
            assert f"full/fold{fold}: the BD-fusion gate opened at step {opened[0]}" in sec
        else:
            assert cells["open_step"][1] == "never"
            assert statement in sec and largest == 0.0002
    for fold in FOLDS:
        assert f"no_bd/fold{fold}: the BD-fusion gate" not in sec
    assert sec.count("the BD-fusion gate never opened") == 1


def test_section_numbers_match_the_fixture(heads_page):
    sec = _section(heads_page)
    n_edge = math.ceil(0.1 * len(STEPS))
    srpp_first = statistics.fmean(_srpp(s) for s in list(STEPS)[:n_edge])
    srpp_last = statistics.fmean(_srpp(s) for s in list(STEPS)[-n_edge:])
    for variant in ("full", "no_bd"):
        for fold in FOLDS:
            cells = _cells(sec, f"{variant}/fold{fold}")
            if variant == "full":
                want = {"ratio_final": _ratio(fold, 20), "ratio_max": max(_ratio(fold, s) for s in STEPS),
                        "gate_final": _gate(fold, 20)}
                for k, v in want.items():
                    assert float(cells[k][0]) == pytest.approx(v, rel=1e-9), k
                    assert cells[k][1] == f"{v:.3g}", k
            else:
                for k in ("ratio_final", "ratio_max", "open_step", "gate_final"):
                    assert cells[k] == ("", "n/a"), k
            assert float(cells["srpp_first"][0]) == pytest.approx(srpp_first, rel=1e-9)
            assert float(cells["srpp_last"][0]) == pytest.approx(srpp_last, rel=1e-9)
            assert cells["srpp_first"][1] == f"{srpp_first:.2f}" and cells["srpp_last"][1] == f"{srpp_last:.2f}"
            assert float(cells["dice_last"][0]) == 0.7 and cells["dice_last"][1].startswith("0.700")
    assert "last 10%" in sec  # the smoothing is stated


def test_section_has_a_figure(heads_page):
    sec = _section(heads_page)
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]{200,})" alt="([^"]*)"', sec)
    assert len(imgs) == 1 and "gate" in imgs[0][1] and "SRPP" in imgs[0][1] and "Dice" in imgs[0][1]
    assert "dashed" in sec


def test_threshold_comes_from_the_config(tmp_path):
    sec = _section(_report(tmp_path, gate_open_ratio=0.0001))
    assert "never opened" not in sec
    assert _cells(sec, "full/fold1")["open_step"][1] == "1"
    assert _cells(sec, "full/fold0")["open_step"][1] == "1"


def test_older_logs_without_the_columns_get_a_note(tmp_path):
    page = _report(tmp_path / "all", strip="all")
    sec = _section(page)
    assert 'id="no-heads"' in sec and "heads-table" not in sec
    assert "bd_fusion_ratio" in sec and "full/fold0" in sec
    # one older log among current ones: the others are shown, the older one is named in a note
    sec = _section(_report(tmp_path / "one", strip=("full/fold1",)))
    assert 'id="heads-table"' in sec and 'data-run="full/fold1"' not in sec
    note = re.search(r'<div class="note heads-note">(.*?)</div>', sec, re.S)[1]
    assert "full/fold1" in note and "full/fold0" not in note
    assert "never opened" not in sec  # fold 1 (the closed gate) is the one without statistics
