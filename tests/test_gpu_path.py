"""The GPU path's pieces, checked on a CPU where they can be (and on a GPU by the ``cuda``
tests at the end, which scripts/gpu-check.sh runs):

- deterministic resizing (model/ops.py) equals PyTorch's, forward and backward;
- lockstep propagation (two passes as one batch of two) equals the passes run apart;
- the feature cache, allocated once, equals per-chunk encoding at any chunk size;
- checkpoints carry the RNG streams; deterministic mode raises instead of warning;
- bf16 autocast only on cards with native bf16;
- the training step's logged numbers, read every ``log_every`` steps, equal reading them
  every step.
"""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2_3dmed.device import amp_dtype, bf16_native, rng_state, set_deterministic, set_rng_state
from sam2_3dmed.infer import propagation as PR
from sam2_3dmed.model.ops import adaptive_avg_pool, interp_matrix, resize_bilinear
from sam2_3dmed.model.prompts import Prompt

from _tiny import make_tiny_target, tiny_config, tiny_sam_model, tiny_volume

N = 9  # slices of the tiny volume

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu-check.sh)")


@pytest.fixture(scope="module")
def model():
    return tiny_sam_model()


@pytest.fixture(scope="module")
def volume():
    return tiny_volume(N)


# ---------------------------------------------------------------- deterministic resizing
@pytest.mark.parametrize("src,dst", [((16, 16), (64, 64)), ((32, 24), (128, 96)), ((20, 30), (7, 11)), ((5, 5), (5, 5))])
def test_bilinear_as_matrix_products_equals_interpolate(src, dst):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *src, dtype=torch.float64, requires_grad=True)
    want = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    got = resize_bilinear(x, dst, force_matrix=True)
    assert torch.allclose(got, want, atol=1e-12)
    g = torch.randn_like(want)
    (gw,) = torch.autograd.grad(want, x, g)
    (gg,) = torch.autograd.grad(got, x, g)
    assert torch.allclose(gg, gw, atol=1e-12)


def test_interp_matrix_rows_sum_to_one_and_plain_path_is_pytorch():
    a = interp_matrix(16, 64)
    assert torch.allclose(a.sum(1), torch.ones(64))
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(resize_bilinear(x, (32, 32)), F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))


def test_adaptive_pool_as_avg_pool_equals_adaptive():
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64, requires_grad=True)
    want = F.adaptive_avg_pool2d(x, (8, 8))
    got = adaptive_avg_pool(x, (8, 8), force_pool=True)
    assert torch.allclose(got, want, atol=1e-12)
    with pytest.raises(RuntimeError, match="no deterministic CUDA backward"):
        adaptive_avg_pool(x, (7, 7), force_pool=True)


# ---------------------------------------------------------------- lockstep propagation
def _lanes(n, conds):
    fwd, bwd = list(range(n)), list(range(n - 1, -1, -1))
    return [(fwd, conds or {0: None}), (bwd, conds or {n - 1: None})]


@pytest.mark.parametrize("prompted", [False, True])
def test_lockstep_yields_what_the_two_passes_yield_apart(model, volume, prompted):
    with torch.no_grad():
        feats, query, info = PR.encode_volume(model, volume, chunk=4, feature_dtype="float32")
        conds = {3: PR._points(Prompt(3, box=(12.0, 10.0, 35.0, 29.0)), info, "cpu"),
                 6: PR._points(Prompt(6, point=(20.0, 20.0)), info, "cpu")} if prompted else {}
        lanes = _lanes(N, conds)
        apart = [[(s, raw, obj) for s, raw, obj in model.propagate_iter(feats, order, query, conds=c)]
                 for order, c in lanes]
        together = [[], []]
        for lane, s, raw, obj in model.propagate_lockstep(feats, lanes, query):
            together[lane].append((s, raw, obj))
    for a, b in zip(apart, together):
        assert [s for s, _, _ in a] == [s for s, _, _ in b]  # same slices, same order
        for (s, ra, oa), (_, rb, ob) in zip(a, b):
            assert ra.shape == rb.shape == (1, 64, 64)
            assert torch.allclose(ra, rb, atol=2e-4, rtol=1e-4), (s, (ra - rb).abs().max())
            assert torch.allclose(oa, ob, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("passes,prompt", [("half", None), ("full", Prompt(4, box=(12.0, 10.0, 35.0, 29.0)))])
def test_lockstep_volume_equals_separate_passes(model, volume, passes, prompt):
    # auto mode (passes is ignored without a prompt: both directions) and prompted full
    stats = {}
    a = PR.predict_by_propagation(model, volume, prompt, chunk=4, passes=passes)
    b = PR.predict_by_propagation(model, volume, prompt, chunk=4, passes=passes, lockstep=True, stats=stats)
    assert np.abs(a - b).max() < 1e-4
    assert np.array_equal(a >= 0.5, b >= 0.5)
    assert stats["steps"] == 2 * N  # decoder runs: each pass covers the volume once


def test_lockstep_is_skipped_where_passes_differ_in_length(model, volume):
    # prompted half: forward k..n-1 and backward k-1..0 are not of equal length
    p = Prompt(2, box=(12.0, 10.0, 35.0, 29.0))
    a = PR.predict_by_propagation(model, volume, p, chunk=4, passes="half")
    b = PR.predict_by_propagation(model, volume, p, chunk=4, passes="half", lockstep=True)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- the feature cache
@pytest.mark.parametrize("chunk", [1, 4, N])
def test_preallocated_cache_equals_one_chunk_at_a_time(model, volume, chunk):
    with torch.no_grad():
        ref, qref, _ = PR.encode_volume(model, volume, chunk=1, feature_dtype="float32")
        got, q, _ = PR.encode_volume(model, volume, chunk=chunk, feature_dtype="float16")
    assert got.low.dtype == torch.float16 and got.low.shape == ref.low.shape == (N, *ref.low.shape[1:])
    for a, b in ((got.low, ref.low), (got.s1, ref.s1), (got.s0, ref.s0), (q, qref)):
        assert torch.allclose(a.float(), b, atol=2e-2, rtol=1e-2)
    assert PR.resolve_feature_dtype("auto", "cpu") == "float16"
    assert PR.resolve_feature_dtype("auto", "cuda") == "bfloat16"


# ---------------------------------------------------------------- device settings
def test_bf16_only_on_cards_that_have_it_natively():
    assert bf16_native((8, 0)) and bf16_native((9, 0)) and not bf16_native((7, 5))
    assert amp_dtype(torch.device("cpu"), True) is None  # never on a CPU
    assert amp_dtype(torch.device("cpu"), False) is None


def test_deterministic_mode_raises_instead_of_warning():
    try:
        set_deterministic(True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        set_deterministic(False, torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_rng_state_round_trip_continues_the_stream():
    dev = torch.device("cpu")
    torch.manual_seed(3)
    state = rng_state(dev)
    want = torch.rand(5)
    torch.rand(100)
    set_rng_state(state, dev)
    assert torch.equal(torch.rand(5), want)
    assert set(state) == {"cpu"}


# ---------------------------------------------------------------- the training step
@pytest.mark.slow
def test_log_every_and_deterministic_mode_change_nothing_logged_and_checkpoints_carry_the_rng(tmp_path):
    rows = {}
    for every in (1, 4):
        # the second run also in deterministic mode (an op without a deterministic form would raise)
        t = make_tiny_target(tmp_path / f"e{every}", tiny_config(train={"log_every": every, "steps": 5,
                                                                        "checkpoint_every": 5, "val_every": 5,
                                                                        "deterministic": every == 4}))
        from sam2_3dmed.train.trainer import train
        out = train(t.cfg, "spleen", "full", 0, tmp_path / f"run{every}", prepared=t.prepared, device="cpu")
        with (out / "train_log.csv").open() as fh:
            rows[every] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
        state = torch.load(out / "last.pt", weights_only=True)
        assert set(state["rng"]) == {"cpu"} and torch.equal(state["rng"]["cpu"], state["torch_rng"])
    assert len(rows[1]) == 5 and rows[1] == rows[4]
    assert all(r["loss"] and r["grad_norm"] and r["bd_gate"] for r in rows[4])


# ---------------------------------------------------------------- on a GPU (gpu-check.sh)
@pytest.mark.cuda
@cuda
def test_cuda_lockstep_and_amp_agree_with_float32(model, volume):
    m = model.to("cuda")
    try:
        ref = PR.predict_by_propagation(m, volume, None, chunk=4, device="cuda")
        got = PR.predict_by_propagation(m, volume, None, chunk=4, device="cuda", lockstep=True,
                                        amp=torch.bfloat16, feature_dtype="bfloat16")
        a, b = ref >= 0.5, got >= 0.5
        dice = 1.0 if not (a.sum() + b.sum()) else 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice >= 0.99 and np.abs(ref - got).mean() < 0.02
    finally:
        model.to("cpu")


@pytest.mark.cuda
@cuda
def test_cuda_rng_state_round_trip():
    dev = torch.device("cuda")
    torch.cuda.manual_seed(5)
    state = rng_state(dev)
    assert "cuda" in state
    want = torch.rand(5, device=dev)
    torch.rand(100, device=dev)
    set_rng_state(state, dev)
    assert torch.equal(torch.rand(5, device=dev), want)


@pytest.mark.cuda
@cuda
def test_cuda_deterministic_training_backward_has_no_nondeterministic_op(model):
    """The training forward + backward of a clip under deterministic mode and bf16 autocast:
    PyTorch raises on an op without a deterministic CUDA implementation."""
    m = model.to("cuda").train()
    try:
        set_deterministic(True, torch.device("cuda"))
        x = torch.rand(1, 3, 3, 64, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m.forward_clip(x)
            loss = out["mask_logits"].float().mean() + out["bd_logits"].float().mean() + out["srpp"].float().mean()
        loss.backward()
    finally:
        set_deterministic(False, torch.device("cuda"))
        m.zero_grad(set_to_none=True)
        model.to("cpu").eval()


def _ready_trainer(tmp_path, device):
    from sam2_3dmed.train.trainer import Trainer

    t = make_tiny_target(tmp_path, tiny_config(train={"log_every": 3}))
    trainer = Trainer(t.cfg, "spleen", "full", 0, tmp_path / "run", prepared=t.prepared, device=device)
    return trainer, trainer.prepare()


@pytest.mark.slow
def test_a_training_step_leaves_its_numbers_on_the_device_until_read(tmp_path):
    trainer, batches = _ready_trainer(tmp_path, "cpu")
    trainer.train_rows.append(trainer.train_step(batches))
    row = trainer.train_rows[-1]
    assert all(torch.is_tensor(row[k]) for k in ("loss", "seg", "obj", "srpp", "bd", "grad_norm", "bd_gate"))
    trainer.materialise()
    assert isinstance(row["loss"], str) and float(row["loss"]) > 0 and not torch.is_tensor(row["grad_norm"])


@pytest.mark.cuda
@cuda
def test_cuda_training_step_never_waits_for_the_device(tmp_path):
    """torch's sync debug mode warns on every host-device synchronisation (a .item(), a
    boolean index, a blocking copy); one training step, batch already loaded, makes none."""
    import warnings

    trainer, batches = _ready_trainer(tmp_path, "cuda")
    first = next(batches)
    trainer.train_step(iter([first]))  # warm-up (cuBLAS handles, allocator)
    batch = next(batches)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(iter([batch]))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs[:3]
