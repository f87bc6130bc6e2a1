"""Several prompts on several slices: boxes and positive/negative clicks, each prompted slice
a conditioning slice of SAM2's memory (as clicks on several frames of SAM2's video predictor).

A small randomly initialised model (64 px) on a tiny volume: what is checked is the
mechanics (which slices are conditioned, which outputs change, the single-prompt path
unchanged bit for bit), not quality (test_learning.py).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.data.preprocess import prepare_arrays
from sam2_3dmed.data.slices import unfit
from sam2_3dmed.errors import UserError
from sam2_3dmed.infer import propagation as PR
from sam2_3dmed.infer.user_prompts import UserPrompt, parse_prompts, prompts_to_prepared
from sam2_3dmed.model.prompts import (Prompt, box_from_mask, key_slice, merge_prompts, prompt_from_label,
                                      prompt_points, prompts_from_label)

from _tiny import tiny_sam_model, tiny_volume
from _volumes import ellipsoid_case, oblique_affine

N = 8  # slices of the tiny volume


@pytest.fixture(scope="module")
def model():
    return tiny_sam_model()


@pytest.fixture(scope="module")
def volume():
    return tiny_volume(N)


@pytest.fixture(scope="module")
def encoded(model, volume):
    with torch.no_grad():
        return PR.encode_volume(model, volume, chunk=4, feature_dtype="float32")  # predict_by_propagation's default


def _pts(box, info):
    """A box on the prepared slice as SAM2 points on the model input, batch 1."""
    return PR._points(Prompt(0, box=box), info, "cpu")


BOX_A, BOX_B = (12.0, 10.0, 35.0, 29.0), (14.0, 12.0, 30.0, 26.0)


# ---------------------------------------------------------------- prompts
def test_prompt_points_order_box_point_clicks():
    p = Prompt(3, box=(1, 2, 10, 12), point=(5, 6), clicks=((7, 8, 0), (4, 4, 1)))
    c, lab = prompt_points(p)
    assert c.dtype == np.float32 and lab.dtype == np.int32
    assert c.tolist() == [[1, 2], [10, 12], [5, 6], [7, 8], [4, 4]] and lab.tolist() == [2, 3, 1, 0, 1]
    c, lab = prompt_points(Prompt(2, clicks=((3, 4, 0),)))  # negatives only: allowed
    assert c.tolist() == [[3, 4]] and lab.tolist() == [0]
    c, lab = prompt_points(Prompt(2, box=(1, 2, 3, 4)))  # the old forms are unchanged
    assert lab.tolist() == [2, 3] and Prompt(2, box=(1, 2, 3, 4)).kind == "box"
    assert prompt_points(Prompt(2, point=(1, 2)))[1].tolist() == [1] and Prompt(2, point=(1, 2)).kind == "point"
    with pytest.raises(ValueError, match="slice 2"):
        prompt_points(Prompt(2))
    with pytest.raises(ValueError, match="label 1 or 0"):
        prompt_points(Prompt(2, clicks=((3, 4, 2),)))


def test_merge_prompts():
    box5 = Prompt(5, box=(1, 2, 3, 4))
    out = merge_prompts([box5, Prompt(2, point=(9, 9)), Prompt(5, point=(2, 3)), Prompt(5, clicks=((1, 1, 0),)),
                         Prompt(5, point=(3, 3)), Prompt(7, clicks=((4, 4, 0),))])
    assert [p.slice_index for p in out] == [2, 5, 7]
    assert out[0] == Prompt(2, point=(9, 9))
    assert out[1] == Prompt(5, box=(1, 2, 3, 4), point=(2, 3), clicks=((1, 1, 0), (3.0, 3.0, 1)))
    assert prompt_points(out[1])[1].tolist() == [2, 3, 1, 0, 1]
    assert out[2].clicks == ((4, 4, 0),) and out[2].box is None and out[2].point is None
    assert merge_prompts([box5])[0] is box5 and merge_prompts([]) == []
    with pytest.raises(ValueError, match="slice 5"):
        merge_prompts([box5, Prompt(5, box=(0, 0, 1, 1))])


def _organ(slices_areas, shape=(20, 30, 30)):
    lab = np.zeros(shape, np.uint8)
    for z, r in slices_areas.items():
        lab[z, 15 - r:15 + r + 1, 12 - r:12 + r + 1] = 1
    return lab


def test_prompts_from_label():
    lab = _organ({z: 2 + min(z - 3, 14 - z) for z in range(3, 15)})  # slices 3..14, largest at 8
    assert key_slice(lab) == 8
    for kind in ("box", "point"):
        assert prompts_from_label(lab, kind, 1) == [prompt_from_label(lab, kind)]
        three = prompts_from_label(lab, kind, 3)
        zs = [p.slice_index for p in three]
        assert zs == sorted(set(zs)) and len(zs) == 3 and 8 in zs
        assert all(lab[z].any() for z in zs) and zs[0] < 8 < zs[-1]
        assert all(p.kind == kind for p in three)
        assert three == prompts_from_label(lab, kind, 3)  # deterministic
        for p in three:
            if kind == "box":
                assert np.allclose(p.box, box_from_mask(lab[p.slice_index]))
            else:
                assert lab[p.slice_index, int(p.point[1]), int(p.point[0])] == 1
    # centres of thirds 4.5, 8.5, 12.5 (lower index on ties); the key slice 8 stands for the middle one
    assert [p.slice_index for p in prompts_from_label(lab, "box", 3)] == [4, 8, 12]
    assert len({p.slice_index for p in prompts_from_label(lab, "box", 12)}) == 12
    assert len(prompts_from_label(lab, "box", 20)) == 12  # fewer non-empty slices than k: all of them
    tiny = _organ({6: 1, 7: 2})
    assert [p.slice_index for p in prompts_from_label(tiny, "point", 3)] == [6, 7]
    assert prompts_from_label(np.zeros((5, 8, 8)), "box", 3) == [] == prompts_from_label(np.zeros((5, 8, 8)), "box", 1)
    with pytest.raises(ValueError):
        prompts_from_label(lab, "box", 0)


# ---------------------------------------------------------------- propagate_iter
def _collect(it):
    return [(s, raw.clone(), obj.clone()) for s, raw, obj in it]


def _same(a, b):
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (_, ra, oa), (_, rb, ob) in zip(a, b):
        assert torch.equal(ra, rb) and torch.equal(oa, ob)


@torch.no_grad()
def test_conds_equals_cond_prompt_bit_for_bit(model, encoded):
    feats, query, info = encoded
    pts = _pts(BOX_A, info)
    for order, k in ((list(range(3, N)), 3), (list(range(3, -1, -1)), 3), (list(range(N)), 3), (list(range(N)), 0)):
        old = _collect(model.propagate_iter(feats, order, query, pts, cond=k))
        _same(_collect(model.propagate_iter(feats, order, query, conds={k: pts})), old)
    # auto: the first slice unprompted
    _same(_collect(model.propagate_iter(feats, list(range(N)), query, conds={0: None})),
          _collect(model.propagate_iter(feats, list(range(N)), query)))
    with pytest.raises(ValueError, match="not both"):
        next(model.propagate_iter(feats, [0, 1], query, pts, conds={0: pts}))


@torch.no_grad()
def test_several_conds_are_init_frames_and_condition_the_rest(model, encoded):
    feats, query, info = encoded
    a, b = _pts(BOX_A, info), _pts(BOX_B, info)
    def run(order, conds):
        return {s: (r, o) for s, r, o in _collect(model.propagate_iter(feats, order, query, conds=conds))}

    both = run(list(range(2, N)), {2: a, 5: b})
    only_a = run(list(range(2, N)), {2: a})
    only_b = run(list(range(5, N)), {5: b})
    assert sorted(both) == list(range(2, N))
    # a conditioning slice is an initial frame: its output depends on its own prompt only
    assert torch.equal(both[2][0], only_a[2][0]) and torch.equal(both[5][0], only_b[5][0])
    # ... and the slices between attend to both: different from the first prompt alone
    assert not torch.equal(both[3][0], only_a[3][0]) and not torch.equal(both[5][0], only_a[5][0])


# ---------------------------------------------------------------- whole volume
def _old_predict(model, volume, prompt, passes, encoded, chunk=4):
    """The single-prompt algorithm before several prompts, on propagate_iter(cond=, prompt=)."""
    feats, query, info = encoded
    n, size = volume.shape[0], model.image_size
    prob = torch.zeros(n, size, size)

    def run(order, pts, cond, w, skip=None):
        for s, raw, obj in model.propagate_iter(feats, order, query, pts, cond=cond):
            if s != skip:
                prob[s] += w * PR._prob(raw, obj)[0].float()

    fwd, bwd = list(range(n)), list(range(n - 1, -1, -1))
    if prompt is None:
        run(fwd, None, None, 0.5), run(bwd, None, None, 0.5)
    else:
        k, pts = prompt.slice_index, PR._points(prompt, info, "cpu")
        if passes == "full":
            run(fwd, pts, k, 0.5), run(bwd, pts, k, 0.5)
        else:
            run(list(range(k, n)), pts, k, 1.0)
            if k > 0:
                run(list(range(k, -1, -1)), pts, k, 1.0, skip=k)
    outs = [unfit(prob[i:i + chunk], info, mode="bilinear") for i in range(0, n, chunk)]
    return torch.cat(outs).numpy()


@torch.no_grad()
@pytest.mark.parametrize("prompt,passes", [(None, "half"), (Prompt(3, box=BOX_A), "half"),
                                           (Prompt(0, point=(20, 20)), "half"), (Prompt(N - 1, box=BOX_B), "half"),
                                           (Prompt(4, point=(22, 18)), "full")])
def test_single_prompt_unchanged(model, volume, encoded, prompt, passes):
    calls = []
    stats = {}
    got = PR.predict_by_propagation(model, volume, prompt, chunk=4, passes=passes, stats=stats,
                                    progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(got, _old_predict(model, volume, prompt, passes, encoded))
    # as a list of one, and as encode_volume + propagate_volume
    feats, query, info = encoded
    again = PR.propagate_volume(model, feats, query, info, N, [prompt] if prompt else None, passes, "cpu", chunk=4)
    assert np.array_equal(got, again)
    total = N + (2 * N if prompt is None or passes == "full" else N)
    assert calls[-1] == (total, total) and len(calls) >= total - N
    k = prompt.slice_index if prompt else 0
    assert stats["slices"] == N and stats["steps"] == (2 * N if prompt is None or passes == "full" else
                                                       N + (k > 0))


@torch.no_grad()
def test_second_prompt_conditions_its_slice(model, volume, encoded):
    """THE point of several prompts: a box on a second slice changes the prediction there;
    in half mode the first slice (an initial conditioning frame) is unchanged."""
    feats, query, info = encoded
    first, second = Prompt(2, box=BOX_A), Prompt(5, box=BOX_B)
    one = PR.propagate_volume(model, feats, query, info, N, first, "half", "cpu", chunk=4)
    two = PR.predict_by_propagation(model, volume, [second, first], chunk=4)  # any order: merged
    assert np.array_equal(two[2], one[2])
    assert np.abs(two[5] - one[5]).max() > 1e-3
    assert not np.array_equal(two[3], one[3]) and not np.array_equal(two[7], one[7])
    full1 = PR.propagate_volume(model, feats, query, info, N, first, "full", "cpu", chunk=4)
    full2 = PR.propagate_volume(model, feats, query, info, N, [first, second], "full", "cpu", chunk=4)
    assert np.abs(full2[5] - full1[5]).max() > 1e-3


@torch.no_grad()
def test_half_passes_average_between_prompted_slices(model, encoded):
    feats, query, info = encoded
    a, b = Prompt(2, box=BOX_A), Prompt(5, box=BOX_B)
    conds = {2: PR._points(a, info, "cpu"), 5: PR._points(b, info, "cpu")}
    fwd = {s: PR._prob(r, o)[0] for s, r, o in model.propagate_iter(feats, list(range(2, N)), query, conds=conds)}
    bwd = {s: PR._prob(r, o)[0] for s, r, o in model.propagate_iter(feats, list(range(5, -1, -1)), query, conds=conds)}
    stats = {}
    prob = PR._propagate(model, feats, query, info, N, [a, b], "half", "cpu", stats=stats)
    for s in (0, 1):
        assert torch.equal(prob[s], bwd[s])
    for s in (2, 5, 6, 7):
        assert torch.equal(prob[s], fwd[s])
    assert torch.equal(fwd[2], bwd[2]) and torch.equal(fwd[5], bwd[5])  # conditioning outputs
    for s in (3, 4):
        assert torch.allclose(prob[s], 0.5 * fwd[s] + 0.5 * bwd[s], atol=1e-6)
    assert stats["steps"] == (N - 2) + 6


@torch.no_grad()
def test_negative_click_changes_its_slice(model, encoded):
    feats, query, info = encoded

    def run(prompt):
        return PR.propagate_volume(model, feats, query, info, N, prompt, "half", "cpu", chunk=4)

    box = Prompt(3, box=BOX_A)
    a = run(box)
    b = run([box, Prompt(3, clicks=((20.0, 15.0, 0),))])
    assert np.abs(b[3] - a[3]).max() > 1e-3
    assert np.array_equal(b, run(Prompt(3, box=BOX_A, clicks=((20.0, 15.0, 0),))))
    # a slice with only a negative click is a prompted slice too
    c = run([box, Prompt(6, clicks=((5.0, 5.0, 0),))])
    assert np.abs(c[6] - a[6]).max() > 1e-3 and np.array_equal(c[3], a[3])
    with pytest.raises(ValueError, match="outside the volume"):
        run([box, Prompt(N, point=(1, 1))])


# ---------------------------------------------------------------- user prompts
def test_parse_prompts_options_and_json(tmp_path):
    got = parse_prompts(boxes=["3,1,2,10,12"], points=["3,5,6", "7, 1, 2"], negatives=["3,8,8"])
    assert got == [UserPrompt("box", 3.0, (1.0, 2.0, 10.0, 12.0)), UserPrompt("point", 3.0, (5.0, 6.0)),
                   UserPrompt("point", 7.0, (1.0, 2.0)), UserPrompt("negative", 3.0, (8.0, 8.0))]
    assert parse_prompts() == []
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"boxes": [[3, 1, 2, 10, 12]], "points": [[4, 5, 6]], "negatives": [[4, 1.5, 2]]}))
    assert parse_prompts(boxes=["1,0,0,2,2"], json_file=f) == [
        UserPrompt("box", 1.0, (0.0, 0.0, 2.0, 2.0)), UserPrompt("box", 3.0, (1.0, 2.0, 10.0, 12.0)),
        UserPrompt("point", 4.0, (5.0, 6.0)), UserPrompt("negative", 4.0, (1.5, 2.0))]
    f.write_text(json.dumps({"negatives": [[4, 1, 2]]}))  # negatives in the file, the point on the command line
    assert len(parse_prompts(points=["4,5,6"], json_file=f)) == 2


@pytest.mark.parametrize("kw,words", [
    ({"boxes": ["1,2,3"]}, "--prompt-box must be 5"),
    ({"boxes": ["a,b,c,d,e"]}, "--prompt-box"),
    ({"points": ["1,2,nan"]}, "--prompt-point must be 3"),
    ({"points": ["1,2"]}, "--prompt-point"),
    ({"points": ["1,2,3"], "negatives": ["1,2,3,4"]}, "--prompt-negative must be 3"),
    ({"negatives": ["1,2,3"]}, "negative clicks need a box or a positive click"),
])
def test_parse_prompts_option_errors(kw, words):
    with pytest.raises(UserError, match=words) as e:
        parse_prompts(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,words", [
    ('{"boxes": [[1, 2, 3]', "not valid JSON"),
    ('{"boxes": [[1, 2, 3, 4, 5]], "clicks": []}', "unknown key"),
    ('{"points": [[1, 2]]}', r'"points"\[0\] must be 3'),
    ('{"points": [[1, 2, NaN]]}', r'"points"\[0\]'),
    ('{"points": [[1, "2", 3]]}', r'"points"\[0\]'),
    ('{"points": [[1, true, 3]]}', r'"points"\[0\]'),
    ('{"boxes": [1, 2, 3, 4, 5]}', r'"boxes"\[0\] must be 5'),
    ('{"boxes": {"a": 1}}', '"boxes" must be a list'),
    ('[[1, 2, 3]]', "JSON object"),
    ('{"negatives": [[1, 2, 3]]}', "negative clicks need a box or a positive click"),
])
def test_parse_prompts_json_errors(tmp_path, text, words):
    f = tmp_path / "prompts.json"
    f.write_text(text)
    with pytest.raises(UserError, match=words) as e:
        parse_prompts(json_file=f)
    msg = str(e.value)
    assert "\n" not in msg and (str(f) in msg or "negative" in words)
    with pytest.raises(UserError, match="does not exist"):
        parse_prompts(json_file=tmp_path / "none.json")


def _prepared_case():
    cfg = variant_config(load_config(None, {"model": {"image_size": 64, "pretrained": False},
                                            "targets": {"spleen": {"spacing_mm": [1.5, 1.5]}}}), "full")
    t = cfg["targets"]["spleen"]
    image, label, aff = ellipsoid_case(shape=(80, 72, 24), affine=oblique_affine(perm_flip=np.diag([-1.0, -1.0, 1.0])),
                                       radii_mm=(20, 15, 25))
    prep = prepare_arrays(image, label, aff, spacing_mm=t["spacing_mm"], slice_spacing_mm=None,
                          hu_window=t["hu_window"], crop_margin_mm=t["crop_margin_mm"], crop_to_body=True,
                          body_threshold_hu=-500, target_labels=[1])
    return label, prep


def test_prompts_to_prepared_maps_and_merges():
    label, prep = _prepared_case()
    src = Path("ct.nii.gz")
    k = label.shape[2] // 2
    ii, jj = np.nonzero(label[:, :, k])
    c = np.array(label.shape) // 2
    specs = parse_prompts(boxes=[f"{k},{ii.min()},{jj.min()},{ii.max()},{jj.max()}"],
                          points=[f"{k},{c[0]},{c[1]}", f"{k + 3},{c[0]},{c[1]}"],
                          negatives=[f"{k},{ii.min()},{jj.min()}"])
    out = prompts_to_prepared(specs, prep.geometry, label.shape, src)
    assert len(out) == 2 and out[0].slice_index < out[1].slice_index
    p = out[0]
    assert np.allclose(p.box, box_from_mask(prep.label[p.slice_index] > 0), atol=1.6)
    assert prep.label[p.slice_index, int(round(p.point[1])), int(round(p.point[0]))] == 1
    assert len(p.clicks) == 1 and p.clicks[0][2] == 0
    assert prompt_points(p)[1].tolist() == [2, 3, 1, 0]
    q = out[1]
    assert q.box is None and q.clicks == ()
    assert prep.label[q.slice_index, int(round(q.point[1])), int(round(q.point[0]))] == 1
    # the same refusals as before, per prompt
    for spec, words in ((UserPrompt("negative", c[2], (500, 3)), "outside the image"),
                        (UserPrompt("box", 3, (10, 10, 5, 20)), "x0 <= x1")):
        with pytest.raises(UserError, match=words):
            prompts_to_prepared([specs[0], spec], prep.geometry, label.shape, src)
    two = [UserPrompt("box", k, (ii.min(), jj.min(), ii.max(), jj.max())),
           UserPrompt("box", k, (c[0], c[1], c[0] + 2, c[1] + 2))]
    with pytest.raises(UserError, match=f"same slice {p.slice_index}") as e:
        prompts_to_prepared(two, prep.geometry, label.shape, src)
    assert str(src) in str(e.value) and f"z={k}" in str(e.value)
