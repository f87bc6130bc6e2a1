"""evaluate with an ensemble of fold runs (held-out test split only) and with k simulated
prompts: the numbers are recomputed here from the members' own probabilities."""

import csv
import json

import numpy as np
import pytest
import torch

from sam2_3dmed.config import variant_config
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.config import mode_prompts
from sam2_3dmed.evaluate.evaluation import mode_names
from sam2_3dmed.evaluate.metrics import compute_metrics
from sam2_3dmed.infer import inference as I
from sam2_3dmed.infer.ensemble import load_ensemble
from sam2_3dmed.model.checkpoint import save_checkpoint
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.prompts import prompts_from_label

from _cli import one_line_error, run_cli
from _tiny import make_tiny_target, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_config(splits={"folds": 2, "test_fraction": 0.25}, evaluate={"save_predictions": False})
    t = make_tiny_target(tmp_path_factory.mktemp("ens"), cfg, cases=5)
    vcfg = variant_config(t.cfg, "full")
    runs = []
    for fold in (0, 1):
        torch.manual_seed(10 + fold)
        run = t.root / "runs" / f"fold{fold}"
        save_checkpoint(run / "best.pt", build_model(vcfg["model"]), None, None, 2, vcfg,
                        {"target": "spleen", "variant": "full", "fold": fold})
        runs.append(run)
    return t, runs


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_mode_names():
    assert mode_names(["auto", "prompted"], (1, 3)) == ["auto", "prompted", "prompted_k3"]
    assert mode_names(["prompted"], (2,)) == ["prompted_k2"]
    assert [mode_prompts(m) for m in ("auto", "prompted", "prompted_k3", "prompted_k", "other")] == [0, 1, 3, None, None]


def test_ensemble_on_the_test_split_is_the_mean_of_its_folds(tiny):
    t, runs = tiny
    out = t.root / "eval_ens"
    r = run_cli("evaluate", "--config", t.cfg_path, "--target", "spleen", "--run", runs[0], "--run", runs[1],
                "--prepared", t.prepared, "--split", "test", "--modes", "auto,prompted", "--prompt-counts", "1,2",
                "--out", out, "--device", "cpu")
    assert r.returncode == 0 and "ensemble of 2 runs" in r.stderr, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fold"] is None and summary["split"] == "test"
    assert summary["ensemble"]["size"] == 2 and summary["ensemble"]["folds"] == [0, 1]
    assert summary["modes"] == ["auto", "prompted", "prompted_k2"] and summary["prompt_counts"] == [1, 2]
    rows = _rows(out / "metrics.csv")
    prepared = PreparedTarget(t.prepared)
    test_ids = prepared.cases(0, "test")
    assert sorted({r["case_id"] for r in rows}) == sorted(test_ids) and len(rows) == 3 * len(test_ids)

    # recompute: each member alone, probabilities averaged here, thresholded, scored
    ens = load_ensemble([run / "best.pt" for run in runs], "cpu")
    settings = I.InferenceSettings.from_config(t.cfg, "spleen")
    for cid in test_ids:
        image, label, geom = prepared.case(cid, mmap=True)
        gt, gt_vol = prepared.original_label(cid, [1])
        for mode, k in (("auto", 0), ("prompted", 1), ("prompted_k2", 2)):
            prompts = prompts_from_label(label, "box", k) if k else None
            if k:
                assert len({p.slice_index for p in prompts}) == min(k, int((label.reshape(len(label), -1) > 0)
                                                                         .any(1).sum()))
            probs = [I.predict_prepared_modes(m, image, {mode: prompts}, settings)[mode] for m in ens.members]
            mask, _ = I.to_mask((probs[0] + probs[1]) / 2, geom, settings)
            want = compute_metrics(mask, gt, gt_vol.spacing, float(t.cfg["targets"]["spleen"]["nsd_tolerance_mm"]))
            row = next(r for r in rows if r["case_id"] == cid and r["mode"] == mode)
            assert int(row["n_prompts"]) == (len(prompts) if prompts else 0)
            assert int(row["pred_voxels"]) == want["pred_voxels"], (cid, mode)
            assert float(row["dice"]) == pytest.approx(want["dice"], abs=1e-5), (cid, mode)


def test_shared_features_change_nothing(tiny):
    """Encoding once for several modes gives each mode what predicting it alone gives."""
    t, runs = tiny
    ens = load_ensemble([runs[0]], "cpu")
    prepared = PreparedTarget(t.prepared)
    image, label, _ = prepared.case(prepared.cases(0, "val")[0], mmap=True)
    settings = I.InferenceSettings.from_config(t.cfg, "spleen")
    prompts = {"auto": None, "prompted": prompts_from_label(label, "box", 1), "k2": prompts_from_label(label, "box", 2)}
    together = I.predict_prepared_modes(ens, image, prompts, settings)
    for mode, p in prompts.items():
        alone = I.predict_prepared_modes(ens, image, {mode: p}, settings)[mode]
        np.testing.assert_array_equal(together[mode], alone)


def test_ensemble_refusals(tiny, tmp_path):
    t, runs = tiny
    base = ["evaluate", "--config", t.cfg_path, "--target", "spleen", "--prepared", t.prepared, "--device", "cpu"]
    err = one_line_error(run_cli(*base, "--run", runs[0], "--run", runs[1], "--split", "val", "--out", tmp_path / "a"))
    assert "held-out test split only" in err
    empty = tmp_path / "untrained"
    empty.mkdir()
    err = one_line_error(run_cli(*base, "--run", runs[0], "--run", empty, "--split", "test", "--out", tmp_path / "b"))
    assert str(empty) in err and "does not exist" in err
    err = one_line_error(run_cli(*base, "--run", runs[0], "--run", runs[0], "--split", "test", "--out", tmp_path / "c"))
    assert "given twice" in err
    err = one_line_error(run_cli(*base, "--run", runs[0], "--prompt-counts", "0", "--out", tmp_path / "d"))
    assert "--prompt-counts" in err
    assert not any((tmp_path / n).exists() for n in "abcd")
