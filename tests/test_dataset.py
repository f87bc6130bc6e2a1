"""Clip sampling (ClipDataset), slice <-> model-input geometry, and prompt simulation."""

import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sam2_3dmed.config import defaults, load_config
from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.data.slices import (IMAGENET_MEAN, IMAGENET_STD, FitInfo, fit_info, fit_to_square,
                                    to_sam_input, unfit)
from sam2_3dmed.data.synth import synth_task
from sam2_3dmed.errors import ConfigError, UserError
from sam2_3dmed.model.prompts import (BOX_LABELS, PADDING, POSITIVE, box_from_mask, clip_prompts, key_slice,
                                      map_points, point_from_mask, prompt_from_label, prompt_points, to_sam_points,
                                      unmap_points)
from sam2_3dmed.train.dataset import ClipDataset, affine_theta, spatial_augment

FIELDS = {"image", "mask", "valid", "slice_index", "z_mm", "key_index"}  # what the trainer reads, no more

NO_INTENSITY = {"intensity_shift": 0.0, "intensity_scale": [1.0, 1.0], "noise_std": 0.0}


@pytest.fixture(scope="session")
def prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    task = synth_task("Task09_Spleen", root / "raw", cases=6, test_cases=0, seed=0, size=64)
    cfg = load_config(overrides={"splits": {"folds": 2, "test_fraction": 0.0},
                                 "targets": {"spleen": {"spacing_mm": [1.5, 1.5]}}})
    return prepare_target(task, "spleen", root / "prep", cfg)


def list_cases(prep, fold, split="train"):
    return PreparedTarget(prep).cases(fold, split)


def fake_prepared(root: Path, template: Path, cases: dict, spacing=(1.0, 1.0, 2.5)) -> Path:
    """A prepared folder with hand-made (image, label) arrays; geometry copied from a real case."""
    geom = json.loads((template / "cases" / "spleen_0" / "geometry.json").read_text())
    geom["resampled_spacing"] = list(spacing)
    for cid, (image, label) in cases.items():
        d = root / "cases" / cid
        d.mkdir(parents=True)
        np.save(d / "image.npy", image.astype(np.float16))
        np.save(d / "label.npy", label.astype(np.uint8))
        (d / "geometry.json").write_text(json.dumps(geom))
    ids = list(cases)
    (root / "splits.json").write_text(json.dumps({"test": [], "folds": [{"train": ids, "val": ids}]}))
    return root


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    """(D, 3, S, S) SAM input -> (D, S, S) [0, 1] (first channel)."""
    return image[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


# ----------------------------------------------------------------- dataset
@pytest.mark.parametrize("d", [3, 6, 12])
@pytest.mark.parametrize("s", [64, 128])
def test_clip_shapes_and_fields(prep, d, s):
    ds = ClipDataset(prep, list_cases(prep, 0), clip_length=d, image_size=s, length=8, seed=1)
    z_spacings = {m.spacing[2] for m in ds.meta.values()}
    for i in range(4):
        x = ds[i]
        assert set(x) == FIELDS
        assert x["image"].shape == (d, 3, s, s) and x["image"].dtype == torch.float32
        assert x["mask"].shape == (d, s, s) and x["mask"].dtype == torch.float32
        assert set(torch.unique(x["mask"]).tolist()) <= {0.0, 1.0}
        assert x["valid"].dtype == torch.bool and x["valid"].all()  # synthetic volumes are >= 40 slices
        idx = x["slice_index"]
        assert idx.dtype == torch.int64 and idx.shape == (d,)
        steps = torch.diff(idx)
        assert (steps == 1).all() or (steps == -1).all()  # consecutive slices, either way
        sz = float(x["z_mm"][1] - x["z_mm"][0]) / int(steps[0])
        assert torch.allclose(x["z_mm"], idx.float() * sz) and any(abs(sz - z) < 1e-4 for z in z_spacings)
        k = int(x["key_index"])
        if x["mask"].any():
            areas = x["mask"].flatten(1).sum(1)
            assert k >= 0 and areas[k] == areas.max()
        else:
            assert k == -1
        assert x["image"].min() >= -IMAGENET_MEAN[0] / IMAGENET_STD[0] - 1e-4  # from [0, 1] data


def test_index_target_and_errors(prep):
    ids = list_cases(prep, 0)
    with pytest.raises(ConfigError, match="augment.rotate"):
        ClipDataset(prep, ids, 4, 64, 4, augment={"rotate": 5})
    with pytest.raises(ConfigError, match="fg_share"):
        ClipDataset(prep, ids, 4, 64, 4, fg_share=1.5)
    with pytest.raises(UserError, match="no prepared case"):
        ClipDataset(prep, ["spleen_99"], 4, 64, 4)
    ds = ClipDataset(prep, ids, 4, 64, 4)
    with pytest.raises(IndexError):
        ds[4]


def test_deterministic_in_seed_and_index(prep):
    ids = list_cases(prep, 0)
    a = ClipDataset(prep, ids, 6, 64, 50, seed=3)
    b = ClipDataset(prep, ids, 6, 64, 50, seed=3)
    c = ClipDataset(prep, ids, 6, 64, 50, seed=4)

    def same(x, y):
        return all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)

    for i in (0, 7, 49):
        _ = b[(i + 1) % 50]  # order of access must not matter
        assert same(a[i], b[i]) and same(a[i], a[i])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], c[0]["image"])
    # a pickled copy (as sent to spawned workers) is small and gives the same samples
    blob = pickle.dumps(a)
    assert len(blob) < 50_000
    assert same(pickle.loads(blob)[7], a[7])
    # through a DataLoader with workers: same batches as direct indexing
    dl = DataLoader(a, batch_size=4, num_workers=2)
    batch = next(iter(dl))
    assert batch["image"].shape == (4, 6, 3, 64, 64) and batch["key_index"].shape == (4,)
    for i in range(4):
        assert all(torch.equal(batch[k][i], a[i][k]) for k in FIELDS)


def test_start_up_reads_no_label_and_samples_as_a_label_scan_does(prep, tmp_path, monkeypatch, caplog):
    """The organ's slices come from fingerprint.json: no label is opened at construction, and
    the clips are those of a folder without the field (labels scanned, as before)."""
    import logging
    import shutil
    from sam2_3dmed.train import dataset as dataset_mod

    ids = list_cases(prep, 0)
    opened = []
    real_load = np.load

    def counting_load(f, *a, **kw):
        opened.append(Path(f).name)
        return real_load(f, *a, **kw)

    monkeypatch.setattr(np, "load", counting_load)
    monkeypatch.setattr(dataset_mod, "_scan_label", lambda *a: pytest.fail("a label was scanned"))
    new = ClipDataset(prep, ids, 4, 64, 40, seed=5, fg_share=0.9, augment=False)
    assert "label.npy" not in opened and opened.count("image.npy") == len(set(ids))
    monkeypatch.undo()

    old = tmp_path / "old"  # the same folder as an older prepare wrote it
    shutil.copytree(prep, old)
    fp = json.loads((old / "fingerprint.json").read_text())
    for c in fp["cases"]:
        del c["label_slice_range_prepared"]
    (old / "fingerprint.json").write_text(json.dumps(fp))
    with caplog.at_level(logging.INFO, logger="sam2_3dmed"):
        scanned = ClipDataset(old, ids, 4, 64, 40, seed=5, fg_share=0.9, augment=False)
    assert "re-run prepare to skip this" in caplog.text
    assert new.meta == scanned.meta and any(m.fg_lo > 0 for m in new.meta.values())
    for i in range(12):
        a, b = new[i], scanned[i]
        assert all(torch.equal(a[k], b[k]) for k in FIELDS)


def test_bad_or_stale_slice_range_is_a_one_line_error(prep, tmp_path):
    import shutil
    from sam2_3dmed.errors import InputFileError

    ids = list_cases(prep, 0)
    bad = tmp_path / "bad"
    shutil.copytree(prep, bad)
    fp = json.loads((bad / "fingerprint.json").read_text())
    n = fp["cases"][0]["prepared_shape_zyx"][0]
    fp["cases"][0]["label_slice_range_prepared"] = [3, n]  # past the last slice
    (bad / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(InputFileError, match="label_slice_range_prepared.*re-run prepare"):
        ClipDataset(bad, ids, 4, 64, 4)
    fp["cases"][0]["label_slice_range_prepared"] = [3, 4]
    fp["cases"][0]["prepared_shape_zyx"][0] = n + 1  # arrays replaced after prepare
    (bad / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(InputFileError, match="differs from prepared_shape_zyx"):
        ClipDataset(bad, [fp["cases"][0]["case_id"]], 4, 64, 4)
    fp["cases"][0]["prepared_shape_zyx"][0] = n
    (bad / "fingerprint.json").write_text(json.dumps(fp))
    cid = fp["cases"][0]["case_id"]
    (bad / "cases" / cid / "label.npy").unlink()
    with pytest.raises(InputFileError, match="label.npy.*missing"):
        ClipDataset(bad, [cid], 4, 64, 4)


def test_fg_share_one_always_has_foreground(prep):
    ds = ClipDataset(prep, list_cases(prep, 0), 6, 64, 60, fg_share=1.0, augment=False)
    for i in range(60):
        x = ds[i]
        assert x["mask"].any() and x["key_index"] >= 0


def test_reversed_clips(prep):
    ids = list_cases(prep, 0)
    fwd = ClipDataset(prep, ids, 6, 64, 10, reverse_prob=0.0, augment=False)
    rev = ClipDataset(prep, ids, 6, 64, 10, reverse_prob=1.0, augment=False)
    for i in range(10):
        f, r = fwd[i], rev[i]
        assert (torch.diff(f["slice_index"]) > 0).all() and (torch.diff(r["slice_index"]) < 0).all()
        assert (torch.diff(f["z_mm"]) > 0).all() and (torch.diff(r["z_mm"]) < 0).all()
        # the same window, in the opposite order
        assert torch.equal(r["slice_index"], f["slice_index"].flip(0))
        assert torch.equal(r["image"], f["image"].flip(0)) and torch.equal(r["mask"], f["mask"].flip(0))
        assert torch.allclose(r["z_mm"][-1] - r["z_mm"][0], -(f["z_mm"][-1] - f["z_mm"][0]))


def test_no_augmentation_is_plain_fit(prep):
    one = list_cases(prep, 0)[:1]
    ds = ClipDataset(prep, one, 4, 64, 3, reverse_prob=0.0, augment=False)
    x = ds[0]
    image, label = ds.arrays(one[0])
    idx = x["slice_index"].numpy()
    ref, _ = fit_to_square(np.asarray(image[idx[0]:idx[-1] + 1], np.float32), 64)
    assert torch.allclose(unnormalise(x["image"]), ref, atol=1e-5)
    ident = {**NO_INTENSITY, "p": 1.0, "rotate_deg": 0.0, "scale": [1.0, 1.0]}
    y = ClipDataset(prep, one, 4, 64, 3, reverse_prob=0.0, augment=ident)[0]
    assert torch.allclose(unnormalise(y["image"]), ref, atol=1e-5) and torch.equal(y["mask"], x["mask"])


def test_augmentation_keeps_image_and_mask_aligned(prep, tmp_path):
    z, h, w = 20, 50, 70
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((z, h, w), np.uint8)
    for k in range(z):  # an off-centre ellipse whose size changes along z, plus a bar
        lab[k] = (((xx - 45) / (8 + k % 5)) ** 2 + ((yy - 20) / 10) ** 2) < 1
        lab[k, 35:40, 5:30] = 1
    root = fake_prepared(tmp_path / "p", prep, {"c0": (lab.astype(np.float32), lab)})
    aug = {**NO_INTENSITY, "p": 1.0, "rotate_deg": 30.0, "scale": [0.8, 1.25]}
    ds = ClipDataset(root, ["c0"], 8, 96, 12, augment=aug)
    plain = ClipDataset(root, ["c0"], 8, 96, 12, augment=False)
    moved = 0
    for i in range(12):
        x = ds[i]
        assert set(torch.unique(x["mask"]).tolist()) <= {0.0, 1.0}
        img = unnormalise(x["image"])
        assert dice(img >= 0.5, x["mask"]) >= 0.97
        moved += not torch.equal(x["mask"], plain[i]["mask"])
    assert moved == 12  # the spatial transform was applied to every clip (p = 1)
    # spatial_augment directly: one transform for all slices, image == mask stays equal
    m = torch.from_numpy(lab[:4].astype(np.float32))
    m, _ = fit_to_square(m, 96, mode="mask")
    img, msk = spatial_augment(m.clone(), m.clone(), affine_theta(17.0, 1.1))
    assert dice(img >= 0.5, msk) >= 0.97 and set(torch.unique(msk).tolist()) <= {0.0, 1.0}


def test_no_left_right_flip_by_default(prep, tmp_path):
    z, h, w = 12, 40, 40
    lab = np.zeros((z, h, w), np.uint8)
    lab[:, 14:26, 3:13] = 1  # organ well inside the left third (low column index)
    root = fake_prepared(tmp_path / "p", prep, {"c0": (lab * 0.8, lab)})
    assert defaults()["train"]["augment"]["flip_lr"] is False

    def centroids(augment):
        ds = ClipDataset(root, ["c0"], 4, 64, 40, augment=augment)
        out = []
        for i in range(40):
            m = ds[i]["mask"].sum(dim=(0, 1))  # column profile
            out.append(float((m * torch.arange(64)).sum() / m.sum()))
        return np.array(out)

    assert (centroids({"p": 1.0}) < 32).all()
    flipped = centroids({"p": 1.0, "flip_lr": True})
    assert (flipped > 32).any() and (flipped < 32).any()


def test_short_volume_is_padded(prep, tmp_path):
    img = np.linspace(0, 1, 4)[:, None, None] * np.ones((4, 30, 30))
    lab = np.zeros((4, 30, 30), np.uint8)
    lab[1:, 10:20, 10:20] = 1
    root = fake_prepared(tmp_path / "p", prep, {"short": (img, lab)}, spacing=(1.0, 1.0, 5.0))
    for prob, expect_rev in ((0.0, False), (1.0, True)):
        x = ClipDataset(root, ["short"], 6, 32, 2, reverse_prob=prob, augment=False)[0]
        idx, valid = x["slice_index"].tolist(), x["valid"].tolist()
        if expect_rev:
            idx, valid = idx[::-1], valid[::-1]
        assert idx == [0, 1, 2, 3, 3, 3] and valid == [True] * 4 + [False] * 2
        assert torch.allclose(x["z_mm"], x["slice_index"].float() * 5.0)
        k = int(x["key_index"])
        assert x["valid"][k]  # the key slice is never a padded copy
        im = x["image"] if not expect_rev else x["image"].flip(0)
        assert torch.equal(im[3], im[5]) and not torch.equal(im[2], im[3])


def test_reads_only_the_window_from_memmaps(prep, tmp_path):
    z, h, w = 400, 96, 96
    rng = np.random.default_rng(0)
    img = rng.random((z, h, w), dtype=np.float32)
    lab = np.zeros((z, h, w), np.uint8)
    lab[150:250, 30:60, 30:60] = 1
    root = fake_prepared(tmp_path / "p", prep, {"big": (img, lab)})
    ds = ClipDataset(root, ["big"], 4, 64, 5, fg_share=1.0)
    image, label = ds.arrays("big")
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    volume_bytes = image.nbytes + label.nbytes
    _ = ds[0]  # warm-up (imports, caches)
    tracemalloc.start()
    try:
        for i in range(5):
            _ = ds[i]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < volume_bytes / 10, (peak, volume_bytes)


def test_list_cases(prep):
    splits = json.loads((prep / "splits.json").read_text())
    assert list_cases(prep, 1, "val") == splits["folds"][1]["val"]
    assert list_cases(prep, 0) == splits["folds"][0]["train"]
    assert list_cases(prep, 0, "test") == []
    with pytest.raises(UserError, match=r"splits\.json.*fold 2 is out of range"):
        list_cases(prep, 2)
    with pytest.raises(UserError, match="split must be"):
        list_cases(prep, 0, "training")
    with pytest.raises(UserError, match=r"splits\.json"):
        list_cases(prep.parent, 0)


# ----------------------------------------------------------------- slices
def test_fit_geometry_and_info_roundtrip():
    info = fit_info(40, 70, 128)
    assert (info.scaled_width, info.scaled_height) == (128, 73)
    assert info.pad_top + info.pad_bottom == 128 - 73 and abs(info.pad_top - info.pad_bottom) <= 1
    assert FitInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    x = torch.rand(2, 40, 70)
    out, info2 = fit_to_square(x, 128)
    assert out.shape == (2, 128, 128) and info2 == info
    assert (out[:, :info.pad_top] == 0).all() and (out[:, info.pad_top + 73:] == 0).all()
    same, i3 = fit_to_square(np.ones((1, 32, 32), np.float16), 32)  # already square: untouched
    assert i3.pad_top == i3.pad_left == 0 and torch.equal(same, torch.ones(1, 32, 32))


@pytest.mark.parametrize("hw,size", [((40, 70), 128), ((90, 60), 64), ((50, 50), 96)])
def test_fit_unfit_roundtrip(hw, size):
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    smooth = np.stack([0.5 + 0.4 * np.sin(xx / w * 2 * np.pi + k) * np.cos(yy / h * np.pi) for k in range(3)])
    fitted, info = fit_to_square(smooth, size)
    back = unfit(fitted, info)
    assert back.shape == (3, h, w)
    assert float((back - torch.from_numpy(smooth).float()).abs().max()) < 0.03
    mask = np.stack([(((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 < 1) for _ in range(2)])
    for fwd, bwd in (("mask", "mask"), ("nearest", "nearest")):
        m, info = fit_to_square(mask, size, mode=fwd)
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert dice(unfit(m, info, mode=bwd).numpy() > 0.5, mask) >= 0.98
    # probability maps come back bilinear and can be thresholded
    m, info = fit_to_square(mask, size, mode="mask")
    assert dice(unfit(m, info).numpy() >= 0.5, mask) >= 0.98


def test_map_points_follows_the_resampling():
    h, w, size = 30, 50, 128
    info = fit_info(h, w, size)
    for x, y in ((10, 5), (40, 22), (0, 0), (49, 29)):
        dot = np.zeros((1, h, w), np.float32)
        dot[0, y, x] = 1.0
        fitted, _ = fit_to_square(dot, size)
        yy, xx = np.mgrid[:size, :size]
        wgt = fitted[0].numpy()
        centre = np.array([(wgt * xx).sum(), (wgt * yy).sum()]) / wgt.sum()
        mapped = map_points([x, y], info)
        if 0 < x < w - 1 and 0 < y < h - 1:  # at the border the blob is cut off
            assert np.abs(mapped - centre).max() < 0.1
        assert np.allclose(unmap_points(mapped, info), [x, y], atol=1e-4)
    box = np.array([3, 4, 20, 25], np.float32)
    mb = map_points(box, info)
    assert np.allclose(mb[:2], map_points(box[:2], info)) and np.allclose(unmap_points(mb, info), box, atol=1e-4)


def test_to_sam_input():
    x = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    y = to_sam_input(x)
    assert y.shape == (1, 3, 2, 2) and y.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(y[0, c], (x[0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    assert to_sam_input(torch.zeros(2, 4, 8, 8)).shape == (2, 4, 3, 8, 8)


# ----------------------------------------------------------------- prompts
def test_box_point_and_key_slice():
    m = np.zeros((40, 60), np.uint8)
    m[10:21, 5:36] = 1  # rows 10..20, cols 5..35
    assert box_from_mask(m).tolist() == [5, 10, 35, 20]
    assert point_from_mask(m).tolist() == [20, 15]  # the rectangle's centre
    rng = np.random.default_rng(0)
    for _ in range(50):
        px, py = point_from_mask(m, rng).astype(int)
        assert m[py, px] == 1
        b = box_from_mask(m, rng, jitter=0.5)
        assert 0 <= b[0] <= b[2] <= 59 and 0 <= b[1] <= b[3] <= 39
        assert np.abs(b - [5, 10, 35, 20]).max() <= 0.5 * 31 + 1e-4
    assert not np.array_equal(box_from_mask(m, rng, 0.1), box_from_mask(m, rng, 0.1))
    ring = np.zeros((50, 50), bool)  # a C shape: its centroid is outside, the click must not be
    ring[5:45, 5:45] = True
    ring[15:35, 15:50] = False
    px, py = point_from_mask(ring).astype(int)
    assert ring[py, px]
    with pytest.raises(ValueError):
        box_from_mask(np.zeros((5, 5)))
    vol = np.zeros((5, 20, 20), np.uint8)
    vol[1, 5:8, 5:8] = 1
    vol[3, 2:12, 2:12] = 1
    vol[4, 0:5, 0:5] = 1
    assert key_slice(vol) == 3 and key_slice(np.zeros((3, 4, 4))) == -1


def test_to_sam_points():
    c, lab = to_sam_points(box=[1, 2, 30, 40], point=[10, 12])
    assert c.shape == (1, 3, 2) and c.dtype == np.float32 and lab.dtype == np.int32
    assert lab.tolist() == [[2, 3, 1]] and c[0].tolist() == [[1, 2], [30, 40], [10, 12]]
    c, lab = to_sam_points(box=np.array([1, 2, 3, 4]))
    assert lab.tolist() == [[2, 3]] and c.shape == (1, 2, 2)
    c, lab = to_sam_points(point=[5, 6])
    assert lab.tolist() == [[1]] and c.tolist() == [[[5, 6]]]
    with pytest.raises(ValueError):
        to_sam_points()


def test_prompt_from_label_and_prompt_points():
    vol = np.zeros((6, 30, 40), np.uint8)
    vol[2, 5:9, 10:14] = 1
    vol[4, 10:21, 5:36] = 1  # the largest cross-section
    box = prompt_from_label(vol, "box")
    assert box.slice_index == 4 and box.box == (5.0, 10.0, 35.0, 20.0) and box.kind == "box"
    point = prompt_from_label(vol, "point")
    assert point.slice_index == 4 and vol[4, int(point.point[1]), int(point.point[0])] == 1
    assert prompt_from_label(np.zeros_like(vol), "box") is None
    c, lab = prompt_points(box)
    assert c.tolist() == [[5, 10], [35, 20]] and tuple(lab) == BOX_LABELS
    c, lab = prompt_points(point)
    assert c.shape == (1, 2) and lab.tolist() == [POSITIVE]


def test_clip_prompts_pad_clips_without_the_organ():
    m = np.zeros((3, 20, 20), np.float32)
    m[0, 4:9, 6:15] = 1
    m[2, 10:12, 10:12] = 1
    rng = np.random.default_rng(0)
    coords, labels = clip_prompts(list(m), use_box=True, rng=rng, jitter=0.0)
    assert coords.shape == (3, 2, 2) and coords.dtype == np.float32 and labels.dtype == np.int32
    assert coords[0].tolist() == [[6, 4], [14, 8]] and tuple(labels[0]) == BOX_LABELS
    assert labels[1].tolist() == [PADDING, PADDING] and not coords[1].any()  # absent: no prompt
    coords, labels = clip_prompts(list(m), use_box=False, rng=rng, jitter=0.0)
    assert labels[:, 0].tolist() == [POSITIVE, PADDING, POSITIVE] and (labels[:, 1] == PADDING).all()
    x, y = coords[2, 0].astype(int)
    assert m[2, y, x] == 1
