"""Section *Viewer* of a target page: the embedded slice data, checked in Python.

The fixture tree of ``test_report.build_tree`` gets larger cases here (96x84x30 on an LPS
grid; case_2 stored with its slices top down), a ground-truth label value the target does
not count, a prediction per variant that differs from the other's, and a far false
positive in one case that widens its crop. The page's payload is decoded and compared
with a computation made here from nibabel's canonical arrays, independently of the
viewer's code: crop bounds (+- 25 mm), whole-factor downsampling to ``max_side`` (image
block mean, then the HU window to uint8; masks "any"), and the mask bits.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.report import build_report, viewer
from sam2_3dmed.report.collect import collect_target
from sam2_3dmed.report.render import _env
from test_report import AFFINE, CASES, FOLDS, MODES, VARIANTS, build_tree

BIG = (96, 84, 30)
FLIPPED = np.diag([-1.5, -1.5, -3.0, 1.0])  # LPI: canonical z runs against the stored axis
MAX_SIDE = 16
CASE_IDS = [c for f in FOLDS for c in CASES[f]]
FOLD_OF = {c: f for f in FOLDS for c in CASES[f]}


def _affine(cid: str) -> np.ndarray:
    return FLIPPED if cid == "case_2" else AFFINE


def _big_arrays(i: int):
    """(image, label, {variant: prediction}) of case i, in stored (LPS or LPI) index order."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in BIG], indexing="ij")
    cx, cy, cz = 40 + 3 * i, 44, 14
    organ = ((x - cx) / 10.0) ** 2 + ((y - cy) / 8.0) ** 2 + ((z - cz) / 5.0) ** 2 < 1
    label = organ.astype(np.uint8)
    label[5:8, 70:74, 3:5] = 2  # a label value spleen does not count (labels: [1])
    preds = {"full": (((x - cx - 2) / 10.0) ** 2 + ((y - cy) / 8.0) ** 2 + ((z - cz) / 5.0) ** 2 < 1),
             "no_bd": (((x - cx) / 9.0) ** 2 + ((y - cy) / 9.0) ** 2 + ((z - cz) / 4.0) ** 2 < 1)}
    if i == 3:
        preds["no_bd"] = preds["no_bd"].copy()
        preds["no_bd"][88:92, 4:7, 24:28] = True  # a far false positive: the crop must cover it
    image = np.full(BIG, -900.0, np.float32)
    image[6:-6, 6:-6, :] = 40.0
    image[organ] = 120.0
    image += np.random.default_rng(10 + i).normal(0, 25, BIG).astype(np.float32)
    return image, label, {v: p.astype(np.uint8) for v, p in preds.items()}


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _runs(root: Path) -> Path:
    return root / "results" / "demo" / "runs"


def big_tree(root: Path, predictions: bool = True) -> Path:
    cfg_path = build_tree(root, predictions=predictions)
    task = root / "raw" / "Task_spleen"
    for i, cid in enumerate(CASE_IDS):
        image, label, preds = _big_arrays(i)
        _save(task / "imagesTr" / f"{cid}.nii.gz", image, _affine(cid))
        _save(task / "labelsTr" / f"{cid}.nii.gz", label, _affine(cid))
        if predictions:
            for variant in VARIANTS:
                for mode in MODES:
                    _save(_runs(root) / "spleen" / variant / f"fold{FOLD_OF[cid]}" / "eval" / "val" / "predictions"
                          / f"{cid}_{mode}.nii.gz", preds[variant], _affine(cid))
    return cfg_path


def _cfg(cfg_path: Path, **viewer_cfg) -> dict:
    return load_config(cfg_path, overrides={"report": {"viewer": {"max_side": MAX_SIDE, **viewer_cfg}}})


def _context(root: Path, cfg: dict) -> dict:
    res = collect_target(_runs(root), "spleen", cfg["evaluate"]["split"], cfg["run"]["variants"])
    return viewer.context(cfg, res, cfg["targets"]["spleen"])


def _section(ctx: dict, cfg: dict) -> str:
    return _env().get_template("viewer.html.j2").render(viewer=ctx, hu_window=cfg["targets"]["spleen"]["hu_window"])


def payload(html: str) -> tuple[dict, dict[int, str]]:
    meta = json.loads(re.search(r'<script type="application/json" id="viewer-meta">(.*?)</script>', html, re.S)[1])
    data = {int(i): d for i, d in re.findall(
        r'<script type="application/octet-stream" id="viewer-data-(\d+)">([A-Za-z0-9+/=]*)</script>', html)}
    return meta, data


def _decode(text: str, shape):
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    n = int(np.prod(shape))
    assert raw.size == 2 * n
    # x fastest: index = (k * ny + j) * nx + i
    return raw[:n].reshape(shape[::-1]).transpose(2, 1, 0), raw[n:].reshape(shape[::-1]).transpose(2, 1, 0)


def expected(root: Path, cid: str, hu_window, labels, max_side: int, variants=VARIANTS) -> dict:
    """Crop, downsampling, windowing and bits computed from nibabel's canonical arrays."""
    def canon(path):
        img = nib.as_closest_canonical(nib.load(str(path)))
        return img.get_fdata(), np.array(img.header.get_zooms()[:3], float)

    task = root / "raw" / "Task_spleen"
    image, spacing = canon(task / "imagesTr" / f"{cid}.nii.gz")
    lab, _ = canon(task / "labelsTr" / f"{cid}.nii.gz")
    masks = [np.isin(np.rint(lab), labels)]
    for v in variants:
        p = _runs(root) / "spleen" / v / f"fold{FOLD_OF[cid]}" / "eval" / "val" / "predictions" / f"{cid}_auto.nii.gz"
        masks.append(canon(p)[0] > 0 if p.is_file() else np.zeros(image.shape, bool))
    union = np.logical_or.reduce(masks)
    lo, hi, f = [], [], []
    for ax in range(3):
        idx = np.nonzero(union.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        m = math.ceil(25.0 / spacing[ax])
        lo.append(max(0, idx[0] - m))
        hi.append(min(image.shape[ax], idx[-1] + m + 1))
        f.append(math.ceil((hi[ax] - lo[ax]) / max_side))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop, masks = image[sl], [m[sl] for m in masks]
    shape = tuple(math.ceil(n / k) for n, k in zip(crop.shape, f))
    img = np.zeros(shape, np.uint8)
    bits = np.zeros(shape, np.uint8)
    w0, w1 = hu_window
    for o in np.ndindex(*shape):
        block = tuple(slice(o[a] * f[a], (o[a] + 1) * f[a]) for a in range(3))
        img[o] = np.clip(round((crop[block].mean() - w0) * 255.0 / (w1 - w0)), 0, 255)
        bits[o] = sum((1 << b) for b, m in enumerate(masks) if m[block].any())
    return {"offset": lo, "crop_shape": [b - a for a, b in zip(lo, hi)], "factor": f, "shape": list(shape),
            "spacing": list(spacing * np.array(f)), "image": img, "bits": bits}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    cfg_path = big_tree(root)
    cfg = _cfg(cfg_path)
    out = root / "reports"
    build_report(cfg, cfg_path, out, runs_dir=_runs(root), cwd=root)
    return root, cfg, (out / "spleen.html").read_text(encoding="utf-8")


def test_payload_matches_an_independent_computation(page):
    root, cfg, html = page
    meta, data = payload(html)
    tcfg = cfg["targets"]["spleen"]
    assert [o["variant"] for o in meta["overlays"]] == list(VARIANTS) and [o["bit"] for o in meta["overlays"]] == [1, 2]
    assert sorted(c["case_id"] for c in meta["cases"]) == sorted(CASE_IDS)  # everything fits in 25 MB
    assert sorted(data) == list(range(len(meta["cases"])))
    for idx, c in enumerate(meta["cases"]):
        want = expected(root, c["case_id"], tcfg["hu_window"], tcfg["labels"], MAX_SIDE)
        for key in ("offset", "crop_shape", "factor", "shape"):
            assert c[key] == want[key], (c["case_id"], key)
        assert c["spacing"] == pytest.approx(want["spacing"], abs=1e-3)
        assert max(c["shape"]) <= MAX_SIDE and max(c["factor"]) > 1
        assert c["full_shape"] == list(BIG) and c["bytes"] == len(data[idx])
        image, bits = _decode(data[idx], c["shape"])
        diff = np.abs(image.astype(int) - want["image"].astype(int))
        assert diff.max() <= 1 and np.mean(diff == 0) > 0.99, c["case_id"]  # rounding of the float32 mean only
        assert np.array_equal(bits, want["bits"]), c["case_id"]
        assert (bits & 1).any() and (bits & 2).any() and (bits & 4).any() and not (bits & 0xF8).any()
        assert not np.array_equal(bits & 2, (bits & 4) >> 1)  # the two variants' predictions differ
        gt = (bits & 1).astype(bool)
        centre = [round(float(np.average(np.nonzero(gt)[a]))) for a in range(3)]
        assert c["centre"] == centre  # the views start at the organ's centre
        for o in c["overlays"]:
            assert o["present"] and o["fold"] == FOLD_OF[c["case_id"]] and o["note"] is None
    case3 = next(c for c in meta["cases"] if c["case_id"] == "case_3")
    others = [c for c in meta["cases"] if c["case_id"] != "case_3"]
    assert all(case3["crop_shape"][0] > c["crop_shape"][0] for c in others)  # the false positive widened it


def test_chosen_cases_and_the_page_text(page):
    _, _, html = page
    meta, _ = payload(html)
    labels = {c["case_id"]: c["labels"] for c in meta["cases"]}
    assert meta["cases"][0]["labels"][0] == "best of full"
    assert any("worst of full" in v for v in labels.values()) and any("median of no_bd" in v for v in labels.values())
    assert "table" in [lab for v in labels.values() for lab in v]  # the per-case table's remaining case
    total = sum(c["bytes"] for c in meta["cases"])
    summary = re.search(r'<p id="viewer-summary">(.*?)</p>', html, re.S)[1]
    assert f"{len(CASE_IDS)} case(s) embedded, {total / 1000:.1f} kB of viewer data" in summary
    assert "max_mb = 25 MB" in summary and "not embedded" not in summary
    table = re.search(r'<table id="viewer-cases">.*?</table>', html, re.S)[0]
    for c in meta["cases"]:
        assert f'data-case="{c["case_id"]}" data-fold="{c["fold"]}" data-bytes="{c["bytes"]}"' in table
        assert f'<option value="{meta["cases"].index(c)}">' in html
    keys = re.search(r'<p class="muted" id="viewer-keys">(.*?)</p>', html, re.S)[1]
    assert "&uarr;" in keys and "PageUp" in keys and "Home" in keys
    assert 'data-bit="0" checked' in html and 'data-bit="2" checked' in html
    # self-contained: no script source, nothing fetched, the script does not end its element early
    section = html[html.index('<h2 id="viewer">'):html.index('<h2 id="cost">')]
    assert not re.search(r"<script[^>]+src=|fetch\(|XMLHttpRequest|url\(", section)
    js = (Path(viewer.__file__).parent / "templates" / "viewer.js.j2").read_text(encoding="utf-8")
    assert "</script" not in js.lower() and "DecompressionStream(\"deflate\")" in js


def test_small_slabs_give_the_same_payload(page, monkeypatch):
    """Reading and downsampling in many slabs (one output slice each) changes nothing."""
    root, cfg, html = page
    meta, data = payload(html)
    monkeypatch.setattr(viewer, "BLOCK_BYTES", 1)
    ctx = _context(root, cfg)
    assert [c["data"] for c in ctx["cases"]] == [data[i] for i in range(len(meta["cases"]))]


def test_budget_embeds_fewer_cases_and_says_so(page):
    root, cfg, html = page
    meta, _ = payload(html)
    sizes = [c["bytes"] for c in meta["cases"]]
    cfg = _cfg(root / "config.yaml", max_mb=(sizes[0] + sizes[1] + sizes[2] // 2) / 1e6)
    ctx = _context(root, cfg)
    assert [c["case_id"] for c in ctx["cases"]] == [c["case_id"] for c in meta["cases"][:2]]
    assert ctx["embedded_bytes"] == sizes[0] + sizes[1]
    assert len(ctx["left_out"]) == len(CASE_IDS) - 2
    section = _section(ctx, cfg)
    assert "2 case(s) embedded" in section and "2 further case(s) not embedded" in section
    assert 'id="viewer-left-out"' in section and meta["cases"][2]["case_id"] in section.split('id="viewer-left-out"')[1]
    _, data = payload(section)
    assert sorted(data) == [0, 1]
    # not even one case fits: no viewer, a note
    cfg = _cfg(root / "config.yaml", max_mb=1e-6)
    ctx = _context(root, cfg)
    section = _section(ctx, cfg)
    assert not ctx["show"] and "not even the first case fits" in section and 'id="viewer-meta"' not in section


def test_disabled_leaves_the_section_out_with_a_note(page):
    root, _, _ = page
    cfg = _cfg(root / "config.yaml", enabled=False)
    ctx = _context(root, cfg)
    section = _section(ctx, cfg)
    assert 'id="no-viewer"' in section and "report.viewer.enabled: false" in section
    assert "<canvas" not in section and "<script" not in section


def test_missing_predictions_give_notes(tmp_path):
    cfg_path = big_tree(tmp_path)
    gone = _runs(tmp_path) / "spleen" / "no_bd" / "fold1" / "eval" / "val" / "predictions" / "case_2_auto.nii.gz"
    gone.unlink()
    cfg = _cfg(cfg_path)
    ctx = _context(tmp_path, cfg)
    case2 = next(c for c in ctx["cases"] if c["case_id"] == "case_2")
    ov = {o["variant"]: o for o in case2["overlays"]}
    assert ov["full"]["present"] and not ov["no_bd"]["present"]
    assert "prediction not saved" in ov["no_bd"]["note"] and str(gone) in ov["no_bd"]["note"]
    tcfg = cfg["targets"]["spleen"]
    want = expected(tmp_path, "case_2", tcfg["hu_window"], tcfg["labels"], MAX_SIDE)
    image, bits = _decode(case2["data"], case2["shape"])
    assert case2["offset"] == want["offset"] and np.array_equal(bits, want["bits"]) and not (bits & 4).any()
    section = _section(ctx, cfg)
    assert "prediction not saved" in section


def test_no_predictions_at_all_still_shows_image_and_ground_truth(tmp_path):
    cfg_path = big_tree(tmp_path, predictions=False)
    cfg = _cfg(cfg_path)
    ctx = _context(tmp_path, cfg)
    assert ctx["show"] and len(ctx["cases"]) == len(CASE_IDS)
    assert any("predictions were not saved" in n for n in ctx["notes"])
    for c in ctx["cases"]:
        assert not any(o["present"] for o in c["overlays"])
        _, bits = _decode(c["data"], c["shape"])
        assert (bits & 1).any() and not (bits & 6).any()
    assert "predictions were not saved" in _section(ctx, cfg)


def test_unreadable_image_is_a_note_not_a_crash(tmp_path):
    cfg_path = big_tree(tmp_path)
    (tmp_path / "raw" / "Task_spleen" / "imagesTr" / "case_0.nii.gz").write_bytes(b"not a nifti file")
    cfg = _cfg(cfg_path)
    ctx = _context(tmp_path, cfg)
    assert "case_0" not in [c["case_id"] for c in ctx["cases"]] and len(ctx["cases"]) == len(CASE_IDS) - 1
    assert any(n.startswith("case case_0: could not be read") for n in ctx["notes"])


def test_downsampling_helpers():
    assert viewer.factors((300, 128, 129), 128) == (3, 1, 2)
    assert viewer.window_u8(np.array([-200.0, -160.0, 60.0, 240.0, 500.0]), (-160, 240)).tolist() == [0, 0, 140, 255, 255]
    img = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    bits = (img % 3).astype(np.uint8)
    out = viewer.decode(viewer.encode(img, bits), img.shape)
    assert np.array_equal(out[0], img) and np.array_equal(out[1], bits)
    raw = zlib.decompress(base64.b64decode(viewer.encode(img, bits)))
    assert raw[1] == img[1, 0, 0] and raw[2] == img[0, 1, 0]  # x fastest
