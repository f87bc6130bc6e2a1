"""Claim: our whole-volume inference encodes each slice once and is faster than SAM2's
video predictor run in both directions over the same volume, with the same output.

Baseline: ``sam2.sam2_video_predictor.SAM2VideoPredictor`` (the ``sam2`` package, Meta's
reference video inference), built from the same hydra config and the same image-size
overrides as our ``build_sam2_base`` (``_target_`` set to the video predictor), loaded
strictly with our model's ``sam.state_dict()``: identical weights on both sides. Our side
is the ``sam2_ft`` variant (plain SAM2: no adapter, no BD head/fusion), random init with
``--seed`` unless ``--checkpoint`` gives a trained sam2_ft ``best.pt``.

Volume: a synthetic spleen CT case (``synth_case``, ``--case``), prepared as the pipeline
does (``prepare_arrays``, 1.0 x 1.0 mm in-plane, the spleen target's window and crop),
``--slices`` slices around the organ kept, fitted to ``--size`` px squares, quantised to
uint8 and written as JPEG frames (quality 100, ``00000.jpg`` ...) for the video
predictor's ``init_state``. The decoded JPEGs (/255) are what our side gets, so both see
bit-identical frames. Prompt: the tight box of the label on its largest cross-section
(``key_slice``, ``box_from_mask``), the same box for both sides.

Settings (each: one warm-up, then the median of ``--repeats``, ours and theirs interleaved):

A. ``half``: ours ``predict_by_propagation(passes="half")`` vs ``propagate_in_video`` from the key
   slice k forward, then from k with ``reverse=True``; outputs combined per frame.
B. ``full``: ours ``predict_by_propagation(passes="full")`` vs ``propagate_in_video`` from frame 0
   forward and from frame n-1 in reverse (the prompted frame is conditioning memory of both
   passes), sigmoid probabilities averaged.

Our time is the whole ``predict_prepared`` call (encoding included). The video predictor
is timed twice: "propagation" (``add_new_points_or_box`` + the ``propagate_in_video``
calls) and "incl. init_state" (plus JPEG loading and its frame-0 warm-up encoding); a
fresh ``init_state`` is made each repeat. The ratio in the final line uses propagation
only (the conservative choice). Image-encoder calls (and images encoded) are counted on
both sides by wrapping ``image_encoder.forward``.

Matching the computation (``--baseline matched``, default). The video predictor's
constructor defaults already equal ours (``fill_hole_area=0``, ``non_overlap_masks=False``,
``clear_non_cond_mem_around_input=False``, ``add_all_frames_to_correct_as_cond=False``), and
without ``build_sam2_video_predictor``'s post-processing overrides there is no
``binarize_mask_from_pts_for_mem_enc`` and no dynamic multimask. Two things are changed:
``multimask_output_for_tracking=False`` (the SAM2.1 config picks the best of 3 masks by
predicted IoU on tracked frames; our propagation, as trained, always uses the single-mask
output), and in ``half`` the forward pass's non-conditioning memory is cleared before
the reverse pass (the video predictor would otherwise let frames k-1, k-2, ... attend to the
forward pass's frames k+1 ... k+6 and their object pointers; ours starts each half from
the prompted slice alone). Neither changes the amount of work. What remains different:
the video predictor stores memory features in bfloat16 (ours float32; on the CPU its
memory attention is given them cast back to float32, without which frame 0 of the forward
pass in ``full`` crashes, facebookresearch/sam2#308), encodes frames one
at a time (ours in batches of ``--chunk``) and, in ``full``, runs the prompted frame's
decoder once (ours once per direction). ``--baseline stock`` uses Meta's
``build_sam2_video_predictor`` post-processing (dynamic multimask via stability, binarised
prompted mask for the memory encoder, ``fill_hole_area=8``), the config's multimask
tracking and the plain forward-then-reverse use of one state: timing is comparable, the
outputs are not expected to agree (the hole filling needs sam2's compiled ``_C``
extension; without it sam2 warns and skips it).

What bounds the ratio: with E the encoder cost of one slice and S the cost of one
propagation step (memory attention + decoder + memory encoder), ``full`` costs
n (E + 2S) for ours and 2n (E + S) for the video predictor, so the ratio is
2 (E + S) / (E + 2S) < 2 (give or take how well each side's encoder batch runs); it
reaches 1.8x only where E >= 8 S, i.e. with a heavy encoder (``--backbone large``);
hiera-tiny at 128 px on a CPU has E ~ 2.5 S. ``half`` does the same work on both sides
(n encodings, ~n steps): the ratio there is ~1.

With random weights the probabilities sit close to 0.5 on every voxel, so the 0.5
threshold cuts through them and the Dice is sensitive to small differences; the
per-voxel probability difference is reported next to it.

Output quality check: foreground fraction of each output and the 3D Dice of the two
outputs thresholded at 0.5, plus the largest per-voxel probability difference and the
slice where the two differ most. Two empty outputs (random weights can make the object
score call every slice absent) are flagged: a Dice of 1.0 between empty masks proves
nothing; ``--obj-score-bias B`` then adds B to the object-score head's last bias in our
model BEFORE the weights are copied, so both sides still share identical weights.

Device (``--device``, default cpu): both sides run on it, the video predictor with its
frames and state there (``offload_video_to_cpu``/``offload_state_to_cpu`` off, as
``init_state``'s defaults); on CUDA every timer is read after ``torch.cuda.synchronize()``.
Both sides run in float32 (no autocast), as on the CPU, unless ``--amp``: both sides
under bf16 autocast (as Meta's demo notebooks run the video predictor on a GPU; ours with a
bf16 feature cache). ``--lockstep`` (default ``auto``: on CUDA) runs our two full passes in
lockstep, one batch of two (``infer.lockstep``); the video predictor has no such mode.

Usage: python benchmarks/bench_infer.py [--size 128] [--slices 64] [--repeats 3]
       [--settings half full] [--threads 1] [--checkpoint best.pt] [--baseline matched|stock]
       [--obj-score-bias 0] [--case 4] [--seed 0] [--chunk N] [--device cpu|cuda|cuda:N]
       [--amp] [--lockstep auto|on|off]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, machine

# --------------------------------------------------------------------------- volume


def make_volume(case: int, seed: int, slices: int, size: int, folder: Path):
    """Prepared synthetic spleen case -> (decoded frames (n, S, S) float32 in [0, 1],
    fitted label (n, S, S) bool, z offset of the window); JPEG frames written to ``folder``."""
    from PIL import Image

    from sam2_3dmed.config import load_config
    from sam2_3dmed.data.preprocess import prepare_arrays
    from sam2_3dmed.data.slices import fit_to_square
    from sam2_3dmed.data.synth import synth_case

    cfg = load_config(overrides={"targets": {"spleen": {"spacing_mm": [1.0, 1.0]}}})
    t, p = cfg["targets"]["spleen"], cfg["prepare"]
    img, lab = synth_case(t["task"], case, seed=seed)
    prep = prepare_arrays(
        np.asarray(img.dataobj), np.asarray(lab.dataobj), img.affine,
        spacing_mm=t["spacing_mm"], slice_spacing_mm=t["slice_spacing_mm"], hu_window=t["hu_window"],
        crop_margin_mm=t["crop_margin_mm"], crop_to_body=p["crop_to_body"],
        body_threshold_hu=p["body_threshold_hu"], image_interpolation=p["image_interpolation"],
        label_interpolation=p["label_interpolation"], target_labels=t["labels"],
    )
    nz = prep.image.shape[0]
    z = np.flatnonzero(prep.label.any(axis=(1, 2)))
    n = min(slices, nz)
    centre = (int(z[0]) + int(z[-1])) // 2
    z0 = int(np.clip(centre - n // 2, 0, nz - n))
    image, label = prep.image[z0:z0 + n], prep.label[z0:z0 + n]
    fitted, _ = fit_to_square(image, size)
    lab_fit, _ = fit_to_square(label.astype(np.float32), size, mode="mask")
    u8 = np.clip(np.rint(fitted.numpy() * 255.0), 0, 255).astype(np.uint8)
    decoded = np.empty(u8.shape, np.float32)
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(u8[i], mode="L").save(path, quality=100)
        rgb = np.asarray(Image.open(path).convert("RGB"))  # exactly what sam2's loader does
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise RuntimeError("decoded JPEG channels differ; the two sides would not see the same frames")
        decoded[i] = rgb[..., 0].astype(np.float32) / np.float32(255.0)
    jpeg_err = float(np.abs(decoded - fitted.numpy()).max())
    return decoded, lab_fit.numpy() > 0.5, z0, nz, jpeg_err


# --------------------------------------------------------------------------- models


def build_ours(args):
    """(our SAM23dMed sam2_ft model, backbone name, image size)."""
    from sam2_3dmed.model.backbone import _BACKBONE_ATTR, build_sam2_base
    from sam2_3dmed.model.network import SAM23dMed

    if args.checkpoint:
        from sam2_3dmed.infer.predict import load_model

        loaded = load_model(args.checkpoint, args.device)
        model = loaded.model
        extras = [n for n in ("adapter", "bd", "fusion") if getattr(model, n, None) is not None]
        if extras:
            raise SystemExit(f"bench_infer: {args.checkpoint} is a {loaded.variant!r} model with "
                             f"{', '.join(extras)}; SAM2VideoPredictor cannot reproduce those. "
                             "Use a sam2_ft checkpoint.")
        backbone = getattr(model.sam, _BACKBONE_ATTR, None)
        if backbone is None:
            raise SystemExit("bench_infer: cannot tell which SAM2 backbone the checkpoint's model uses")
        return model.eval(), backbone, int(model.image_size), f"checkpoint {args.checkpoint} ({loaded.variant})"
    torch.manual_seed(args.seed)
    sam = build_sam2_base(args.backbone, args.size, device="cpu", checkpoint=None)
    model = SAM23dMed(sam, adapter=False, srpp=False, bd=False, bd_fusion=False, freeze_encoder=True)
    # built (and randomly initialised) on the CPU, then moved: the same weights on every device
    return model.to(args.device).eval(), args.backbone, args.size, f"random init (seed {args.seed})"


def build_video_predictor(backbone: str, image_size: int, stock: bool):
    """SAM2VideoPredictor from the same hydra config + overrides as backbone._instantiate."""
    import sam2  # noqa: F401  (registers sam2's hydra config module)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sam2_3dmed.model.backbone import BACKBONES, PATCH_STRIDE

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    f = image_size // PATCH_STRIDE
    overrides = [  # exactly those of backbone._instantiate
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
        "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    ]
    if stock:  # build_sam2_video_predictor(apply_postprocessing=True)
        overrides += [
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
            "++model.binarize_mask_from_pts_for_mem_enc=true",
            "++model.fill_hole_area=8",
        ]
    else:  # our propagation decodes one mask per slice, as in training
        overrides += ["++model.multimask_output_for_tracking=false"]
    cfg = compose(config_name=BACKBONES[backbone], overrides=overrides)
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def fix_bf16_memory(vp) -> None:
    """The video predictor stores memory features in bfloat16; outside autocast (CPU,
    float32) a frame whose memory holds no float32 object pointer to promote them (e.g.
    frame 0 of a forward pass whose prompt lies later) crashes with "mat1 and mat2 must
    have the same dtype" (facebookresearch/sam2#308). Cast the memory to the features'
    dtype, which is what torch.cat already does whenever pointers are present."""
    inner = vp.memory_attention.forward

    def forward(*a, **kw):
        curr = kw.get("curr", a[0] if a else None)
        dtype = (curr[0] if isinstance(curr, (list, tuple)) else curr).dtype
        if "memory" in kw and kw["memory"].dtype != dtype:
            kw["memory"] = kw["memory"].to(dtype)
        return inner(*a, **kw)

    vp.memory_attention.forward = forward


class EncoderCounter:
    """Wraps ``image_encoder.forward``: counts calls and images encoded."""

    def __init__(self, encoder: torch.nn.Module):
        self.calls = self.images = 0
        inner = encoder.forward

        def forward(x, *a, **kw):
            self.calls += 1
            self.images += int(x.shape[0])
            return inner(x, *a, **kw)

        encoder.forward = forward

    def reset(self):
        self.calls = self.images = 0

    def read(self):
        return self.calls, self.images


# --------------------------------------------------------------------------- runs


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(model, frames, prompt, passes, chunk, counter, device="cpu", amp=False, lockstep=False):
    from sam2_3dmed.infer.propagation import predict_by_propagation

    counter.reset()
    _sync(device)
    t0 = time.perf_counter()
    prob = predict_by_propagation(model, frames, prompt, chunk=chunk, device=device,
                                  feature_dtype="bfloat16" if amp else "float32", passes=passes,
                                  amp=torch.bfloat16 if amp else None, lockstep=lockstep)
    _sync(device)
    dt = time.perf_counter() - t0
    return prob, dt, counter.read()


def run_theirs(vp, folder, n, k, box, setting, stock, counter, device="cpu"):
    """(prob (n, S, S), propagation s, init_state s, encoder (calls, images) in init, in propagation)."""
    counter.reset()
    _sync(device)
    t0 = time.perf_counter()
    # frames and state on the model's device (init_state's defaults; said explicitly)
    state = vp.init_state(video_path=str(folder), offload_video_to_cpu=False, offload_state_to_cpu=False,
                          async_loading_frames=False)
    _sync(device)
    t1 = time.perf_counter()
    enc_init = counter.read()
    counter.reset()
    vp.add_new_points_or_box(state, frame_idx=k, obj_id=1, box=np.asarray(box, np.float32))
    size = state["video_height"]

    def collect(gen, out):
        for f, _ids, masks in gen:
            out[f] = torch.sigmoid(masks[0, 0].float()).cpu().numpy()

    if setting == "half":
        prob = np.zeros((n, size, size), np.float32)
        collect(vp.propagate_in_video(state, start_frame_idx=k), prob)
        if not stock:  # start the inferior half from the prompted frame alone, as ours does
            for d in state["output_dict_per_obj"].values():
                d["non_cond_frame_outputs"].clear()
        # (rewrites frame k with the same values)
        collect(vp.propagate_in_video(state, start_frame_idx=k, reverse=True), prob)
    else:
        fwd = np.zeros((n, size, size), np.float32)
        bwd = np.zeros((n, size, size), np.float32)
        collect(vp.propagate_in_video(state, start_frame_idx=0), fwd)
        collect(vp.propagate_in_video(state, start_frame_idx=n - 1, reverse=True), bwd)
        prob = 0.5 * (fwd + bwd)
    _sync(device)
    t2 = time.perf_counter()
    enc_prop = counter.read()
    del state
    return prob, t2 - t1, t1 - t0, enc_init, enc_prop


def dice(a: np.ndarray, b: np.ndarray) -> float:
    den = a.sum() + b.sum()
    return 1.0 if den == 0 else float(2.0 * (a & b).sum() / den)


def compare(ours: np.ndarray, theirs: np.ndarray, k: int):
    a, b = ours > 0.5, theirs > 0.5
    diff = np.abs(ours - theirs)
    per_slice = diff.reshape(diff.shape[0], -1).max(1)
    worst = int(np.argmax(per_slice))
    return dict(
        fg_ours=float(a.mean()), fg_theirs=float(b.mean()), dice=dice(a, b), dice_k=dice(a[k], b[k]),
        max_diff=float(diff.max()), mean_diff=float(diff.mean()), max_diff_k=float(per_slice[k]),
        worst=worst, worst_diff=float(per_slice[worst]), worst_dice=dice(a[worst], b[worst]),
        slices_disagree=int(sum((a[i] != b[i]).any() for i in range(a.shape[0]))),
        empty=(not a.any()) and (not b.any()),
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128,
                    help="model input size in px (128 or 256; a checkpoint's own size wins)")
    ap.add_argument("--slices", type=int, default=64, help="slices kept around the organ (fewer if the case has fewer)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", nargs="+", choices=("half", "full"), default=["half", "full"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same for both sides")
    ap.add_argument("--checkpoint", default=None, help="a sam2_ft run's best.pt (default: random init)")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--baseline", choices=("matched", "stock"), default="matched")
    ap.add_argument("--obj-score-bias", type=float, default=0.0,
                    help="added to the object-score head's last bias (both sides) so that random weights "
                         "call the object present")
    ap.add_argument("--chunk", type=int, default=None, help="our encoder batch (slices; default: infer.propagation.auto_chunk)")
    ap.add_argument("--case", type=int, default=4, help="synthetic spleen case index (4 has 83 prepared slices)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both sides run (default cpu)")
    ap.add_argument("--amp", action="store_true", help="both sides under bf16 autocast (a GPU with native bf16)")
    ap.add_argument("--lockstep", choices=("auto", "on", "off"), default="auto",
                    help="our full passes in lockstep, one batch of two (auto: on CUDA)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench_infer: --device {args.device}: no CUDA device here (torch {torch.__version__})")
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise SystemExit(f"bench_infer: --device {args.device!r} is not a device: use cpu, cuda or cuda:N") from None
    lockstep = dev.type == "cuda" if args.lockstep == "auto" else args.lockstep == "on"
    if args.amp and dev.type != "cuda":
        raise SystemExit("bench_infer: --amp is for a GPU (bf16 autocast on a CPU is emulated and slow)")

    os.environ.setdefault("SAM2_3DMED_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)
    import sam2.sam2_video_predictor as svp
    import sam2.utils.misc as smisc

    svp.tqdm = smisc.tqdm = lambda it, *a, **kw: it  # no progress bars (and no bar overhead) in the baseline

    from sam2_3dmed.model.prompts import Prompt
    from sam2_3dmed.model.prompts import box_from_mask, key_slice

    model, backbone, size, origin = build_ours(args)
    logging.getLogger("sam2_3dmed").setLevel(logging.ERROR)
    if args.obj_score_bias:
        head = model.sam.sam_mask_decoder.pred_obj_score_head
        last = head.layers[-1] if hasattr(head, "layers") else head
        with torch.no_grad():
            last.bias += args.obj_score_bias
    vp = build_video_predictor(backbone, size, args.baseline == "stock")
    vp.load_state_dict(model.sam.state_dict(), strict=True)
    vp.to(dev).eval()
    fix_bf16_memory(vp)
    enc_ours, enc_theirs = EncoderCounter(model.sam.image_encoder), EncoderCounter(vp.image_encoder)

    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        folder = Path(tmp)
        frames, label, z0, nz, jpeg_err = make_volume(args.case, args.seed, args.slices, size, folder)
        n = frames.shape[0]
        k = key_slice(label)
        box = tuple(float(v) for v in box_from_mask(label[k]))
        prompt = Prompt(k, box=box)

        hw = (f"{torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}" if dev.type == "cuda"
              else f"{platform.processor() or platform.machine()}, CPU")
        print(f"device: {hw}, {torch.get_num_threads()} torch threads; "
              f"torch {torch.__version__}; SAM2.1 hiera-{backbone} at {size} px, {origin}"
              + (f", object-score bias {args.obj_score_bias:+g}" if args.obj_score_bias else ""))
        print(f"volume: synthetic spleen case {args.case} (seed {args.seed}), slices {z0}..{z0 + n - 1} of {nz} "
              f"-> {n} JPEG frames {size}x{size} (max |JPEG - float| {jpeg_err:.4f}, "
              f"both sides get the decoded frames); "
              f"box {tuple(round(v) for v in box)} on key slice {k} (label fg {label.mean():.4f})")
        print(f"baseline: SAM2VideoPredictor ({args.baseline}), fill_hole_area={vp.fill_hole_area}, "
              f"non_overlap_masks={vp.non_overlap_masks}, "
              f"multimask_output_for_tracking={vp.multimask_output_for_tracking}, "
              f"binarize_mask_from_pts_for_mem_enc={vp.binarize_mask_from_pts_for_mem_enc}; "
              f"median of {args.repeats} after 1 warm-up, interleaved")

        results = {}
        for setting in args.settings:
            t_ours, t_prop, t_init = [], [], []
            for r in range(args.repeats + 1):
                p_ours, dt, e_ours = run_ours(model, frames, prompt, setting, args.chunk, enc_ours, dev,
                                              args.amp, lockstep)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
                    p_theirs, tp, ti, e_init, e_prop = run_theirs(vp, folder, n, k, box, setting,
                                                                  args.baseline == "stock", enc_theirs, dev)
                if r:
                    t_ours.append(dt)
                    t_prop.append(tp)
                    t_init.append(ti)
            to, tp, ti = float(np.median(t_ours)), float(np.median(t_prop)), float(np.median(t_init))
            c = compare(p_ours, p_theirs, k)
            results[setting] = (to, tp, tp + ti, c)
            print(f"[{setting}] ours {to:.2f} s/volume ({to / n * 1e3:.0f} ms/slice); "
                  f"SAM2VideoPredictor {tp:.2f} s propagation, {tp + ti:.2f} s incl. init_state ({ti:.2f} s)")
            print(f"[{setting}] ratio theirs/ours: {tp / to:.2f}x propagation only, "
                  f"{(tp + ti) / to:.2f}x incl. init_state")
            print(f"[{setting}] image-encoder calls (images): ours {e_ours[0]} ({e_ours[1]}); "
                  f"SAM2VideoPredictor {e_init[0] + e_prop[0]} ({e_init[1] + e_prop[1]}) = "
                  f"init_state {e_init[0]} + propagation {e_prop[0]}; {n} slices")
            print(f"[{setting}] foreground fraction ours {c['fg_ours']:.4f}, theirs {c['fg_theirs']:.4f}; "
                  f"Dice(>0.5) {c['dice']:.4f} (key slice {k}: {c['dice_k']:.4f}); "
                  f"max |dp| {c['max_diff']:.2e} (key slice {c['max_diff_k']:.2e}), mean |dp| {c['mean_diff']:.2e}; "
                  f"worst slice {c['worst']} (|dp| {c['worst_diff']:.2e}, Dice {c['worst_dice']:.4f}); "
                  f"{c['slices_disagree']} of {n} slices differ after thresholding")
            if c["empty"]:
                print(f"[{setting}] WARNING: BOTH OUTPUTS ARE EMPTY (the object score calls every slice absent); "
                      "Dice 1.0 of two empty masks proves nothing. Use --checkpoint or --obj-score-bias.")

        for st, (to_, tp_, _, c_) in results.items():
            how = ", ".join(x for x in ("bf16 autocast" if args.amp else "",
                                        "lockstep" if lockstep and st == "full" else "") if x)
            emit(f"whole-volume inference ({st} passes{', ' + how if how else ''}), hiera-{backbone} {size} px, "
                 f"{n} slices", to_, tp_,
                 "sam2 SAM2VideoPredictor (same weights, frames, box)", "s/volume", better="lower",
                 machine_desc=machine(str(dev)), note=f"outputs agree: Dice {c_['dice']:.4f}" + (" (BOTH EMPTY)" if c_["empty"] else ""))
        s = "full" if "full" in results else args.settings[0]
        to, tp, tinc, c = results[s]
        note = " (BOTH EMPTY: proves nothing)" if c["empty"] else ""
        print(f"bench_infer: {s} setting ours {to:.2f} s vs SAM2VideoPredictor {tp:.2f} s per volume "
              f"(propagation; {tinc:.2f} s incl. init_state): {tp / to:.2f}x (goal >= 1.8x); "
              f"output Dice {c['dice']:.4f}, fg {c['fg_ours']:.4f} vs {c['fg_theirs']:.4f}{note}")


if __name__ == "__main__":
    main()
