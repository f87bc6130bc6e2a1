"""``sam2-3dmed report``: pages from a small fixture results tree built in tmp_path.

The tree imitates the pipeline's outputs (``workflow/Snakefile``, ``evaluate/run.py``,
``train/trainer.py``): two variants (full, no_bd) x two folds for spleen (and the same
for pancreas, whose page carries the paper's reference row), with tiny train/val logs,
metrics.csv rows for auto and prompted mode, summaries, 40x40x12 NIfTI images, labels
and predictions on an LPS grid (so the figures go through the canonical reorientation),
a fingerprint.json and a config pointing at all of it. Expected numbers are computed
here from the fixture values, independently of the report code.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from _cli import one_line_error, run_cli
from sam2_3dmed.config import load_config
from sam2_3dmed.errors import InputFileError, UserError
from sam2_3dmed.report import build_report
from sam2_3dmed.report.provenance import dvc_hashes, git_info

METRICS = ("dice", "iou", "hd95", "nsd", "assd")
VARIANTS = ("full", "no_bd")
FOLDS = (0, 1)
MODES = ("auto", "prompted")
CASES = {0: ["case_0", "case_1"], 1: ["case_2", "case_3"]}
SHAPE = (40, 40, 12)
AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])  # LPS on disk: the report must reorient to RAS+

# per variant and mode, one value per case (case_0..case_3), per metric. full/prompted is
# best in Dice, IoU and NSD; no_bd/auto is best (lowest) in HD95 and ASSD. No mean, std
# or delta lies on a rounding half-way point of its displayed precision.
VALUES = {
    ("full", "auto"): {"dice": [0.8018, 0.8536, 0.7754, 0.8326], "iou": [0.6681, 0.7391, 0.6446, 0.7086],
                       "hd95": [3.9697, 3.5331, 4.9718, 4.5123], "nsd": [0.7011, 0.7466, 0.6629, 0.7214],
                       "assd": [1.1595, 1.024, 1.4869, 1.0844]},
    ("full", "prompted"): {"dice": [0.8624, 0.8754, 0.8228, 0.8708], "iou": [0.7521, 0.7927, 0.6936, 0.7736],
                           "hd95": [2.9783, 2.8056, 4.2029, 3.1228], "nsd": [0.7832, 0.7987, 0.7205, 0.7911],
                           "assd": [0.864, 0.8394, 1.3069, 0.8629]},
    ("no_bd", "auto"): {"dice": [0.6974, 0.7353, 0.688, 0.7165], "iou": [0.5432, 0.5926, 0.5277, 0.5606],
                        "hd95": [1.9765, 2.452, 2.188, 2.4171], "nsd": [0.6009, 0.6406, 0.5793, 0.6228],
                        "assd": [0.5456, 0.5579, 0.5114, 0.671]},
    ("no_bd", "prompted"): {"dice": [0.7528, 0.7699, 0.7263, 0.7583], "iou": [0.5997, 0.6316, 0.5786, 0.6101],
                            "hd95": [2.624, 2.7189, 2.876, 2.7706], "nsd": [0.6507, 0.6635, 0.6147, 0.6562],
                            "assd": [0.7235, 0.7261, 0.7764, 0.7031]},
}
DECIMALS = {"dice": 3, "iou": 3, "nsd": 3, "hd95": 2, "assd": 2}
HIGHER = {"dice": True, "iou": True, "nsd": True, "hd95": False, "assd": False}


TRAIN_FIELDS = ["step", "lr", "loss", "seg", "obj", "srpp", "bd", "grad_norm", "seconds", "bd_gate",
                "bd_fusion_ratio", "srpp_mae_mm"]
BANDS = ("err_mm_0_1", "err_mm_1_3", "err_mm_3_inf")
PERCENTILES = ("sd_p50", "sd_p75", "sd_p90", "sd_p95", "sd_p99", "sd_p100")


def boundary_columns(variant: str, mode: str, i: int) -> dict:
    """The boundary analysis's columns of a fixture row (mL per distance band, mm per
    percentile): full has fewer errors near the boundary than no_bd, the same far away."""
    near = (0.4 if variant == "full" else 0.9) + 0.1 * i + (0.05 if mode == "auto" else 0.0)
    bands = {"err_mm_0_1": near, "err_mm_1_3": 0.3 + 0.02 * i, "err_mm_3_inf": 0.1 + 0.01 * i}
    pcts = {k: (0.5 + j) * (1.0 if variant == "full" else 1.3) + 0.1 * i for j, k in enumerate(PERCENTILES)}
    return {**bands, **pcts}


def _write_csv(path: Path, fields, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def _case_arrays(i: int):
    """Image (HU), label (an ellipsoid-ish blob) and a shifted prediction for case i."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    cx, cy = 18 + i, 20
    label = (((x - cx) / 8.0) ** 2 + ((y - cy) / 6.0) ** 2 + ((z - 6) / 4.0) ** 2 < 1).astype(np.uint8)
    pred = (((x - cx - 1) / 8.0) ** 2 + ((y - cy) / 6.5) ** 2 + ((z - 6) / 4.0) ** 2 < 1).astype(np.uint8)
    image = np.full(SHAPE, -900.0, np.float32)
    image[4:-4, 4:-4, :] = 40.0
    image[label > 0] = 120.0
    image += np.random.default_rng(i).normal(0, 15, SHAPE).astype(np.float32)
    return image, label, pred


def build_tree(root: Path, targets=("spleen",), variants=VARIANTS, folds=FOLDS, predictions=True) -> Path:
    """Write a fixture results tree under ``root``; return the config path."""
    root = Path(root)
    for target in targets:
        task_dir = root / "raw" / f"Task_{target}"
        prepared = root / "prepared" / target
        cases = []
        for i, cid in enumerate(c for f in FOLDS for c in CASES[f]):
            image, label, _ = _case_arrays(i)
            _save(task_dir / "imagesTr" / f"{cid}.nii.gz", image)
            _save(task_dir / "labelsTr" / f"{cid}.nii.gz", label)
            cases.append({"case_id": cid, "image": f"imagesTr/{cid}.nii.gz", "label": f"labelsTr/{cid}.nii.gz",
                          "original_axcodes": "LPS", "original_shape": list(SHAPE)})
        prepared.mkdir(parents=True, exist_ok=True)
        (prepared / "fingerprint.json").write_text(json.dumps(
            {"target": target, "task_dir": str(task_dir), "synthetic": True, "cases": cases}))
        for variant in variants:
            for fold in folds:
                run = root / "results" / "demo" / "runs" / target / variant / f"fold{fold}"
                train_rows = []
                for step in range(1, 21):
                    row = {"step": step, "lr": 1e-4, "loss": 2.0 / step, "seg": 1.0 / step, "obj": 0.5 / step,
                           "srpp": 0.3 / step, "bd": "" if variant == "no_bd" else 0.2 / step,
                           "grad_norm": 1.0, "seconds": 0.5 + 0.01 * step,
                           # the heads' statistics: the gate opens in full's fold 0 only (ratio 0.001 step)
                           "bd_gate": "" if variant == "no_bd" else 0.0005 * step * (1 + fold),
                           "bd_fusion_ratio": "" if variant == "no_bd" else (0.001 * step if fold == 0 else 0.0002),
                           "srpp_mae_mm": 20.0 / step}
                    train_rows.append(row)
                _write_csv(run / "train_log.csv", TRAIN_FIELDS, train_rows)
                _write_csv(run / "val_log.csv", ["step", "mean_dice", *CASES[fold]],
                           [{"step": s, "mean_dice": d, CASES[fold][0]: d - 0.01, CASES[fold][1]: d + 0.01}
                            for s, d in ((10, 0.5), (20, 0.7))])
                (run / "train_summary.json").write_text(json.dumps({
                    "target": target, "variant": variant, "fold": fold, "steps": 20, "best_val_dice": 0.7,
                    "device": "cpu", "seconds_this_run": 12.0, "encoder_frozen": False, "pretrained": False,
                    "trainable_parameters": 1000 + (0 if variant == "full" else -100), "total_parameters": 5000,
                    "parameters_per_module": {"image_encoder": {"total": 4000, "trainable": 0},
                                              "adapter": {"total": 1000, "trainable": 1000}},
                    "peak_memory_mb": 700.0 + fold, "median_step_seconds": 0.6}))
                ev = run / "eval" / "val"
                rows = []
                for cid in CASES[fold]:
                    i = int(cid.split("_")[1])
                    for mode in MODES:
                        vals = {m: VALUES[(variant, mode)][m][i] for m in METRICS}
                        rows.append({"case_id": cid, "mode": mode, "prompt": "" if mode == "auto" else "box", **vals,
                                     "pred_voxels": 900, "gt_voxels": 1000, "gt_volume_ml": 6.75, "seconds": 2.0 + i,
                                     "slices": 12, "slices_per_s": 12 / (2.0 + i), "peak_mem_mb": 650.0,
                                     "feature_cache_mb": 1.5, "device": "cpu",
                                     **boundary_columns(variant, mode, i)})
                        if predictions:
                            _save(ev / "predictions" / f"{cid}_{mode}.nii.gz", _case_arrays(i)[2])
                _write_csv(ev / "metrics.csv", list(rows[0]), rows)
                (ev / "summary.json").write_text(json.dumps({
                    "target": target, "variant": variant, "fold": fold, "split": "val", "modes": list(MODES),
                    "prompt": "box", "checkpoint_step": 20, "nsd_tolerance_mm": 1.0, "n_cases": 2,
                    "synthetic": True, "pretrained": False, "device": "cpu", "metrics": {}}))
    cfg = {"data": {"root": str(root / "raw"), "prepared": str(root / "prepared"), "source": "synthetic"},
           "run": {"targets": list(targets), "variants": list(variants), "folds": list(folds)},
           "model": {"pretrained": False}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def render(root: Path, **kw) -> tuple[dict, Path]:
    cfg_path = build_tree(root, **kw)
    cfg = load_config(cfg_path)
    out = root / "reports"
    build_report(cfg, cfg_path, out, runs_dir=root / "results" / "demo" / "runs", cwd=root)
    return {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.html")}, out


def expected_text(variant: str, mode: str, metric: str) -> str:
    vals = VALUES[(variant, mode)][metric]
    d = DECIMALS[metric]
    return f"{statistics.fmean(vals):.{d}f} \u00b1 {statistics.pstdev(vals):.{d}f}"


def headline_cell(html: str, variant: str, mode: str, metric: str) -> tuple[str, bool]:
    table = re.search(r'<table id="headline-table">.*?</table>', html, re.S)[0]
    row = re.search(rf'<tr data-variant="{variant}" data-mode="{mode}">.*?</tr>', table, re.S)[0]
    cell = re.search(rf'<td data-metric="{metric}"( class="best")?>(.*?)</td>', row, re.S)
    text = re.sub(r"<span class=\"med\">.*?</span>|<span class=\"best-mark\".*?</span>|<[^>]+>", "", cell[2]).strip()
    return text, bool(cell[1])


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    html, out = render(root, targets=("spleen", "pancreas"))
    return html, out, root


def test_files_exist_and_titles(pages):
    html, out, _ = pages
    assert sorted(html) == ["index.html", "pancreas.html", "spleen.html"]
    title = re.search(r"<title>(.*?)</title>", html["spleen.html"], re.S)[1]
    assert "SYNTHETIC" in title and "spleen" in title
    assert "SYNTHETIC" in re.search(r"<title>(.*?)</title>", html["index.html"], re.S)[1]
    for page in html.values():
        assert 'id="synthetic-banner"' in page and 'id="random-banner"' in page
    assert 'href="spleen.html"' in html["index.html"] and 'href="pancreas.html"' in html["index.html"]


def test_headline_mean_std_and_best(pages):
    html = pages[0]["spleen.html"]
    for variant in VARIANTS:
        for mode in MODES:
            for metric in METRICS:
                text, _ = headline_cell(html, variant, mode, metric)
                assert text == expected_text(variant, mode, metric), (variant, mode, metric, text)
    for metric in METRICS:
        means = {(v, m): statistics.fmean(VALUES[(v, m)][metric]) for v in VARIANTS for m in MODES}
        best = (max if HIGHER[metric] else min)(means, key=means.get)
        for key in means:
            assert headline_cell(html, *key, metric)[1] == (key == best), (metric, key)
    # folds and cases: 2 folds x 2 cases pooled
    row = re.search(r'<tr data-variant="full" data-mode="auto">(.*?)</tr>', html, re.S)[1]
    assert re.findall(r"<td>(\d+)</td>", row)[:2] == ["2", "4"]
    # the index repeats the full variant's headline
    assert expected_text("full", "auto", "dice") in pages[0]["index.html"]


def test_ablation_deltas(pages):
    html = pages[0]["spleen.html"]
    for mode in MODES:
        table = re.search(rf'<table class="ablation" data-mode="{mode}">.*?</table>', html, re.S)[0]
        row = re.search(r'<tr data-variant="no_bd">.*?</tr>', table, re.S)[0]
        for metric in METRICS:
            delta = float(re.search(rf'<td data-metric="{metric}" data-delta="([^"]+)"', row)[1])
            want = statistics.fmean(VALUES[("no_bd", mode)][metric]) - statistics.fmean(VALUES[("full", mode)][metric])
            assert delta == pytest.approx(want, abs=1e-9)
            sign = "+" if want > 0 else "\u2212"
            assert f"{sign}{abs(want):.{DECIMALS[metric]}f}" in row


def test_paper_reference_only_for_pancreas(pages):
    html = pages[0]
    assert "0.7039" in html["pancreas.html"] and "0.4353" in html["pancreas.html"]
    assert "arXiv 2510.08967" in html["pancreas.html"] and "not reproduced" in html["pancreas.html"]
    assert "0.7039" not in html["spleen.html"] and 'class="reference"' not in html["spleen.html"]


def test_figures_embedded_and_no_external_resources(pages):
    html = pages[0]["spleen.html"]
    data = r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{200,}" alt="'
    assert len(re.findall(data + "box and strip plots", html)) == 1
    assert len(re.findall(data + "training curves of", html)) == len(VARIANTS) * len(FOLDS)
    assert len(re.findall(data + "(best|median|worst) case", html)) == len(VARIANTS) * 3
    for page in pages[0].values():
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
        assert not re.search(r"url\(|@import|<link\b", page, re.I)
        assert not re.search(r'<script[^>]+src=', page, re.I)
    assert len(html) < 3_000_000


def test_case_table_has_every_row(pages):
    html = pages[0]["spleen.html"]
    table = re.search(r'<table class="sortable" id="case-table">.*?</table>', html, re.S)[0]
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.S)[1]
    assert body.count("<tr>") == len(VARIANTS) * len(FOLDS) * 2 * len(MODES)
    assert table.count('data-type="num"') >= len(METRICS)


def test_cost_and_provenance(pages):
    html, _, root = pages
    page = html["spleen.html"]
    assert "5,000" in page and "1,000 / 1,000" in page and "0 / 4,000" in page  # totals, per module
    assert "not tracked by DVC (dvc.lock absent)" in page
    assert "<code>unknown</code>" in page  # tmp_path is no git repository
    assert "merged config (YAML)" in page and "<details>" in page
    for name in ("sam2-3dmed", "torch", "nibabel", "numpy"):
        assert name in page


def test_missing_predictions_give_a_message(tmp_path):
    html, _ = render(tmp_path, predictions=False)
    page = html["spleen.html"]
    assert "predictions were not saved" in page
    assert not re.search(r'alt="(best|median|worst) case', page)


def test_malformed_metrics_names_the_file(tmp_path):
    cfg_path = build_tree(tmp_path)
    bad = tmp_path / "results/demo/runs/spleen/no_bd/fold1/eval/val/metrics.csv"
    bad.write_text(bad.read_text(encoding="utf-8").replace("0.7165", "oops", 1))
    with pytest.raises(InputFileError) as err:
        build_report(load_config(cfg_path), cfg_path, tmp_path / "reports",
                     runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg and "'oops'" in msg
    bad.write_text("case_id,mode\nx,auto\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="missing column"):
        build_report(load_config(cfg_path), cfg_path, tmp_path / "reports",
                     runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    assert not (tmp_path / "reports" / "spleen.html").exists()


def test_no_runs_names_the_folder(tmp_path):
    cfg_path = build_tree(tmp_path)
    with pytest.raises(UserError, match="no run folders found") as err:
        build_report(load_config(cfg_path), cfg_path, tmp_path / "reports", targets=["pancreas"],
                     runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    assert str(tmp_path / "results/demo/runs/pancreas") in str(err.value)


def test_provenance_helpers(tmp_path):
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"demo": {
        "cmd": "snakemake", "outs": [{"path": "data/demo", "hash": "md5", "md5": "abc123.dir", "nfiles": 3}]}}}))
    d = dvc_hashes(tmp_path)
    assert d["tracked"] and d["outs"][0]["path"] == "data/demo" and d["outs"][0]["md5"] == "abc123.dir"


def test_cli(tmp_path):
    cfg_path = build_tree(tmp_path)
    proc = run_cli("report", "--config", cfg_path, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ok wrote 2 pages -> results/demo/reports" in proc.stderr
    assert (tmp_path / "results/demo/reports/spleen.html").is_file()
    assert (tmp_path / "results/demo/reports/index.html").is_file()
    bad = tmp_path / "results/demo/runs/spleen/full/fold0/eval/val/metrics.csv"
    bad.write_text("not,a\n\"broken", encoding="utf-8")
    line = one_line_error(run_cli("report", "--config", cfg_path, "--out", tmp_path / "r2", cwd=tmp_path, timeout=300))
    assert "metrics.csv" in line and str(bad.relative_to(tmp_path)) in line


def test_qualitative_orientation_is_radiological(tmp_path):
    """An organ on the patient's right (low index of an LPS file) is drawn on the screen's left."""
    from sam2_3dmed.report import figures

    shape = (20, 16, 6)
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 10:14, 2:4] = 1  # LPS: low i = patient's right, high j = posterior
    for name, arr in (("img", lab.astype(np.float32) * 100), ("lab", lab), ("pred", lab)):
        _save(tmp_path / f"{name}.nii.gz", arr)
    cv = figures.case_volumes(*(figures.load_canonical(tmp_path / f"{n}.nii.gz") for n in ("img", "lab", "pred")),
                              labels=[1])
    assert cv.spacing == pytest.approx((1.5, 1.5, 3.0))
    axial = figures._display(cv.gt[:, :, 2])  # rows top = anterior, columns left = patient's right
    rows, cols = np.nonzero(axial)
    assert cols.max() < axial.shape[1] / 2  # patient's right is on the left of the screen
    assert rows.min() >= axial.shape[0] / 2  # posterior organ is in the lower half
    assert figures.case_figure(cv, (-100, 200), "t").startswith("data:image/png;base64,")


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR", "SLA"])
def test_lazy_canonical_volume_matches_nibabel(tmp_path, axcodes):
    """Blocks read through the proxy equal nibabel's reoriented, fully loaded array."""
    import nibabel as nib

    from sam2_3dmed.report import figures

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, (9, 7, 5)).astype(np.int16)
    ornt = nib.orientations.axcodes2ornt(axcodes)
    aff = np.diag([0.8, 0.7, 2.5, 1.0]) @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "v.nii.gz"))
    ref_img = nib.as_closest_canonical(nib.load(str(tmp_path / "v.nii.gz")))
    ref = ref_img.get_fdata()
    vol, affine = figures.load_canonical(tmp_path / "v.nii.gz")
    assert vol.shape == ref.shape and np.allclose(affine, ref_img.affine)
    assert np.array_equal(np.asarray(vol), ref)
    for idx in ((slice(None), slice(None), 2), (1, slice(None), slice(None)), (slice(2, 5), 3, slice(1, 4))):
        assert np.array_equal(vol[idx], ref[idx]), idx
    sub = vol.crop((slice(1, 6), slice(2, 7), slice(0, 4)))
    assert np.array_equal(sub[:, 1, :], ref[1:6, 2:7, 0:4][:, 1, :])


@pytest.mark.parametrize("reduced", [True, False], ids=["small budget", "default budget"])
def test_an_nnunet_variant_says_what_it_is_and_a_small_budget_is_flagged(tmp_path, reduced):
    """nnU-Net runs (train_summary arch nnunet) get their trainer, configuration, nnU-Net's
    patch and batch in the headline row; a reduced budget is SMALL BUDGET there, in a
    banner on both pages, and the heads section says nnU-Net has no such heads."""
    cfg_path = build_tree(tmp_path)
    budget = {"epochs": 2, "iterations_per_epoch": 3, "val_iterations_per_epoch": 1} if reduced else \
        {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}
    for fold in FOLDS:
        ts = tmp_path / "results/demo/runs/spleen/no_bd" / f"fold{fold}" / "train_summary.json"
        data = json.loads(ts.read_text())
        data.update(arch="nnunet", budget_reduced=reduced, nnunet={
            "nnunetv2": "2.8.1", "trainer": "nnUNetTrainer", "configuration": "3d_fullres",
            "patch_size": [80, 160, 160], "batch_size": 2, "budget": budget,
            "trainer_defaults": {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}})
        ts.write_text(json.dumps(data))
    out = tmp_path / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=tmp_path / "results/demo/runs", cwd=tmp_path)
    page, index = (out / "spleen.html").read_text(), (out / "index.html").read_text()
    row = page[page.index('<tr data-variant="no_bd" data-mode="auto">'):]
    row = row[:row.index("</tr>")]
    assert "nnU-Net v2.8.1 3d_fullres, nnUNetTrainer, nnU-Net&#39;s own plans (patch 80x160x160, batch 2)" in row
    assert "nnU-Net, which has no SRPP or BD heads" in page
    full_row = page[page.index('<tr data-variant="full" data-mode="auto">'):]
    assert "variant-note" not in full_row[:full_row.index("</tr>")]
    if reduced:
        assert "SMALL BUDGET: 2 epochs x 3 iterations instead of the trainer&#39;s 1000 x 250" in row
        assert 'budget-banner" data-variant="no_bd"' in page and 'budget-banner" data-variant="no_bd"' in index
    else:
        assert "the trainer&#39;s default budget" in row and "SMALL BUDGET" not in page + index
