"""The studies of evaluate and the report: auto mode one direction at a time
(evaluate.directions) and prompted mode under worse prompts (evaluate.robustness).

Numbers are recomputed here independently: the perturbed prompts from their definitions,
the one-way propagations from the model's own iterator, the report's tables from the
fixture rows."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config, mode_info, robustness_mode, variant_config
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.errors import UserError
from sam2_3dmed.evaluate.evaluation import boundary_columns, study_modes
from sam2_3dmed.evaluate.metrics import compute_metrics
from sam2_3dmed.infer import inference as I
from sam2_3dmed.infer import propagation as PR
from sam2_3dmed.infer.ensemble import load_ensemble
from sam2_3dmed.model.checkpoint import save_checkpoint
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.prompts import (Prompt, box_from_mask, key_slice, perturbation_draw, perturbed_prompt,
                                      point_from_mask, slice_at_fraction)
from sam2_3dmed.report import build_report

from _cli import run_cli
from _tiny import make_tiny_target, tiny_config


# ---------------------------------------------------------------- names
def test_mode_names_and_families():
    assert mode_info("auto").family == "main" and mode_info("prompted_k3").n_prompts == 3
    f = mode_info("auto_forward")
    assert (f.family, f.direction, f.n_prompts) == ("direction", "forward", 0)
    r = mode_info("box_jitter25")
    assert (r.family, r.perturbation, r.level, r.n_prompts) == ("robustness", "box_jitter", 0.25, 1)
    assert mode_info("key_slice75").level == 0.75 and mode_info("point_offset0").level == 0.0
    assert mode_info("box_jitter") is None and mode_info("other") is None
    assert robustness_mode("point_offset", 0.5) == "point_offset50"
    with pytest.raises(UserError, match="whole percent"):
        robustness_mode("box_jitter", 0.125)
    ecfg = load_config(None)["evaluate"]
    assert study_modes(ecfg, ["auto", "prompted"]) == [
        "auto_forward", "auto_backward", "box_jitter0", "box_jitter10", "box_jitter25", "point_offset0",
        "point_offset25", "point_offset50", "key_slice25", "key_slice75"]
    assert study_modes(ecfg, ["auto"]) == ["auto_forward", "auto_backward"]  # no prompted mode: no robustness
    assert study_modes({**ecfg, "directions": False}, ["prompted"])[:1] == ["box_jitter0"]
    assert boundary_columns([1, 3], [50, 99.5, 100]) == ["err_mm_0_1", "err_mm_1_3", "err_mm_3_inf", "sd_p50",
                                                        "sd_p99p5", "sd_p100"]


# ---------------------------------------------------------------- perturbed prompts
def _organ():
    lab = np.zeros((20, 40, 50), np.uint8)
    yy, xx = np.mgrid[:40, :50]
    for z in range(4, 17):  # the largest cross-section at z = 10
        r = 12 - abs(z - 10)
        lab[z] = ((yy - 20) ** 2 + ((xx - 24) / 1.5) ** 2) < r * r
    return lab


def test_box_jitter_scales_one_draw():
    lab = _organ()
    draw = perturbation_draw(0, "case_7")
    assert draw.shape == (5,) and np.all(np.abs(draw[:4]) <= 1) and 0 <= draw[4] < 2 * math.pi
    np.testing.assert_array_equal(draw, perturbation_draw(0, "case_7"))  # the case's draw, not a global stream
    assert not np.array_equal(draw, perturbation_draw(0, "case_8")) and not np.array_equal(draw, perturbation_draw(1, "case_7"))
    k = key_slice(lab)
    assert k == 10
    tight = box_from_mask(lab[k]).astype(np.float64)
    p0 = perturbed_prompt(lab, "box", "box_jitter", 0.0, draw)
    assert p0.slice_index == k and np.allclose(p0.box, tight)
    w, h = tight[2] - tight[0] + 1, tight[3] - tight[1] + 1
    for level in (0.1, 0.25):
        want = tight + draw[:4] * level * np.array([w, h, w, h])
        want[[0, 2]] = np.clip(want[[0, 2]], 0, 49)
        want[[1, 3]] = np.clip(want[[1, 3]], 0, 39)
        want = [min(want[0], want[2]), min(want[1], want[3]), max(want[0], want[2]), max(want[1], want[3])]
        got = perturbed_prompt(lab, "point", "box_jitter", level, draw)  # box_jitter is a box whatever the kind
        assert got.point is None and np.allclose(got.box, want, atol=1e-4), level


def test_point_offset_moves_by_a_fraction_of_the_radius():
    lab = _organ()
    k = key_slice(lab)
    centre = point_from_mask(lab[k])
    r = math.sqrt(lab[k].sum() / math.pi)
    draw = np.array([0, 0, 0, 0, 0.3])
    assert perturbed_prompt(lab, "box", "point_offset", 0.0, draw).point == tuple(float(v) for v in centre)
    for level in (0.25, 0.5):
        p = perturbed_prompt(lab, "box", "point_offset", level, draw)
        x, y = p.point
        assert p.box is None and lab[k, int(y), int(x)]
        assert math.hypot(x - centre[0], y - centre[1]) == pytest.approx(level * r, abs=0.75)
        assert math.atan2(y - centre[1], x - centre[0]) == pytest.approx(0.3, abs=0.15)
    # far outside the organ: the nearest organ pixel, so the click is still a correct positive click
    p = perturbed_prompt(lab, "box", "point_offset", 1.0 * 3, np.array([0, 0, 0, 0, math.pi]))
    x, y = p.point
    assert lab[k, int(y), int(x)]
    ys, xs = np.nonzero(lab[k])
    assert x == xs.min()  # direction pi: to the left edge of the organ


def test_key_slice_at_fractions():
    lab = _organ()  # organ on slices 4..16
    assert slice_at_fraction(lab, 0.25) == 7 and slice_at_fraction(lab, 0.75) == 13
    assert slice_at_fraction(lab, 0.0) == 4 and slice_at_fraction(lab, 1.0) == 16
    gap = lab.copy()
    gap[7] = 0
    assert slice_at_fraction(gap, 0.25) == 6  # the nearest slice with organ, the lower among ties
    p = perturbed_prompt(lab, "box", "key_slice", 0.75, perturbation_draw(0, "c"))
    assert p.slice_index == 13 and np.allclose(p.box, box_from_mask(lab[13]))
    p = perturbed_prompt(lab, "point", "key_slice", 0.25, perturbation_draw(0, "c"))
    assert p.slice_index == 7 and np.allclose(p.point, point_from_mask(lab[7]))
    assert perturbed_prompt(np.zeros_like(lab), "box", "key_slice", 0.25, perturbation_draw(0, "c")) is None
    with pytest.raises(ValueError, match="unknown prompt perturbation"):
        perturbed_prompt(lab, "box", "tilt", 0.1, perturbation_draw(0, "c"))


# ---------------------------------------------------------------- one direction at a time
@pytest.fixture(scope="module")
def model():
    cfg = load_config(None, {"model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1}})
    torch.manual_seed(0)
    return build_model(variant_config(cfg, "full")["model"]).eval()


def test_auto_is_the_mean_of_forward_and_backward(model):
    rng = np.random.default_rng(0)
    img = rng.random((7, 40, 48)).astype(np.float32) * 0.5
    img[1:6, 10:30, 12:36] += 0.4
    feats, query, info = PR.encode_volume(model, img, chunk=4, feature_dtype="float32")
    run = {p: PR.propagate_volume(model, feats, query, info, 7, None, p, "cpu") for p in ("half", "forward", "backward")}
    np.testing.assert_allclose(run["half"], 0.5 * (run["forward"] + run["backward"]), atol=1e-6)
    assert not np.allclose(run["forward"], run["backward"], atol=1e-3)  # the directions do differ

    # forward recomputed from the model's own iterator: slice 0 the unprompted conditioning slice
    size = model.image_size
    prob = torch.zeros(7, size, size)
    with torch.no_grad():
        for s, raw, obj in model.propagate_iter(feats, list(range(7)), query, conds={0: None}):
            prob[s] = PR._prob(raw, obj)[0].float()
    np.testing.assert_allclose(run["forward"], PR._unfit(prob, info, 4), atol=1e-6)
    with pytest.raises(ValueError, match="auto mode"):
        PR.propagate_volume(model, feats, query, info, 7, Prompt(3, box=(12.0, 10.0, 30.0, 28.0)), "forward", "cpu")
    with pytest.raises(ValueError, match="passes must be one of"):
        PR.propagate_volume(model, feats, query, info, 7, None, "sideways", "cpu")


# ---------------------------------------------------------------- evaluate with the studies
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_config(evaluate={"modes": ["auto", "prompted"], "prompt_counts": [1], "directions": True,
                                "robustness": {"box_jitter": [0, 0.25], "point_offset": [0, 0.5],
                                               "key_slice": [0.25]},
                                "save_predictions": False})
    t = make_tiny_target(tmp_path_factory.mktemp("studies"), cfg, cases=4)
    vcfg = variant_config(t.cfg, "full")
    torch.manual_seed(3)
    run = t.root / "runs" / "fold0"
    save_checkpoint(run / "best.pt", build_model(vcfg["model"]), None, None, 2, vcfg,
                    {"target": "spleen", "variant": "full", "fold": 0})
    return t, run


@pytest.mark.slow
def test_evaluate_adds_the_studies_and_their_numbers_recompute(tiny):
    t, run = tiny
    out = t.root / "eval"
    r = run_cli("evaluate", "--config", t.cfg_path, "--target", "spleen", "--run", run, "--prepared", t.prepared,
                "--out", out, "--device", "cpu", "--max-cases", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    modes = ["auto", "prompted", "auto_forward", "auto_backward", "box_jitter0", "box_jitter25", "point_offset0",
             "point_offset50", "key_slice25"]
    assert summary["modes"] == modes and set(summary["metrics"]) == set(modes)
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    prepared = PreparedTarget(t.prepared)
    cases = prepared.cases(0, "val")[:1]
    assert len(rows) == len(modes) * len(cases)
    by = {(r["case_id"], r["mode"]): r for r in rows}

    ens = load_ensemble([run / "best.pt"], "cpu")
    settings = I.InferenceSettings.from_config(t.cfg, "spleen")
    tol = float(t.cfg["targets"]["spleen"]["nsd_tolerance_mm"])
    for cid in cases:
        image, label, geom = prepared.case(cid, mmap=True)
        gt, gt_vol = prepared.original_label(cid, [1])
        draw = perturbation_draw(0, cid)
        # box_jitter0 is prompted's tight box: the same prediction, computed once, the same row
        for col in ("dice", "hd95", "pred_voxels", "seconds"):
            assert by[(cid, "box_jitter0")][col] == by[(cid, "prompted")][col]
        assert by[(cid, "point_offset0")]["prompt"] == "point" and by[(cid, "box_jitter25")]["prompt"] == "box"
        assert by[(cid, "auto_forward")]["prompt"] == "" and by[(cid, "auto_forward")]["n_prompts"] == "0"
        want = {
            "auto_forward": (None, "forward"), "auto_backward": (None, "backward"),
            "box_jitter25": ([perturbed_prompt(label, "box", "box_jitter", 0.25, draw)], None),
            "point_offset50": ([perturbed_prompt(label, "box", "point_offset", 0.5, draw)], None),
            "key_slice25": ([perturbed_prompt(label, "box", "key_slice", 0.25, draw)], None),
        }
        # one encoding for all five (tests/test_evaluate_ensemble.py checks that sharing it changes nothing)
        probs = I.predict_prepared_modes(ens, image, {m: p for m, (p, _) in want.items()}, settings,
                                         passes={m: d for m, (_, d) in want.items() if d})
        for mode in want:
            mask, _ = I.to_mask(probs[mode], geom, settings)
            m = compute_metrics(mask, gt, gt_vol.spacing, tol)
            assert int(by[(cid, mode)]["pred_voxels"]) == m["pred_voxels"], (cid, mode)
            assert float(by[(cid, mode)]["dice"]) == pytest.approx(m["dice"], abs=1e-5), (cid, mode)


@pytest.mark.slow
def test_no_studies_keeps_the_main_modes(tiny):
    t, run = tiny
    out = t.root / "eval_plain"
    r = run_cli("evaluate", "--config", t.cfg_path, "--target", "spleen", "--run", run, "--prepared", t.prepared,
                "--out", out, "--device", "cpu", "--no-studies", "--max-cases", "1", "--modes", "auto")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["modes"] == ["auto"]


# ---------------------------------------------------------------- the report's sections
def _add_study_rows(root):
    """Study rows appended to the fixture's metrics.csv files: Dice falls with the level by
    a known amount per variant; forward/backward below auto by known amounts."""
    drop = {"full": 0.1, "no_bd": 0.2}
    for path in sorted(root.glob("results/demo/runs/spleen/*/fold*/eval/val/metrics.csv")):
        variant = path.parts[-5]
        rows = list(csv.DictReader(path.read_text().splitlines()))
        fields = list(rows[0])
        new = []
        for r in rows:
            if r["mode"] == "prompted":
                for mode, level in (("box_jitter0", 0.0), ("box_jitter10", 0.1), ("box_jitter25", 0.25)):
                    new.append({**r, "mode": mode, "dice": f"{float(r['dice']) - drop[variant] * level:.6f}",
                                "hd95": f"{float(r['hd95']) + 10 * level:.6f}"})
                new.append({**r, "mode": "key_slice25", "dice": f"{float(r['dice']) - 0.05:.6f}"})
            if r["mode"] == "auto":
                new.append({**r, "mode": "auto_forward", "dice": f"{float(r['dice']) - 0.03:.6f}",
                            "nsd": f"{float(r['nsd']) - 0.02:.6f}"})
                i = int(r["case_id"].split("_")[1])
                new.append({**r, "mode": "auto_backward", "dice": f"{float(r['dice']) + (0.01 if i == 0 else -0.02):.6f}"})
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows + new)


def _section(html, sid):
    start = html.index(f'<h2 id="{sid}">')
    return html[start:html.index("<h2 ", start + 5)]


def test_report_sections_recompute(tmp_path):
    from test_report import VALUES, build_tree

    cfg_path = build_tree(tmp_path)
    _add_study_rows(tmp_path)
    out = tmp_path / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    html = (out / "spleen.html").read_text()
    # the headline and per-case table still show the main modes only
    head = _section(html, "headline")
    assert "box_jitter" not in head and "auto_forward" not in head
    assert "auto_forward" not in _section(html, "cases")

    rob = _section(html, "robustness")
    assert 'data-perturbation="box_jitter"' in rob and 'data-perturbation="key_slice"' in rob and "<img" in rob
    for variant, d in (("full", 0.1), ("no_bd", 0.2)):
        base = VALUES[(variant, "prompted")]["dice"]
        row = re.search(rf'<tr data-variant="{variant}" data-mode="box_jitter25">(.*?)</tr>', rob, re.S).group(1)
        want = np.mean([v - d * 0.25 for v in base])
        assert f"{want:.3f} \u00b1" in row
        delta = float(re.search(r'data-metric="dice" data-delta="([^"]+)"', row).group(1))
        assert delta == pytest.approx(-d * 0.25, abs=1e-6)
        hd = float(re.search(r'data-metric="hd95" data-delta="([^"]+)"', row).group(1))
        assert hd == pytest.approx(2.5, abs=1e-6)
        ks = re.search(rf'<tr data-variant="{variant}" data-mode="key_slice25">(.*?)</tr>', rob, re.S).group(1)
        assert float(re.search(r'data-metric="dice" data-delta="([^"]+)"', ks).group(1)) == pytest.approx(-0.05, abs=1e-6)
        assert re.search(rf'<tr data-variant="{variant}" data-mode="prompted">.*?largest', rob, re.S)

    dirs = _section(html, "directions")
    for variant in ("full", "no_bd"):
        block = dirs[dirs.index(f'data-variant="{variant}"'):]
        block = block[:block.index("</table>")]
        fwd = re.search(r'data-against="auto_forward">(.*?)</tr>', block, re.S).group(1)
        assert float(re.search(r'data-metric="dice" data-delta="([^"]+)"', fwd).group(1)) == pytest.approx(0.03, abs=1e-6)
        assert "better on 4 of 4" in fwd
        bwd = re.search(r'data-against="auto_backward">(.*?)</tr>', block, re.S).group(1)
        want = np.mean([-0.01, 0.02, 0.02, 0.02])  # case_0 backward is better than both
        assert float(re.search(r'data-metric="dice" data-delta="([^"]+)"', bwd).group(1)) == pytest.approx(want, abs=1e-6)
        assert "better on 3 of 4" in bwd
        auto = VALUES[(variant, "auto")]["dice"]
        assert f"{np.mean([v - 0.03 for v in auto]):.3f} \u00b1" in block
    assert "full: both directions gain 0.030 Dice over forward only" in dirs


def test_report_without_study_modes_says_so(tmp_path):
    from test_report import build_tree

    cfg_path = build_tree(tmp_path, variants=("full",))
    out = tmp_path / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    html = (out / "spleen.html").read_text()
    assert 'id="no-robustness"' in html and 'id="no-directions"' in html
