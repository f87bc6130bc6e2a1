"""Boundary analysis: error voxels by distance to the ground-truth surface and percentiles of
the pooled surface distances (``evaluate.metrics.boundary_profile``), and the report's
*Boundary* section.

The metric is checked against an independent textbook computation over the whole array
(``distance_transform_edt(~surface(gt), sampling=spacing)``, float32 comparisons at the
band edges, numpy's linear percentiles of the pooled EDT surface distances); the report
against numbers recomputed here from the fixture's ``boundary_columns``.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sam2_3dmed.config import load_config
from sam2_3dmed.errors import InputFileError
from sam2_3dmed.evaluate import metrics as M
from sam2_3dmed.evaluate.metrics import KEYS, _metrics, boundary_keys, boundary_profile, compute_metrics
from sam2_3dmed.report import build_report
from test_report import BANDS, CASES, FOLDS, MODES, PERCENTILES, boundary_columns, build_tree

SPACING = (0.8, 0.7, 2.5)
PCTS = (50, 75, 90, 95, 99, 100)
DEFAULT_KEYS = ["err_mm_0_1", "err_mm_1_3", "err_mm_3_inf"]
PCT_KEYS = ["sd_p50", "sd_p75", "sd_p90", "sd_p95", "sd_p99", "sd_p100"]


# --------------------------------------------------------------------------- textbook
def _tb_surface(m):
    return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)


def textbook(pred, gt, sp, edges=(1.0, 3.0), qs=PCTS, keys=DEFAULT_KEYS, pct_keys=PCT_KEYS) -> dict:
    """Straight from the definitions, over the whole array."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    sp = np.asarray(sp, dtype=np.float64)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, sp)))
    e32 = [np.float32(e) for e in sorted(edges)]
    if not gt.any():
        counts = [0] * len(e32) + [int(pred.sum())]
    else:
        d = ndimage.distance_transform_edt(~_tb_surface(gt), sampling=sp)[pred ^ gt].astype(np.float32)
        lows, highs = [None, *e32], [*e32, None]
        counts = []
        for lo, hi in zip(lows, highs):
            sel = np.ones(d.shape, bool)
            if lo is not None:
                sel &= d > lo
            if hi is not None:
                sel &= d <= hi
            counts.append(int(sel.sum()))
    if not pred.any() and not gt.any():
        pcts = [0.0] * len(qs)
    elif not pred.any() or not gt.any():
        pcts = [diag] * len(qs)
    else:
        s_p, s_g = _tb_surface(pred), _tb_surface(gt)
        pooled = np.concatenate([ndimage.distance_transform_edt(~s_g, sampling=sp)[s_p],
                                 ndimage.distance_transform_edt(~s_p, sampling=sp)[s_g]])
        pcts = [float(v) for v in np.percentile(pooled, list(qs))]
    return {**dict(zip(keys, counts)), **dict(zip(pct_keys, pcts))}


def _field(rng, shape, sigma):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / f.std()


def blob_pair(seed, shape=(40, 44, 20)):
    rng = np.random.default_rng(seed)
    f = _field(rng, shape, (4, 4, 2))
    return (f + 0.6 * _field(rng, shape, (3, 3, 1.5))) > 0.5, f > 0.5


def ellipsoid(shape, centre, radii):
    x, y, z = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((a - c) / r) ** 2 for a, c, r in zip((x, y, z), centre, radii)) <= 1


def stray_pair(shape=(64, 72, 40)):
    gt = ellipsoid(shape, (12, 14, 8), (8, 9, 5))
    pred = ellipsoid(shape, (13, 13, 8), (9, 8, 5))
    pred[-1, -1, -1] = True
    pred[-4:-2, -6:-3, -3:] = True
    gt[-1, 0, -1] = True  # a stray ground-truth voxel too: its own surface
    return pred, gt


def _check(pred, gt, sp, **kw):
    edges = kw.pop("edges", (1.0, 3.0))
    ours = boundary_profile(pred, gt, sp, bands_mm=edges, percentiles=kw.get("qs", PCTS))
    want = textbook(pred, gt, sp, edges=edges, **kw)
    assert ours == want
    assert all(math.isfinite(v) for v in ours.values())
    bands = [k for k in ours if k.startswith("err_mm_")]
    assert all(type(ours[k]) is int for k in bands)
    assert sum(ours[k] for k in bands) == int(np.count_nonzero(pred ^ gt))
    assert _metrics(pred, gt, tuple(sp), 1.0, reference=True, edges=tuple(sorted(edges)),
                    qs=tuple(float(q) for q in kw.get("qs", PCTS))) == compute_metrics(
        pred, gt, sp, 1.0, bands_mm=edges, percentiles=kw.get("qs", PCTS))
    return ours


# --------------------------------------------------------------------------- metric
@pytest.mark.parametrize("seed", range(4))
def test_random_blobs_match_textbook(seed):
    pred, gt = blob_pair(seed)
    out = _check(pred, gt, SPACING)
    assert out["err_mm_0_1"] > 0 and out["err_mm_1_3"] > 0


def test_ellipsoids_anisotropic_and_border():
    shape = (30, 34, 16)
    gt = ellipsoid(shape, (15, 17, 8), (10, 12, 5))
    pred = ellipsoid(shape, (17, 15, 9), (11, 10, 6))
    _check(pred, gt, (0.6, 0.9, 2.0))
    # masks cut by the array border on every side (border voxels are surface)
    gt_b = ellipsoid(shape, (2, 30, 1), (10, 12, 6))
    pred_b = ellipsoid(shape, (0, 33, 0), (17, 9, 10))
    out = _check(pred_b, gt_b, (0.6, 0.9, 2.0))
    assert out["err_mm_3_inf"] > 0
    full = np.ones(shape, bool)  # the whole array: every FN voxel is measured to the border surface
    _check(full, gt, (0.6, 0.9, 2.0))
    _check(gt, full, (0.6, 0.9, 2.0))


def test_far_stray_voxels_match_textbook():
    pred, gt = stray_pair()
    out = _check(pred, gt, (0.8, 0.7, 2.5))
    assert out["sd_p100"] > 40  # the stray voxels are scored
    assert out["err_mm_3_inf"] >= 1 + 2 * 3 * 3  # pred's strays
    # gt's stray voxel is a false negative on gt's own surface (distance 0): in the first band
    hit = pred.copy()
    hit[-1, 0, -1] = True
    assert out["err_mm_0_1"] == boundary_profile(hit, gt, (0.8, 0.7, 2.5))["err_mm_0_1"] + 1


@pytest.mark.parametrize("edges", [(0.3,), (0.2, 0.3), (0.3, 0.7), (0.1, 0.2, 0.3, 0.4, 0.5)])
def test_ties_at_the_edges_compare_in_float32(edges):
    """At 0.1 mm spacing, 3 voxels are 0.30000000000000004 mm in float64: within 0.3 in float32."""
    shape = (20, 22, 18)
    gt = ellipsoid(shape, (10, 11, 9), (6, 7, 5))
    pred = ellipsoid(shape, (11, 10, 9), (8, 6, 6))
    sp = (0.1, 0.1, 0.1)
    keys = boundary_keys(edges, PCTS)[0]
    out = _check(pred, gt, sp, edges=edges, keys=keys)
    d = ndimage.distance_transform_edt(~_tb_surface(gt), sampling=sp)[pred ^ gt]
    assert np.count_nonzero(d <= 0.3) < np.count_nonzero(d.astype(np.float32) <= np.float32(0.3))  # the tie matters
    tied = np.count_nonzero(d.astype(np.float32) <= np.float32(0.3))
    i = sorted(edges).index(0.3)
    assert sum(out[k] for k in keys[:i + 1]) == tied


def test_other_bands_and_key_names():
    assert boundary_keys() == (DEFAULT_KEYS, PCT_KEYS)
    assert boundary_keys((1.5, 0.5), (99.5, 50)) == (["err_mm_0_0p5", "err_mm_0p5_1p5", "err_mm_1p5_inf"],
                                                      ["sd_p99p5", "sd_p50"])
    assert boundary_keys((2,), ()) == (["err_mm_0_2", "err_mm_2_inf"], [])
    pred, gt = blob_pair(7)
    keys, pk = boundary_keys((1.5, 0.5, 4), (99.5, 0, 12.5))
    _check(pred, gt, SPACING, edges=(1.5, 0.5, 4), qs=(99.5, 0, 12.5), keys=keys, pct_keys=pk)
    out = boundary_profile(pred, gt, SPACING, bands_mm=(), percentiles=())
    assert out == {"err_mm_0_inf": int(np.count_nonzero(pred ^ gt))}


def test_empty_masks():
    shape, sp = (12, 14, 10), (0.8, 0.7, 2.5)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp)))
    empty = np.zeros(shape, bool)
    blob = ellipsoid(shape, (6, 7, 5), (4, 5, 3))
    assert boundary_profile(empty, empty, sp) == {**dict.fromkeys(DEFAULT_KEYS, 0), **dict.fromkeys(PCT_KEYS, 0.0)}
    fp = boundary_profile(blob, empty, sp)  # every FP voxel is in the last band
    assert fp == {"err_mm_0_1": 0, "err_mm_1_3": 0, "err_mm_3_inf": int(blob.sum()), **dict.fromkeys(PCT_KEYS, diag)}
    fn = _check(empty, blob, sp)  # FN voxels binned by their distance to the gt surface
    assert fn["sd_p50"] == diag and fn["err_mm_0_1"] > 0 and fn["err_mm_1_3"] > 0
    assert sum(fn[k] for k in DEFAULT_KEYS) == int(blob.sum())
    for p, g in ((empty, empty), (blob, empty), (empty, blob)):
        both = compute_metrics(p, g, sp, 1.0, bands_mm=(1, 3), percentiles=PCTS)
        assert {k: both[k] for k in KEYS} == compute_metrics(p, g, sp, 1.0)
        assert {k: v for k, v in both.items() if k not in KEYS} == boundary_profile(p, g, sp)
        assert _metrics(p, g, sp, 1.0, reference=True, edges=(1.0, 3.0), qs=tuple(map(float, PCTS))) == both
    one = np.zeros(shape, bool)
    one[3, 4, 5] = True  # a single voxel: it is its own surface
    _check(one, blob, sp)
    _check(blob, one, sp)


@pytest.mark.parametrize("seed", range(3))
def test_compute_metrics_old_keys_unchanged(seed):
    pred, gt = blob_pair(seed) if seed < 2 else stray_pair()
    for tol in (1.0, 2.0):
        old = compute_metrics(pred, gt, SPACING, tol)
        new = compute_metrics(pred, gt, SPACING, tol, bands_mm=[3, 1], percentiles=PCTS)
        assert list(new)[:len(old)] == list(old) and {k: new[k] for k in old} == old  # bit for bit
        assert {k: v for k, v in new.items() if k not in old} == boundary_profile(pred, gt, SPACING)
        only_bands = compute_metrics(pred, gt, SPACING, tol, bands_mm=(1, 3))
        assert set(only_bands) == set(old) | set(DEFAULT_KEYS)
        only_pcts = compute_metrics(pred, gt, SPACING, tol, percentiles=(95,))
        assert set(only_pcts) == set(old) | {"sd_p95"} and only_pcts["sd_p95"] == new["sd_p95"]


def test_slab_and_batch_seams(monkeypatch):
    """Tiny slabs and query batches split masks, error lists and queries: same numbers."""
    pred, gt = stray_pair((40, 36, 24))
    want = boundary_profile(pred, gt, SPACING)
    monkeypatch.setattr(M, "_QUERY_BATCH", 37)
    monkeypatch.setattr(M, "_SLAB_VOXELS", 500)
    assert boundary_profile(pred, gt, SPACING) == want == textbook(pred, gt, SPACING)


def test_bad_arguments():
    pred, gt = blob_pair(0)
    for bands in ([0], [-1], [float("nan")], [float("inf")], [1, 1.0], ["x"], None):
        with pytest.raises(ValueError):
            boundary_profile(pred, gt, SPACING, bands_mm=bands)
    for q in ([101], [-1], [float("nan")], [50, 50.0], 5):
        with pytest.raises(ValueError):
            boundary_profile(pred, gt, SPACING, percentiles=q)
    with pytest.raises(ValueError):
        compute_metrics(pred, gt, SPACING, 1.0, bands_mm=[0])
    with pytest.raises(ValueError):
        boundary_profile(pred[0], gt[0], SPACING[:2])


def test_msd_size_memory_and_time():
    """512 x 512 x 200 masks with far stray voxels: memory a fraction of one mask, a few seconds."""
    shape = (512, 512, 200)
    box = (slice(180, 340), slice(160, 350), slice(45, 155))
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    sub = tuple(slice(0, b.stop - b.start) for b in box)
    gt[box] = ellipsoid(tuple(b.stop - b.start for b in box), (76, 96, 55), (70, 90, 50))[sub]
    pred[box] = ellipsoid(tuple(b.stop - b.start for b in box), (79, 94, 56), (72, 88, 52))[sub]
    no_stray = boundary_profile(pred, gt, (0.8, 0.8, 1.5))
    pred[-1, -1, -1] = pred[0, 0, 0] = True
    sp = (0.8, 0.8, 1.5)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        t = time.perf_counter()
        out = compute_metrics(pred, gt, sp, 2.0, bands_mm=(1, 3), percentiles=PCTS)
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < pred.nbytes / 2, f"peak {peak / 2**20:.1f} MB for a {pred.nbytes / 2**20:.1f} MB mask"
    assert seconds < 60, seconds  # ~2 s on one core; generous for a loaded machine
    assert out["err_mm_3_inf"] == no_stray["err_mm_3_inf"] + 2
    assert out["err_mm_0_1"] == no_stray["err_mm_0_1"] and out["err_mm_1_3"] == no_stray["err_mm_1_3"]
    assert sum(out[k] for k in DEFAULT_KEYS) == int(np.count_nonzero(pred ^ gt))
    assert out["sd_p100"] > 250 and out["sd_p50"] == no_stray["sd_p50"]


# --------------------------------------------------------------------------- report
def _render(root: Path, **kw) -> str:
    cfg_path = build_tree(root, **kw)
    return _report(root, cfg_path)


def _report(root: Path, cfg_path: Path) -> str:
    out = root / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=root / "results" / "demo" / "runs", cwd=root)
    return (out / "spleen.html").read_text(encoding="utf-8")


def section(page: str) -> str:
    return re.search(r'<h2 id="boundary">.*?(?=<h2 )', page, re.S)[0]


def _metrics_csvs(root: Path):
    return sorted((root / "results/demo/runs/spleen").glob("*/fold*/eval/val/metrics.csv"))


def _rewrite(path: Path, fn) -> None:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [fn(dict(r)) for r in rows]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _case_index(fold: int) -> list[int]:
    return [int(c.split("_")[1]) for c in CASES[fold]]


def expected(variant: str, mode: str, folds=FOLDS) -> dict:
    """Per column: the mean over the fixture's cases of that variant and mode."""
    idx = [i for f in folds for i in _case_index(f)]
    rows = [boundary_columns(variant, mode, i) for i in idx]
    return {k: statistics.fmean(r[k] for r in rows) for k in (*BANDS, *PERCENTILES)}, len(idx)


def _sign(x: float, d: int) -> str:
    x = 0.0 if abs(x) < 0.5 * 10 ** -d else x
    return f"{x:+.{d}f}".replace("-", "\u2212")


def _cell(row: str, key: str) -> tuple[dict, str]:
    m = re.search(rf'<td data-col="{key}"([^>]*)>(.*?)</td>', row, re.S)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m[1]))
    return attrs, m[2]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    return section(_render(tmp_path_factory.mktemp("boundary"), predictions=False))


def test_section_numbers(page):
    assert 'id="no-boundary"' not in page and 'id="boundary-needs-no-bd"' not in page
    for mode in MODES:
        table = re.search(rf'<table class="boundary" data-mode="{mode}">.*?</table>', page, re.S)[0]
        head = re.search(r"<thead>.*?</thead>", table, re.S)[0]
        assert [re.sub(r"<[^>]+>", "", h) for h in re.findall(r'<th data-col="[^"]+">(.*?)</th>', head)] == [
            "errors \u2264 1 mm (mL)", "errors 1\u20133 mm (mL)", "errors &gt; 3 mm (mL)",
            "p50 (mm)", "p75 (mm)", "p90 (mm)", "p95 (mm)", "p99 (mm)", "p100 = max (mm)"]
        ref, _ = expected("full", mode)
        for variant in ("full", "no_bd"):
            row = re.search(rf'<tr data-variant="{variant}">.*?</tr>', table, re.S)[0]
            want, n = expected(variant, mode)
            assert re.findall(r"<td>(\d+)</td>", row)[:2] == ["2", str(n)]
            total = sum(want[k] for k in BANDS)
            for k in (*BANDS, *PERCENTILES):
                attrs, text = _cell(row, k)
                d = 3 if k in BANDS else 2
                assert float(attrs["mean"]) == pytest.approx(want[k], abs=1e-12)
                assert text.startswith(f"{want[k]:.{d}f}"), (k, text)
                if k in BANDS:
                    share = 100 * want[k] / total
                    assert float(attrs["share"]) == pytest.approx(share, abs=1e-9)
                    assert f'<span class="med share">{share:.1f}% of errors</span>' in text
                else:
                    assert "share" not in attrs
                if variant == "full":
                    assert "delta" not in attrs and "&Delta;" not in text
                else:
                    delta = want[k] - ref[k]
                    assert float(attrs["delta"]) == pytest.approx(delta, abs=1e-12)
                    cls = "" if abs(delta) <= 10 ** -(d + 1) else (" worse" if delta > 0 else " better")
                    assert f'<span class="delta{cls}">&Delta; {_sign(delta, d)}</span>' in text, (k, text)


def test_full_vs_no_bd_sentence(page):
    for mode in MODES:
        p = re.search(rf'<p class="boundary-answer" data-mode="{mode}" data-pairs="(\d+)">(.*?)</p>', page, re.S)
        assert p[1] == "4"
        text = p[2]
        pairs = [i for f in FOLDS for i in _case_index(f)]
        f = {k: [boundary_columns("full", mode, i)[k] for i in pairs] for k in BANDS}
        nb = {k: [boundary_columns("no_bd", mode, i)[k] for i in pairs] for k in BANDS}
        mf, mn = statistics.fmean(f["err_mm_0_1"]), statistics.fmean(nb["err_mm_0_1"])
        assert mf < mn and "BD helps at the boundary here" in text
        assert f"mode {mode}, 4 paired cases" in text
        lower = sum(a < b for a, b in zip(f["err_mm_0_1"], nb["err_mm_0_1"]))
        assert (f"within 1 mm of the surface, full errs on {mf:.3f} mL per case and no_bd on {mn:.3f} mL "
                f"(difference full \u2212 no_bd {_sign(mf - mn, 3)} mL; full lower in {lower} of 4)") in text
        for k, phrase in (("err_mm_1_3", "between 1 and 3 mm"), ("err_mm_3_inf", "beyond 3 mm")):
            a, b = statistics.fmean(f[k]), statistics.fmean(nb[k])
            eq = sum(x == y for x, y in zip(f[k], nb[k]))
            lo = sum(x < y for x, y in zip(f[k], nb[k]))
            assert (f"{phrase}: {a:.3f} vs {b:.3f} mL (difference {_sign(a - b, 3)} mL; full lower in {lo} of 4"
                    + (f", equal in {eq}" if eq else "") + ")") in text, text


def test_no_bd_missing_needs_a_run(tmp_path):
    sec = section(_render(tmp_path, variants=("full",), predictions=False))
    note = re.search(r'<div class="note" id="boundary-needs-no-bd">(.*?)</div>', sec, re.S)[1]
    assert "no_bd" in note and "run.variants: [full, no_bd]" in note
    assert "boundary-answer" not in sec
    table = re.search(r'<table class="boundary" data-mode="auto">.*?</table>', sec, re.S)[0]
    assert 'data-variant="full"' in table and 'data-variant="no_bd"' not in table and "data-delta" not in table
    want, _ = expected("full", "auto")
    row = re.search(r'<tr data-variant="full">.*?</tr>', table, re.S)[0]
    assert float(_cell(row, "sd_p95")[0]["mean"]) == pytest.approx(want["sd_p95"])


def test_older_rows_left_out_and_paired(tmp_path):
    cfg_path = build_tree(tmp_path, predictions=False)
    old = tmp_path / "results/demo/runs/spleen/no_bd/fold1/eval/val/metrics.csv"
    _rewrite(old, lambda r: {k: v for k, v in r.items() if k not in (*BANDS, *PERCENTILES)})  # an older evaluation
    blank = tmp_path / "results/demo/runs/spleen/full/fold0/eval/val/metrics.csv"
    _rewrite(blank, lambda r: {**r, **({k: "" for k in (*BANDS, *PERCENTILES)} if r["case_id"] == "case_0" else {})})
    sec = section(_report(tmp_path, cfg_path))
    # no_bd fold 1 (2 cases x 2 modes) and full's case_0 (2 modes): 6 rows without the columns
    assert "6 case rows from older evaluations (no boundary columns) left out" in sec
    for mode in MODES:
        table = re.search(rf'<table class="boundary" data-mode="{mode}">.*?</table>', sec, re.S)[0]
        row = re.search(r'<tr data-variant="no_bd">.*?</tr>', table, re.S)[0]
        want, n = expected("no_bd", mode, folds=(0,))
        assert re.findall(r"<td>(\d+)</td>", row)[:2] == ["1", "2"]
        assert float(_cell(row, "err_mm_0_1")[0]["mean"]) == pytest.approx(want["err_mm_0_1"])
        assert "other folds than full: 0" in row
        p = re.search(rf'<p class="boundary-answer" data-mode="{mode}" data-pairs="(\d+)">(.*?)</p>', sec, re.S)
        assert p[1] == "1" and "1 paired case:" in p[2]  # only case_1 (fold 0) has both
        a, b = boundary_columns("full", mode, 1)["err_mm_0_1"], boundary_columns("no_bd", mode, 1)["err_mm_0_1"]
        assert f"full errs on {a:.3f} mL per case and no_bd on {b:.3f} mL" in p[2]


def test_older_evaluations_only_give_a_note(tmp_path):
    cfg_path = build_tree(tmp_path, predictions=False)
    for path in _metrics_csvs(tmp_path):
        _rewrite(path, lambda r: {k: v for k, v in r.items() if k not in (*BANDS, *PERCENTILES)})
    sec = section(_report(tmp_path, cfg_path))
    assert 'id="no-boundary"' in sec and "older evaluations" in sec and "<table" not in sec


def test_bands_are_read_from_the_columns(tmp_path):
    """Other evaluate.boundary_bands_mm / surface_percentiles: other columns, other headers."""
    cfg_path = build_tree(tmp_path, predictions=False)
    ren = {"err_mm_0_1": "err_mm_0_1p5", "err_mm_1_3": "err_mm_1p5_inf", "sd_p50": "sd_p99p5"}

    def fn(r):
        r = {ren.get(k, k): v for k, v in r.items() if k != "err_mm_3_inf"}
        return {k: v for k, v in r.items() if not (k.startswith("sd_p") and k != "sd_p99p5")}

    for path in _metrics_csvs(tmp_path):
        _rewrite(path, fn)
    sec = section(_report(tmp_path, cfg_path))
    table = re.search(r'<table class="boundary" data-mode="auto">.*?</table>', sec, re.S)[0]
    heads = re.findall(r'<th data-col="([^"]+)">(.*?)</th>', table)
    assert heads == [("err_mm_0_1p5", "errors \u2264 1.5 mm (mL)"), ("err_mm_1p5_inf", "errors &gt; 1.5 mm (mL)"),
                     ("sd_p99p5", "p99.5 (mm)")]
    assert "within 1.5 mm of the surface, full errs on" in sec and "beyond 1.5 mm:" in sec


def test_malformed_boundary_value_names_the_file(tmp_path):
    cfg_path = build_tree(tmp_path, predictions=False)
    bad = tmp_path / "results/demo/runs/spleen/no_bd/fold0/eval/val/metrics.csv"
    _rewrite(bad, lambda r: {**r, "err_mm_1_3": "oops"})
    with pytest.raises(InputFileError) as err:
        _report(tmp_path, cfg_path)
    assert str(bad) in str(err.value) and "'err_mm_1_3'" in str(err.value)
