"""Claim: what SRPP + BD (+ slice adapter, BD-fusion) cost, in parameters, FLOPs and time.
The paper gives no cost analysis; this is ours.

Measured in one run, for the variants ``full``, ``no_srpp``, ``no_bd`` and ``sam2_ft`` of the
default config (``variants:``), SAM2.1 hiera-``--backbone`` (tiny), random init
(``model.pretrained: false``: no SAM2 weights offline; parameter counts, FLOPs and latency do
not depend on the weight values), encoder frozen as in the paper:

1. Parameters per module (total and trainable): image_encoder, adapter, srpp, bd, bd_fusion,
   memory_attention, memory_encoder, prompt_encoder, mask_decoder, other (SAM2's leftovers:
   object-pointer projections, no-memory embeddings, ...), grouped exactly as
   ``train.trainer.module_parameters`` (checked against it and against the model's total).
2. FLOPs per slice per module at inference, at each of ``--sizes`` (256, 512 px), counted
   by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate; it
   attributes FLOPs to the module paths on the call stack, summed here per module group).
   A slice costs, in ``auto`` mode, one encoding (image encoder, mask decoder's
   conv_s0/conv_s1 on the high-res FPN levels, adapter, BD head: ``SAM23dMed.encode`` +
   ``boundary``) plus 2 propagation steps (one per direction; memory attention, BD-fusion,
   prompt encoder, mask decoder, memory encoder). The counted step is the
   ``(max(num_maskmem, max_obj_ptrs_in_encoder) + 1)``-th of a pass, i.e. with a full memory bank
   (the conditioning slice + 6 previous memories, 16 object pointers); the bank's token
   count at that step is printed. SRPP is training-only: its FLOPs are reported per
   training clip of D slices (``--clip``, default ``train.clip_length``), forward and
   forward + backward. torch's FlopCounterMode has no formula for the CPU attention kernel
   (``aten._scaled_dot_product_flash_attention_for_cpu``), so every attention matmul would
   count as zero on a CPU; this script adds that formula (the same as torch's for the GPU
   kernels) and lists the ops it saw executed that are still not counted.
3. Inference latency per volume: the real ``infer.propagation.predict_by_propagation`` (auto mode, the
   config's ``infer.chunk`` and ``infer.feature_dtype``) on a synthetic prepared-like volume
   (a smooth body phantom in [0, 1], ``--slices`` per size: 24 at 256 px, 8 at 512 px by
   default), ``full`` vs ``sam2_ft`` (the baseline: plain SAM2, same propagation code),
   interleaved (ABBA order), one warm-up each on a 4-slice volume, ``--repeats`` calls each.
   ``predict_prepared``'s progress callback times every event of a call apart (each slice's
   encoding, each propagation step, the final resampling). Three best-of-N figures: the
   fastest whole call (wall); "best per event" (wall): the sum of each event's fastest time
   over the repeats, which filters bursts of load that other processes put on a shared
   machine; and the same per-event best of the process's CPU time, which with one torch
   thread is the latency on an idle machine and cannot be inflated by other processes
   competing for the cores. The headline is CPU time on a CPU with one thread, else
   wall "best per event" (GPU, or several threads).
   A 100-slice volume is extrapolated, clearly labelled as derived:
   measured + (100 - n) x (encode per slice + 2 x late propagation step), where the late step
   is the mean over the last quarter of each pass (on volumes shorter than 17 slices the
   bank holds fewer object pointers than on a long one: a slight underestimate).

One BENCH line per size: s/slice of ``full`` vs ``sam2_ft``; the ratio is expected < 1 because
adapter, BD head and BD-fusion add work at inference (SRPP does not run at inference).
On a CPU the run uses ``--threads`` torch threads (default 1: on a shared 2-core machine two
threads lose far more to contention than they gain; 0 = torch's default). ``--device cuda``
runs the same measurements on a GPU (synchronised before every clock read).
Writes the Markdown section ``benchmarks/sections/cost.md``.

Usage: python benchmarks/bench_cost.py [--backbone tiny] [--sizes 256 512] [--slices 24 8]
       [--repeats 3] [--clip 12] [--variants full no_srpp no_bd sam2_ft] [--threads 1]
       [--device cpu|cuda] [--no-latency]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import logging
import os
import shlex
import sys
import time

import numpy as np
import torch
from _common import emit, machine, write_section
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode

GROUPS = ["image_encoder", "adapter", "srpp", "bd", "bd_fusion", "memory_attention", "memory_encoder",
          "prompt_encoder", "mask_decoder", "other"]
PATHS = {  # group -> module path inside SAM23dMed (the prefixes of trainer.MODULES)
    "image_encoder": "sam.image_encoder", "adapter": "adapter", "srpp": "srpp", "bd": "bd", "bd_fusion": "fusion",
    "memory_attention": "sam.memory_attention", "memory_encoder": "sam.memory_encoder",
    "prompt_encoder": "sam.sam_prompt_encoder", "mask_decoder": "sam.sam_mask_decoder",
}
ENCODE_GROUPS = ["image_encoder", "mask_decoder", "adapter", "bd"]
STEP_GROUPS = ["memory_attention", "bd_fusion", "prompt_encoder", "mask_decoder", "memory_encoder", "other"]
MATMUL_LIKE = {"mm", "bmm", "addmm", "baddbmm", "matmul", "einsum", "linear", "attention", "convolution", "conv2d"}
LAYOUT = {  # ops without arithmetic: views, copies, allocation, indexing (left out of the uncounted list)
    "view", "_unsafe_view", "permute", "t", "transpose", "expand", "slice", "select", "alias", "unsqueeze", "squeeze",
    "detach", "lift_fresh", "split", "unbind", "empty", "zeros", "ones", "zeros_like", "ones_like", "full_like",
    "clone", "copy_", "_to_copy", "cat", "stack", "repeat", "arange", "index", "_unsafe_index", "constant_pad_nd",
    "view_as_complex", "view_as_real", "select_backward", "slice_backward", "new_zeros", "new_empty", "fill_",
    "zero_", "as_strided", "empty_strided", "_reshape_alias", "unfold", "roll", "flip", "where", "scalar_tensor",
}
ROOT = "_Probe.model"

# ---------------------------------------------------------------------------- FLOP counting


def _sdpa_flops(q_shape, k_shape, v_shape) -> int:
    """QK^T and AV of one attention call, 2 FLOPs per MAC (torch's sdpa_flop_count)."""
    *bq, sq, d = q_shape
    *_, sk, dv = v_shape
    bh = int(np.prod(bq)) if bq else 1
    return 2 * bh * sq * sk * d + 2 * bh * sq * sk * dv


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    """dQ, dK, dV, dP: four matmuls of the forward's size (torch's sdpa_backward_flop_count)."""
    return 2 * _sdpa_flops(query_shape, key_shape, value_shape)


CUSTOM = {}
for _name, _fn in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
                   ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop)):
    if hasattr(torch.ops.aten, _name):
        CUSTOM[getattr(torch.ops.aten, _name)] = _fn


class _OpRecorder(TorchDispatchMode):
    """Records every aten op that actually executes (entered below FlopCounterMode, so it
    sees the ops after the counter's own decompositions)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


class _Probe(torch.nn.Module):
    """Root for FlopCounterMode's module tracker: it names modules from the first forward it
    sees, so every window enters through here and paths read ``_Probe.model.<path>``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn()


class Window:
    """FLOPs of one call, per module group and per op."""

    def __init__(self, model, fn, device):
        rec, fc = _OpRecorder(), FlopCounterMode(display=False, custom_mapping=CUSTOM)
        with rec, fc:
            self.out = _Probe(model)(fn)
        sync(device)
        counts = fc.get_flop_counts()
        self.total = sum(counts.get("Global", {}).values())
        self.by_op = {str(k): v for k, v in counts.get("Global", {}).items()}
        self.groups = {g: _group_flops(counts, f"{ROOT}.{p}") for g, p in PATHS.items()}
        self.groups["other"] = self.total - sum(self.groups.values())
        if self.groups["other"] < 0:
            raise RuntimeError(f"module attribution double-counted: {self.groups}")
        registry = getattr(fc, "flop_registry", {})
        self.uncounted = collections.Counter({str(k): n for k, n in rec.ops.items() if k not in registry})
        self.custom = {str(k): v for k, v in counts.get("Global", {}).items() if k in CUSTOM}


def _group_flops(counts: dict, prefix: str) -> int:
    """FLOPs under ``prefix``: the outermost tracked modules at or below it (a submodule
    called directly, e.g. the mask decoder's conv_s0 at encode time, counts once)."""
    total = 0
    for name, ops in counts.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        parent, outermost = name, True
        while parent != prefix:
            parent = parent.rsplit(".", 1)[0]
            if parent in counts:
                outermost = False
                break
        if outermost:
            total += sum(ops.values())
    return total


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- models


def build(variant: str, size: int, backbone: str, device):
    from sam2_3dmed.config import load_config, variant_config
    from sam2_3dmed.model.factory import build_model

    cfg = variant_config(load_config(overrides={"model": {"backbone": backbone, "image_size": size,
                                                          "pretrained": False, "freeze_encoder": True}}), variant)
    torch.manual_seed(0)
    return build_model(cfg["model"], device).eval(), cfg


def params(model) -> dict:
    """{group: (total, trainable)} via trainer.module_parameters, checked against the model."""
    from sam2_3dmed.train.trainer import module_parameters

    mp = module_parameters(model)
    out = {g: (0, 0) for g in GROUPS}
    for k, v in mp.items():
        out["other" if k == "sam_other" else k] = (v["total"], v["trainable"])
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if sum(t for t, _ in out.values()) != total or sum(t for _, t in out.values()) != train:
        raise RuntimeError("module_parameters does not add up to the model's parameter count")
    return out


def flops(model, size: int, clip: int, device) -> dict:
    """Encode window, one full-bank propagation step, SRPP per clip (fwd, fwd+bwd)."""
    from sam2_3dmed.model.network import SliceFeatures

    sam = model.sam
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        enc = Window(model, lambda: (lambda f: (f, model.boundary(f)[1]))(model.encode(x)), device)
        f, q = enc.out
        n = max(sam.num_maskmem, sam.max_obj_ptrs_in_encoder) + 1  # the step with a full bank
        ex = lambda t: t.expand(n, *t.shape[1:]).contiguous()  # noqa: E731
        feats = SliceFeatures(ex(f.low), ex(f.s1), ex(f.s0), f.pos)
        gen = model.propagate_iter(feats, list(range(n)), None if q is None else ex(q))
        for _ in range(n - 1):
            next(gen)
        bank = {}

        def hook(_mod, args, kwargs):
            bank["memory"] = int(kwargs["memory"].shape[0])
            bank["ptr"] = int(kwargs.get("num_obj_ptr_tokens", 0))

        h = sam.memory_attention.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            step = Window(model, lambda: next(gen), device)
        finally:
            h.remove()
        hw = f.low.shape[-2] * f.low.shape[-1]
        bank["frames"] = (bank["memory"] - bank["ptr"]) / hw
        bank["hw"] = hw
    res = {"encode": enc, "step": step, "bank": bank, "srpp_fwd": None, "srpp_fb": None}
    if model.srpp is not None:  # training only: one clip of D slices
        srpp = model.srpp.train()
        srpp.requires_grad_(True)
        low = torch.randn(1, clip, *f.low.shape[1:], device=device)
        with torch.no_grad():
            res["srpp_fwd"] = Window(model, lambda: srpp(low), device)
        res["srpp_fb"] = Window(model, lambda: srpp(low).square().mean().backward(), device)
        srpp.requires_grad_(False)
        srpp.eval()
        srpp.zero_grad(set_to_none=True)
    return res


# ---------------------------------------------------------------------------- latency


def phantom(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A prepared-like volume (z, y, x) in [0, 1]: an elliptic body, a brighter organ, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    body = ((x / 0.85) ** 2 + (y / 0.65) ** 2) < 1
    organ = ((x - 0.3) / 0.25) ** 2 + ((y + 0.1) / 0.2) ** 2 + (z / 0.7) ** 2 < 1
    vol = 0.05 + 0.35 * body + 0.2 * organ + 0.03 * rng.standard_normal((n, size, size))
    return np.clip(vol, 0, 1).astype(np.float32)


def time_volume(model, vol: np.ndarray, icfg: dict, device) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One real ``predict_prepared`` call; returns the wall-clock and the process-CPU durations
    between its progress events (each encoded chunk, each propagation step, then the rest:
    resampling the output) and their kinds ("enc", "step", "rest"). Each adds up to the call's
    wall (CPU) time."""
    from sam2_3dmed.infer.propagation import predict_by_propagation

    n = vol.shape[0]
    marks = []

    def progress(done, _total):
        sync(device)
        marks.append((done, time.perf_counter(), time.process_time()))

    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    predict_by_propagation(model, vol, None, chunk=None if icfg["chunk"] == "auto" else icfg["chunk"], device=device,
                     feature_dtype=icfg["feature_dtype"], progress=progress)
    sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    kinds = ["enc" if m[0] <= n else "step" for m in marks] + ["rest"]
    if kinds.count("step") != 2 * n:
        raise RuntimeError(f"expected {2 * n} propagation steps, saw {kinds.count('step')}")
    return np.diff([t0, *(m[1] for m in marks), t1]), np.diff([c0, *(m[2] for m in marks), c1]), kinds


def summarise(durs: np.ndarray, kinds: list[str], n: int) -> dict:
    k = np.array(kinds)
    steps = durs[k == "step"]
    late = max(1, n // 4)
    late_step = float(np.mean(np.concatenate([steps[n - late:n], steps[2 * n - late:]])))
    return {"total": float(durs.sum()), "encode": float(durs[k == "enc"].sum()) / n, "step": float(steps.mean()),
            "late_step": late_step, "rest": float(durs[k == "rest"].sum()), "n": n}


def latency(models: dict, size: int, n: int, repeats: int, icfg: dict, device) -> dict:
    """Per variant: "best" = the fastest of ``repeats`` whole calls (wall clock); "composed" =
    the sum over the call's events (each slice's encoding, each propagation step, the rest) of
    each event's fastest wall time over the repeats, a best-of-N at event granularity that
    filters bursts of load from other processes; "cpu" = the same with the process's CPU time
    (with one torch thread: the call's uncontended latency, what another process's load on a
    shared machine cannot inflate). ABBA-interleaved, after one 4-slice warm-up each."""
    names = list(models)
    vol, warm = phantom(n, size), phantom(min(4, n), size, seed=1)
    for v in names:
        time_volume(models[v], warm, icfg, device)
    runs, cpu_runs = {v: [] for v in names}, {v: [] for v in names}
    kinds = None
    for r in range(repeats):
        for v in (names if r % 2 == 0 else names[::-1]):
            durs, cpus, kinds = time_volume(models[v], vol, icfg, device)
            runs[v].append(durs)
            cpu_runs[v].append(cpus)
            t, c = summarise(durs, kinds, n), summarise(cpus, kinds, n)
            print(f"  {size} px {v:8s} repeat {r + 1}/{repeats}: {t['total']:.2f} s/volume, CPU {c['total']:.2f} s "
                  f"({n} slices; encode {t['encode']:.3f} s/slice, propagation {t['step']:.3f} s/step)", flush=True)
    out = {}
    for v in names:
        best = min(runs[v], key=lambda d: d.sum())
        out[v] = {"best": summarise(best, kinds, n), "composed": summarise(np.min(runs[v], axis=0), kinds, n),
                  "cpu": summarise(np.min(cpu_runs[v], axis=0), kinds, n)}
    return out


# ---------------------------------------------------------------------------- formatting


def fp(n: int) -> str:
    if n == 0:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def gf(x: float) -> str:
    if x == 0:
        return "-"
    g = x / 1e9
    return f"{g:.1f}" if g >= 100 else f"{g:.2f}" if g >= 1 else f"{g:.3g}"


def per_slice(res: dict) -> float:
    return res["encode"].total + 2 * res["step"].total


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--slices", type=int, nargs="+", default=None,
                    help="latency volume slices per size (default 24 at <= 256 px, 8 above)")
    ap.add_argument("--repeats", type=int, default=3, help="latency repetitions per variant (best of)")
    ap.add_argument("--clip", type=int, default=None, help="SRPP clip length D (default: train.clip_length)")
    ap.add_argument("--variants", nargs="+", default=["full", "no_srpp", "no_bd", "sam2_ft"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-latency", action="store_true", help="parameters and FLOPs only")
    args = ap.parse_args()
    t_start = time.perf_counter()
    os.environ.setdefault("SAM2_3DMED_NO_PROGRESS", "1")
    logging.getLogger("sam2_3dmed").setLevel(logging.ERROR)  # no random-init banner per build
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_cost: --device cuda but no CUDA device is available")
        print(f"GPU: {torch.cuda.get_device_name(device)}", flush=True)
    for need in ("full", "sam2_ft"):
        if need not in args.variants:
            args.variants.append(need)
    slices = args.slices or [24 if s <= 256 else 8 for s in args.sizes]
    if len(slices) != len(args.sizes):
        raise SystemExit("bench_cost: --slices needs one value per --sizes entry")
    mline = machine(str(device))
    cmd = "python benchmarks/bench_cost.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    print(f"machine: {mline}\nbackbone: SAM2.1 hiera-{args.backbone}, random init, encoder frozen; "
          f"variants {args.variants}; sizes {args.sizes}", flush=True)

    P, F, L, bank, clip, icfg, ops_uncounted = {}, {}, {}, {}, None, None, collections.Counter()
    custom_share, trunk224 = {}, None
    for size, n in zip(args.sizes, slices):
        models = {}
        for v in args.variants:
            t0 = time.perf_counter()
            model, cfg = build(v, size, args.backbone, device)
            clip = args.clip or cfg["train"]["clip_length"]
            icfg = cfg["infer"]
            p = params(model)
            if v in P and P[v] != p:
                raise RuntimeError(f"{v}: parameter counts differ between sizes")
            P[v] = p
            model.requires_grad_(False)  # inference; also keeps FlopCounterMode's module tracker happy
            F[(v, size)] = r = flops(model, size, clip, device)
            bank[size] = r["bank"]
            for w in ("encode", "step", "srpp_fwd", "srpp_fb"):
                if r[w] is not None:
                    ops_uncounted.update(r[w].uncounted)
            cs = sum(r["encode"].custom.values()) + 2 * sum(r["step"].custom.values())
            custom_share[(v, size)] = cs / per_slice(r)
            print(f"[{size} px] {v:8s}: {sum(t for t, _ in p.values()) / 1e6:.2f} M params "
                  f"({sum(t for _, t in p.values()) / 1e6:.2f} M trainable); encode {gf(r['encode'].total)} GFLOPs, "
                  f"step {gf(r['step'].total)} GFLOPs, per slice {gf(per_slice(r))} GFLOPs "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
            if trunk224 is None:  # an independent check of the counting: Hiera's own 224-px figure
                x224 = torch.randn(1, 3, 224, 224, device=device)
                with torch.no_grad():
                    trunk224 = Window(model, lambda: model.sam.image_encoder.trunk(x224), device).total
                print(f"check: Hiera trunk at 224 px = {trunk224 / 2e9:.2f} GMACs"
                      + (" (Hiera-T in the Hiera paper: 4.9 G)" if args.backbone == "tiny" else ""), flush=True)
            if v in ("full", "sam2_ft"):
                models[v] = model
            else:
                del model
        b = bank[size]
        print(f"[{size} px] counted step's memory bank: {b['memory'] - b['ptr']} spatial memory tokens "
              f"({b['frames']:g} memories x {b['hw']}) + {b['ptr']} object-pointer tokens", flush=True)
        if not args.no_latency:
            L[size] = latency({"full": models["full"], "sam2_ft": models["sam2_ft"]}, size, n, args.repeats,
                              icfg, device)
        del models

    elapsed = time.perf_counter() - t_start
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    sizes = args.sizes
    md = [f"## Cost: parameters, FLOPs and latency (SAM2.1 hiera-{args.backbone})", "",
          f"Measured {date} on {mline} by `{cmd}`; {elapsed:.0f} s in all. Random init (no SAM2 weights offline; "
          "counts, FLOPs and latency do not depend on weight values), encoder frozen as in the paper.", "",
          "### Parameters per module", "",
          "total (trainable with the encoder frozen); the same at every image size.", "",
          "| module | " + " | ".join(args.variants) + " |", "|---|" + "---|" * len(args.variants)]
    for g in GROUPS:
        if any(P[v][g][0] for v in args.variants):
            md.append(f"| {g} | " + " | ".join(f"{fp(P[v][g][0])} ({fp(P[v][g][1])})" if P[v][g][0] else "-"
                                               for v in args.variants) + " |")
    tot = {v: (sum(t for t, _ in P[v].values()), sum(t for _, t in P[v].values())) for v in args.variants}
    md.append("| **total** | " + " | ".join(f"**{fp(tot[v][0])}** ({fp(tot[v][1])})" for v in args.variants) + " |")
    md.append("| at inference (no SRPP) | " + " | ".join(fp(tot[v][0] - P[v]["srpp"][0]) for v in args.variants)
              + " |")

    md += ["", "### FLOPs per slice at inference (`full`)", "",
           "GFLOPs (2 per multiply-accumulate), `torch.utils.flop_counter.FlopCounterMode`. Per slice in `auto` mode = "
           "one encoding + 2 propagation steps (one per direction: a volume of n slices needs n encodings and 2n "
           "steps; prompted `half` mode needs n + 1 steps). The counted step has a full memory bank: "
           + "; ".join(f"{s} px: {bank[s]['frames']:g} memories x {bank[s]['hw']} tokens + {bank[s]['ptr']} "
                       "object-pointer tokens" for s in sizes) + ".", "",
           "| phase | module | " + " | ".join(f"{s} px" for s in sizes)
           + (f" | {sizes[-1]}/{sizes[0]} |" if len(sizes) > 1 else " |"),
           "|---|---|" + "---|" * (len(sizes) + (len(sizes) > 1))]

    def row(label, mod, vals):
        ratio = f" | {vals[-1] / vals[0]:.2f}x" if len(vals) > 1 and vals[0] else (" | -" if len(vals) > 1 else "")
        return f"| {label} | {mod} | " + " | ".join(gf(x) for x in vals) + ratio + " |"

    for phase, key, groups in (("encode (x1 per slice)", "encode", ENCODE_GROUPS),
                               ("propagation step (x2 per slice)", "step", STEP_GROUPS)):
        for g in groups:
            vals = [F[("full", s)][key].groups[g] for s in sizes]
            if any(vals):
                label = g + (" (conv_s0/s1 on FPN levels)" if (key, g) == ("encode", "mask_decoder") else "")
                md.append(row(phase, label, vals))
        md.append(row(phase, f"**{key} total**", [F[("full", s)][key].total for s in sizes]))
    for v in args.variants:
        md.append(row("**per slice**", f"**{v}**", [per_slice(F[(v, s)]) for s in sizes]))
    md.append("| derived | sam2_ft / full per slice | " + " | ".join(
        f"{per_slice(F[('sam2_ft', s)]) / per_slice(F[('full', s)]):.3f}" for s in sizes)
        + (" | |" if len(sizes) > 1 else " |"))
    md += ["", f"Check of the counting: the Hiera trunk alone at 224 px counts {trunk224 / 2e9:.2f} G multiply-"
           "accumulates" + (", the Hiera paper's 4.9 G for Hiera-T (its 'FLOPs' are MACs)" if args.backbone == "tiny"
                            else "") + "."]
    fr = F[("full", sizes[0])]
    if fr["srpp_fwd"] is not None:
        md += ["", f"SRPP (training only, not run at inference), per training clip of D = {clip} slices: "
               + "; ".join(f"{s} px: {gf(F[('full', s)]['srpp_fwd'].groups['srpp'])} GFLOPs forward, "
                           f"{gf(F[('full', s)]['srpp_fb'].groups['srpp'] or F[('full', s)]['srpp_fb'].total)} "
                           "GFLOPs forward + backward" for s in sizes)
               + f" (it reads globally pooled tokens, so it does not grow with the image; the pooling itself is "
               f"not counted). For scale, encoding that clip costs {gf(clip * fr['encode'].total)} GFLOPs at "
               f"{sizes[0]} px."]
    cpu_op = "aten._scaled_dot_product_flash_attention_for_cpu"
    notc = sorted(o for o in ops_uncounted if o.replace("aten.", "") not in LAYOUT)
    suspicious = [o for o in notc if MATMUL_LIKE & set(o.replace("aten.", "").split("_"))]
    md += ["", "Ops: FlopCounterMode has no formula for the CPU attention kernel (`" + cpu_op + "` and its "
           "backward); this script adds torch's own SDPA formulas for them (QK^T + AV, backward 2x; softmax not "
           "counted). Without it every attention "
           "matmul on a CPU counts as zero: "
           + "; ".join(f"{custom_share[('full', s)] * 100:.0f} % of `full`'s per-slice FLOPs at {s} px" for s in sizes)
           + ". Executed but not counted (no FLOP formula: elementwise, reductions, normalisation, activations, "
           "resampling, pooling; views, copies and allocation not listed): "
           + ", ".join(f"`{o.replace('aten.', '')}`" for o in notc) + "."
           + (f" **Matmul-like ops not counted: {', '.join(suspicious)}.**" if suspicious else "")]

    # headline: CPU time where it equals uncontended latency (one torch thread on a CPU), else wall
    head = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "composed"
    labels = {"cpu": "CPU time, best per event", "composed": "wall, best per event", "best": "wall, best call"}
    if L:
        md += ["", f"### Inference latency per volume ({'GPU' if device.type == 'cuda' else 'CPU'})", "",
               f"Real `predict_prepared` (auto mode, both directions, chunk {icfg['chunk']}, feature cache "
               f"{icfg['feature_dtype']}) on a synthetic prepared-like volume, `full` and `sam2_ft` interleaved "
               f"(ABBA), one warm-up each, {args.repeats} repeats. *wall, best call*: the fastest whole call. "
               "*best per event*: the sum over the call's events (each slice's encoding, each propagation step, the "
               "final resampling) of each event's fastest time over the repeats: the same best-of-N at a finer "
               "grain, which filters bursts of load from other processes. *CPU time*: the process's CPU seconds "
               "instead of wall seconds; with one torch thread that is the call's latency on an idle machine, and "
               "it cannot be inflated by other processes competing for the cores (it can still be by shared caches "
               "and memory bandwidth). Headline (BENCH line): "
               f"*{labels[head]}*. encode = encoder + adapter + BD head per slice; step = one propagation step "
               "(2 per slice). The 100-slice column is **derived**, not measured: measured + (100 - n) x (encode "
               "+ 2 x late step), late step = mean of the last quarter of each pass.", "",
               "| size | variant | timing | slices | s/volume | s/slice | encode s/slice | s/step "
               "| derived: s per 100-slice volume |",
               "|---|---|---|---|---|---|---|---|---|"]
        for s in L:
            for est in (head, *(e for e in ("composed", "best", "cpu") if e != head)):
                if est == "cpu" and device.type == "cuda":
                    continue
                for v in ("full", "sam2_ft"):
                    t = L[s][v][est]
                    d100 = t["total"] + (100 - t["n"]) * (t["encode"] + 2 * t["late_step"])
                    md.append(f"| {s} px | {v} | {labels[est]} | {t['n']} | {t['total']:.2f} | "
                              f"{t['total'] / t['n']:.3f} | {t['encode']:.3f} | {t['step']:.3f} | {d100:.0f} |")
                f_, b_ = L[s]["full"][est], L[s]["sam2_ft"][est]
                md.append(f"| {s} px | **full / sam2_ft** | {labels[est]} | | **{f_['total'] / b_['total']:.2f}x** | "
                          f"| {f_['encode'] / b_['encode']:.2f}x | {f_['step'] / b_['step']:.2f}x | |")
        md += ["", "FLOPs predict full / sam2_ft = "
               + ", ".join(f"{per_slice(F[('full', s)]) / per_slice(F[('sam2_ft', s)]):.3f}x at {s} px" for s in L)
               + " per slice; a larger time ratio means the extra modules cost more time than their FLOP share on "
               "this device (small convolutions, GroupNorm, interpolation, float16 casts), a smaller one is noise."]
    text = "\n".join(md)
    path = write_section("cost", text)
    print("\n" + text + "\n", flush=True)
    print(f"section written to {path}", flush=True)
    for s in L:
        f_, b_ = L[s]["full"][head], L[s]["sam2_ft"][head]
        wall = {e: L[s]["sam2_ft"][e]["total"] / L[s]["full"][e]["total"] for e in ("composed", "best")}
        fl = per_slice(F[("sam2_ft", s)]) / per_slice(F[("full", s)])
        emit(f"inference latency per slice, full vs sam2_ft, {s} px {'GPU' if device.type == 'cuda' else 'CPU'}",
             f_["total"] / f_["n"], b_["total"] / b_["n"], "sam2_ft (plain SAM2, same propagation)", "s/slice",
             better="lower", machine_desc=mline,
             note=f"expected < 1: adapter + BD head + BD-fusion add work at inference (SRPP is training-only; "
                  f"FLOPs ratio sam2_ft/full {fl:.3f}); {labels[head]} of {args.repeats} interleaved calls, auto "
                  f"mode, {f_['n']}-slice volume, hiera-{args.backbone}; wall-clock ratios: best per event "
                  f"{wall['composed']:.3f}, best call {wall['best']:.3f}")
    print(f"bench_cost: done in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
