"""SAM2-3dMed modules: shapes, targets, gradient paths, frozen parts, checkpoints."""

import numpy as np
import pytest
import torch

from sam2_3dmed.config import load_config, variant_config
from sam2_3dmed.model.boundary import bd_loss, boundary_targets
from sam2_3dmed.model.factory import build_model
from sam2_3dmed.model.losses import compute_losses
from sam2_3dmed.model.srpp import SRPPHead, srpp_loss, srpp_targets
from sam2_3dmed.model.checkpoint import load_checkpoint, load_trainable, save_checkpoint

S = 64


def model_cfg(variant="full", **model):
    cfg = load_config(overrides={"model": {"image_size": S, "pretrained": False, **model}})
    return variant_config(cfg, variant)


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return build_model(model_cfg()["model"]).train()


def fake_batch(b=1, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, d, S, S)
    mask[:, 1:, 20:40, 24:44] = 1.0
    return {
        "image": torch.randn(b, d, 3, S, S, generator=g),
        "mask": mask,
        "valid": torch.ones(b, d, dtype=torch.bool),
        "z_mm": torch.arange(d, dtype=torch.float32).repeat(b, 1) * 2.5,
        "slice_index": torch.arange(d).repeat(b, 1),
    }


@pytest.mark.parametrize("d", [3, 6, 12])
def test_forward_shapes(full_model, d):
    out = full_model.forward_clip(torch.randn(1, d, 3, S, S))
    assert out["mask_logits"].shape == (1, d, S, S)
    assert out["obj_logits"].shape == (1, d)
    assert out["srpp"].shape == (1, d, d)
    assert out["bd_logits"].shape == (1, d, S, S)


def test_prompted_forward_covers_every_slice(full_model):
    coords = torch.tensor([[[10.0, 10.0], [40.0, 40.0]]])
    labels = torch.tensor([[2, 3]], dtype=torch.int32)
    out = full_model.forward_clip(torch.randn(1, 5, 3, S, S), key_index=2, prompt=(coords, labels))
    assert out["mask_logits"].shape == (1, 5, S, S)
    assert torch.isfinite(out["mask_logits"]).all()


def test_srpp_targets_mm_and_index_on_anisotropic_spacing():
    idx = torch.tensor([[10, 11, 12], [12, 11, 10]])  # second clip reversed
    z = idx.float() * 3.0  # 3 mm slices
    t_mm = srpp_targets(z, idx, "mm", scale_mm=10.0)
    t_ix = srpp_targets(z, idx, "index")
    assert t_mm[0, 0, 2] == pytest.approx(0.6) and t_mm[0, 2, 0] == pytest.approx(-0.6)
    assert t_mm[1, 0, 2] == pytest.approx(-0.6)  # reversed clip: opposite sign
    assert t_ix[0, 0, 1] == 1 and t_ix[1, 0, 2] == -2
    assert torch.all(torch.diagonal(t_mm, dim1=1, dim2=2) == 0)
    # a 1 mm-slice clip with the same index steps has a third of the mm target
    assert srpp_targets(idx.float(), idx, "mm", 10.0)[0, 0, 2] == pytest.approx(0.2)


def test_srpp_head_is_permutation_equivariant():
    torch.manual_seed(0)
    head = SRPPHead(dim=16, token_dim=16, layers=1, heads=2, hidden=16).eval()
    feats = torch.randn(1, 5, 16, 3, 3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    p = head(feats)
    pp = head(feats[:, perm])
    assert torch.allclose(pp, p[:, perm][:, :, perm], atol=1e-5)


def test_srpp_loss_ignores_diagonal_and_padding():
    pred = torch.zeros(1, 3, 3)
    tgt = torch.ones(1, 3, 3)
    assert srpp_loss(pred, tgt) == pytest.approx(1.0)
    valid = torch.tensor([[True, True, False]])
    tgt[0, :, 2] = 100.0
    assert srpp_loss(pred, tgt, valid) == pytest.approx(1.0)


def test_boundary_targets_on_known_masks():
    m = torch.zeros(1, 1, 10, 10)
    m[0, 0, 3:7, 3:7] = 1
    b = boundary_targets(m, width_px=1)[0, 0]
    # dilation 2:8, erosion 4:6 -> ring of 6x6 minus 2x2 = 32 pixels
    assert b.sum() == 32 and b[5, 5] == 0 and b[3, 3] == 1 and b[2, 2] == 1 and b[0, 0] == 0
    assert boundary_targets(torch.zeros(1, 1, 8, 8)).sum() == 0
    assert boundary_targets(torch.ones(1, 1, 8, 8)).sum() == 0  # max_pool pads with -inf: no image-edge boundary


def test_bd_loss_is_class_balanced():
    t = torch.zeros(1, 1, 10, 10)
    t[0, 0, 0, :2] = 1  # 2 % boundary
    lg = torch.zeros_like(t)
    # at p = 0.5 every pixel has the same BCE, so the balanced mean is log 2
    assert bd_loss(lg, t) == pytest.approx(float(np.log(2)), rel=1e-5)
    lg_bad = torch.where(t > 0, -5.0, 5.0)  # everything wrong
    lg_miss = torch.full_like(t, -5.0)      # predicts "no boundary" everywhere
    # missing the rare class costs far more than under plain BCE
    assert bd_loss(lg_miss, t) > 0.4 * bd_loss(lg_bad, t)


def _grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_srpp_and_bd_gradients_reach_the_adapter(full_model):
    cfg = model_cfg()
    batch = fake_batch()
    adapter = list(full_model.adapter.parameters())
    for term in ("srpp", "bd"):
        full_model.zero_grad(set_to_none=True)
        out = full_model.forward_clip(batch["image"])
        terms = compute_losses(out, batch, cfg)
        terms[term].backward()
        assert _grad_norm(adapter) > 0, term
        # SRPP/BD alone never touch the mask decoder's own weights
        assert _grad_norm(full_model.sam.sam_mask_decoder.transformer.parameters()) == 0, term


def test_bd_features_reach_the_mask_decoder_input():
    torch.manual_seed(0)
    model = build_model(model_cfg()["model"]).train()
    with torch.no_grad():
        model.fusion.gate.fill_(0.1)  # as after some training: the gate is open
    batch = fake_batch()
    out = model.forward_clip(batch["image"])
    compute_losses(out, batch, model_cfg())["seg"].backward()
    assert _grad_norm(model.bd.parameters()) > 0  # segmentation loss trains the BD branch through fusion


def test_zero_init_gate_and_adapter_start_as_sam2(full_model):
    assert torch.count_nonzero(full_model.fusion.gate) == 0
    for blk in full_model.adapter.blocks:
        assert torch.count_nonzero(blk.conv2.weight) == 0


def test_frozen_encoder_is_bit_identical_after_a_step():
    torch.manual_seed(0)
    cfg = model_cfg(freeze_encoder=True)
    model = build_model(cfg["model"]).train()
    before = {n: p.detach().clone() for n, p in model.sam.image_encoder.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.sam.image_encoder.named_buffers()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = fake_batch()
    compute_losses(model.forward_clip(batch["image"]), batch, cfg)["loss"].backward()
    opt.step()
    for n, p in model.sam.image_encoder.named_parameters():
        assert not p.requires_grad and torch.equal(p, before[n]), n
    for n, b in model.sam.image_encoder.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # while the trained parts did move
    assert not torch.equal(model.adapter.blocks[0].conv2.weight, torch.zeros_like(model.adapter.blocks[0].conv2.weight))


@pytest.mark.parametrize("variant,absent", [("sam2_ft", ["adapter", "srpp", "bd", "fusion"]), ("no_srpp", ["srpp"]),
                                            ("no_bd", ["bd", "fusion"])])
def test_variants_drop_modules(variant, absent):
    model = build_model(model_cfg(variant)["model"])
    for name in absent:
        assert getattr(model, name) is None
    out = model.train().forward_clip(torch.randn(1, 3, 3, S, S))
    assert out["mask_logits"].shape == (1, 3, S, S)


def test_checkpoint_holds_only_trainable_weights_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    cfg = model_cfg(freeze_encoder=True)
    model = build_model(cfg["model"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(tmp_path / "c.pt", model, None, None, 3, cfg, {"target": "spleen"})
    state = load_checkpoint(tmp_path / "c.pt")
    names = set(state["trainable"])
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("sam.image_encoder.") for n in names)
    assert state["config"]["model"]["image_size"] == S
    torch.manual_seed(0)
    fresh = build_model(cfg["model"])  # same seed: same frozen random weights
    load_trainable(fresh, state)
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_malicious_checkpoint_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"format": "x", "payload": Evil()}, fh)
    from sam2_3dmed.errors import InputFileError

    with pytest.raises(InputFileError):
        load_checkpoint(p)
    assert not marker.exists()


def test_seg_loss_without_object_score_learns_empty_slices():
    from sam2_3dmed.model.losses import seg_loss

    logits = torch.full((2, 8, 8), 3.0, requires_grad=True)  # confident foreground everywhere
    target = torch.zeros(2, 8, 8)
    target[0, 2:5, 2:5] = 1  # slice 0 holds the organ, slice 1 is empty
    present, valid = torch.tensor([True, False]), torch.tensor([True, True])
    sam = seg_loss(logits, target, present, valid)  # the empty slice is the object score's job
    assert torch.allclose(sam, seg_loss(logits[:1], target[:1], present[:1], valid[:1]))
    unet = seg_loss(logits, target, present, valid, absent_bce=True)
    unet.backward()
    assert unet > sam and logits.grad[1].abs().sum() > 0  # the empty slice is pushed towards background
    empty = seg_loss(logits[1:], target[1:], present[1:], valid[1:], absent_bce=True)
    assert empty > 0 and seg_loss(logits[1:], target[1:], present[1:], valid[1:]) == 0
