"""``sam2-3dmed report`` with the folds' ensemble on the held-out test split.

The fixture tree of ``test_report`` (full and no_bd, folds 0 and 1, evaluated per fold on
their validation cases in auto and prompted mode) gets, for ``full``, what rule
``evaluate_ensemble`` writes: ``RUNS/spleen/full/ensemble/eval/test/metrics.csv`` and
``summary.json`` with an ``ensemble`` block (2 folds), three test cases, and the k-prompt
mode ``prompted_k3`` beside auto and prompted. The page must keep the ensemble's numbers
apart from the per-fold ones and say which is which, and show the accuracy-vs-prompts
table; older trees (no ensemble folder, a summary without the block, a folder without
metrics.csv) must still render. Expected numbers are computed here from the fixture values.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.report import build_report
from test_report import VALUES, _write_csv, build_tree

TEST_CASES = ["case_7", "case_8", "case_9"]
ENS_MODES = {"auto": 0, "prompted": 1, "prompted_k3": 3}
# per mode, one value per test case; none of them equals a per-fold value (so a leak shows)
ENS = {
    "auto": {"dice": [0.9012, 0.8874, 0.9131], "iou": [0.8202, 0.7978, 0.8401], "hd95": [2.1411, 2.6072, 1.9313],
             "nsd": [0.8123, 0.7941, 0.8356], "assd": [0.6121, 0.7043, 0.5517]},
    "prompted": {"dice": [0.9213, 0.9077, 0.9302], "iou": [0.8541, 0.8309, 0.8695], "hd95": [1.8122, 2.1433, 1.6251],
                 "nsd": [0.8522, 0.8318, 0.8711], "assd": [0.5021, 0.5732, 0.4612]},
    "prompted_k3": {"dice": [0.9411, 0.9362, 0.9488], "iou": [0.8887, 0.8801, 0.9027],
                    "hd95": [1.4121, 1.5533, 1.3052], "nsd": [0.8913, 0.8842, 0.9104],
                    "assd": [0.4013, 0.4322, 0.3711]},
}
DECIMALS = {"dice": 3, "iou": 3, "nsd": 3, "hd95": 2, "assd": 2}
RUNS = Path("results/demo/runs")


def write_ensemble(root: Path, variant: str = "full", block: bool = True, n_prompts: bool = True) -> Path:
    ev = root / RUNS / "spleen" / variant / "ensemble" / "eval" / "test"
    rows = []
    for i, cid in enumerate(TEST_CASES):
        for mode, k in ENS_MODES.items():
            rows.append({"case_id": cid, "mode": mode, "prompt": "" if mode == "auto" else "box",
                         **({"n_prompts": k} if n_prompts else {}),
                         **{m: ENS[mode][m][i] for m in ENS[mode]}, "pred_voxels": 900, "gt_voxels": 1000,
                         "gt_volume_ml": 6.75, "seconds": 4.0, "slices": 12, "slices_per_s": 3.0,
                         "peak_mem_mb": 900.0, "feature_cache_mb": 3.0, "device": "cpu"})
    _write_csv(ev / "metrics.csv", list(rows[0]), rows)
    summary = {"target": "spleen", "variant": variant, "fold": None, "split": "test", "modes": list(ENS_MODES),
               "prompt": "box", "prompt_counts": [1, 3], "checkpoint_step": 20, "nsd_tolerance_mm": 1.0,
               "n_cases": 3, "n_cases_in_split": 3, "synthetic": True, "pretrained": False, "device": "cpu",
               "metrics": {}}
    if block:
        summary["ensemble"] = {"size": 2, "folds": [0, 1],
                               "checkpoints": [f"{RUNS}/spleen/{variant}/fold{k}/best.pt" for k in (0, 1)],
                               "steps": [20, 20], "variants": [variant, variant]}
    (ev / "summary.json").write_text(json.dumps(summary))
    return ev


def render(root: Path) -> dict:
    cfg_path = root / "config.yaml"
    build_report(load_config(cfg_path), cfg_path, root / "reports", runs_dir=root / RUNS, cwd=root)
    return {p.name: p.read_text(encoding="utf-8") for p in (root / "reports").glob("*.html")}


def mean_std(vals, d) -> str:
    return f"{statistics.fmean(vals):.{d}f} \u00b1 {statistics.pstdev(vals):.{d}f}"


def cell_text(row_html: str, metric: str) -> str:
    cell = re.search(rf'<td data-metric="{metric}"[^>]*>(.*?)</td>', row_html, re.S)[1]
    return re.sub(r'<span class="med">.*?</span>|<span class="best-mark".*?</span>|<[^>]+>', "", cell).strip()


def section(html: str, anchor: str) -> str:
    """The page from <h2 id=ANCHOR> to the next <h2>."""
    return re.search(rf'<h2 id="{anchor}">.*?(?=<h2 )', html, re.S)[0]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    build_tree(root, targets=("spleen",), predictions=False)
    write_ensemble(root)
    return render(root)


def test_ensemble_section_is_marked_and_has_its_own_numbers(pages):
    html = pages["spleen.html"]
    ens = section(html, "ensemble")
    marker = re.search(r'<p class="banner info ensemble-marker" data-variant="full">(.*?)</p>', ens, re.S)[1]
    text = re.sub(r"<[^>]+>", "", marker)
    assert "Ensemble of 2 folds (folds 0, 1)" in text and "test split" in text and "held out" in text
    assert "3 cases" in text and "not per-fold" in text
    table = re.search(r'<table class="ensemble-table" data-variant="full" data-size="2" data-split="test">.*?</table>',
                      ens, re.S)[0]
    for mode, k in ENS_MODES.items():
        row = re.search(rf'<tr data-ensemble-variant="full" data-mode="{mode}">.*?</tr>', table, re.S)[0]
        assert re.findall(r"<td>(\d+)</td>", row)[:2] == [str(k), "3"]  # prompts, cases
        for m in ENS[mode]:
            assert cell_text(row, m) == mean_std(ENS[mode][m], DECIMALS[m]), (mode, m)
    assert "fold0/best.pt" in ens and "fold1/best.pt" in ens
    assert 'data-variant="no_bd"' not in ens  # no_bd has no ensemble evaluation
    assert 'id="no-ensemble"' not in html


def test_per_fold_headline_is_marked_and_not_mixed_with_the_ensemble(pages):
    html = pages["spleen.html"]
    head = section(html, "headline")
    assert "per fold (single model per fold, val split)" in head and 'id="per-fold-marker"' in head
    table = re.search(r'<table id="headline-table">.*?</table>', head, re.S)[0]
    assert "prompted_k3" not in table  # the k-prompt mode was scored by the ensemble only
    row = re.search(r'<tr data-variant="full" data-mode="auto">.*?</tr>', table, re.S)[0]
    assert cell_text(row, "dice") == mean_std(VALUES[("full", "auto")]["dice"], 3)  # the 4 validation cases only
    assert re.findall(r"<td>(\d+)</td>", row)[:2] == ["2", "4"]
    index = pages["index.html"]
    ens_index = re.search(r'<table id="index-ensemble-table">.*?</table>', index, re.S)[0]
    assert "ensemble of 2 folds (folds 0, 1), test split" in ens_index
    assert mean_std(ENS["auto"]["dice"], 3) in ens_index
    per_fold = re.search(r'<table id="index-table">.*?</table>', index, re.S)[0]
    assert mean_std(ENS["auto"]["dice"], 3) not in per_fold
    assert mean_std(VALUES[("full", "auto")]["dice"], 3) in per_fold


def test_prompts_table(pages):
    html = pages["spleen.html"]
    table = re.search(r'<table id="prompts-table">.*?</table>', html, re.S)[0]
    headers = re.findall(r"<th[^>]*>(.*?)</th>", table)
    assert [h for h in headers if "(mean)" in h][1:] == ["Dice (mean)", "NSD @ 1 mm (mean)", "HD95 (mm) (mean)"]
    for mode, k in ENS_MODES.items():
        row = re.search(rf'<tr data-source="ensemble" data-variant="full" data-mode="{mode}">.*?</tr>', table, re.S)[0]
        assert re.findall(r"<td>([^<]*)</td>", row)[:3] == [str(k), f"{k:.2f}", "3"]  # nominal, given, cases
        for m in ("dice", "nsd", "hd95"):
            assert cell_text(row, m) == f"{statistics.fmean(ENS[mode][m]):.{DECIMALS[m]}f}", (mode, m)
    # the per-fold rows are there too, labelled as such (auto and prompted: 0 and 1 prompt)
    row = re.search(r'<tr data-source="per fold" data-variant="no_bd" data-mode="prompted">.*?</tr>', table, re.S)[0]
    assert "single model per fold, val split" in row
    assert cell_text(row, "dice") == f"{statistics.fmean(VALUES[('no_bd', 'prompted')]['dice']):.3f}"
    modes = re.findall(r'data-source="ensemble" data-variant="full" data-mode="([^"]+)"', table)
    assert modes == ["auto", "prompted", "prompted_k3"]


def test_report_without_ensemble_still_renders(tmp_path):
    build_tree(tmp_path, targets=("spleen",), predictions=False)
    html = render(tmp_path)
    page = html["spleen.html"]
    assert 'id="no-ensemble"' in page and 'class="ensemble-table"' not in page
    assert 'id="no-prompt-counts"' in page and 'id="prompts-table"' not in page
    assert 'id="headline-table"' in page and 'id="index-ensemble-table"' not in html["index.html"]


def test_older_ensemble_evaluations_do_not_break_the_report(tmp_path):
    build_tree(tmp_path, targets=("spleen",), predictions=False)
    write_ensemble(tmp_path, "full", block=False, n_prompts=False)  # a summary from before the ensemble block
    (tmp_path / RUNS / "spleen/no_bd/ensemble/eval/test").mkdir(parents=True)  # an unfinished one
    page = render(tmp_path)["spleen.html"]
    ens = section(page, "ensemble")
    assert "size not recorded" in ens and 'data-size=""' in ens
    assert 'no \\"ensemble\\" block' in page or "no &#34;ensemble&#34; block" in page
    assert "no_bd/ensemble: not evaluated on the test split yet" in page
    table = re.search(r'<table id="prompts-table">.*?</table>', page, re.S)[0]
    row = re.search(r'<tr data-source="ensemble" data-variant="full" data-mode="prompted_k3">.*?</tr>', table, re.S)[0]
    assert re.findall(r"<td>([^<]*)</td>", row)[:3] == ["3", "n/a", "3"]  # no n_prompts column: given unknown
