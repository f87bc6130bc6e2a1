"""SAM2-3dMed's whole-volume inference on the prepared grid: encode once, propagate both
ways [ours, method.md decision 6].

Each slice is encoded ONCE (in batches of ``chunk`` slices, see :func:`auto_chunk`) and its features cached,
optionally in a compact dtype (``infer.feature_dtype: float16`` in the config: about
2.6 MB per slice at 512 px, so a 300-slice volume needs ~0.8 GB instead of ~1.6 GB in
float32; features are cast back one slice at a time). SAM2 memory propagation then runs over the cached features in both directions and
the two probability maps are averaged.

Modes (always recorded next to the numbers they produce):

* ``auto`` (no prompt): each direction starts from its first slice as an unprompted
  conditioning slice and covers the whole volume. ``passes="forward"`` / ``"backward"``
  runs one direction only (evaluate's direction study: what the second direction adds).
* ``prompted``: boxes and positive/negative clicks on one or several slices; every
  prompted slice is a conditioning slice of both passes (an initial conditioning frame:
  all prompts are known before propagating, as clicks added on several frames before
  SAM2's video predictor propagates), and SAM2 attends to all of them. With prompted
  slices ``c_min <= ... <= c_max``, ``passes="half"`` (default, as in training and SAM2
  practice) propagates forward from ``c_min`` to the last slice and backward from
  ``c_max`` to slice 0; slices strictly between ``c_min`` and ``c_max`` (covered by both)
  get the mean of the two, the others the one pass that reaches them, the prompted slices
  their conditioning output. With one prompted slice ``k`` this is forward ``k..n-1`` and
  backward ``k-1..0``. ``passes="full"`` runs both directions over the whole volume with
  the prompted slices as conditioning memory (as SAM2's video predictor does when asked to
  propagate from the first and from the last frame) and averages them.

:func:`predict_by_propagation` is :func:`encode_volume` then :func:`propagate_volume`;
callers that predict several modes of one volume encode once and propagate per mode.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.slices import fit_to_square, to_sam_input, unfit
from ..device import autocast
from ..model.network import SAM23dMed, SliceFeatures
from ..model.prompts import Prompt, map_points, merge_prompts, prompt_points

#: auto mode one direction at a time (evaluate's direction study): first slice to last, or last to first
ONE_WAY = ("forward", "backward")
PASSES = ("half", "full", *ONE_WAY)
FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def auto_chunk(image_size: int, device) -> int:
    """Encoder batch size: large batches on a GPU; on a CPU, where big batches run slower
    per slice (measured: 512 px 1.02 s/slice at 1-2 slices, 1.39 s at 12), ~4 slices at
    128 px and 1 from 256 px up."""
    if torch.device(device).type == "cuda":
        return 16
    return max(1, (4 * 128 * 128) // (image_size * image_size))


def resolve_feature_dtype(feature_dtype: str, device) -> str:
    """``auto``: bfloat16 on a GPU (what bf16 autocast produces: stored as it comes), float16
    on a CPU (the same size, more mantissa bits)."""
    if feature_dtype == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" else "float16"
    return feature_dtype


def encode_volume(model: SAM23dMed, image_zyx, chunk: int | None = 16, device="cpu", feature_dtype: str = "float16",
                  progress=None, amp: torch.dtype | None = None):
    """Encode every slice once. Returns (features, boundary queries or None, FitInfo).

    Slices are fitted to the model's square input and normalised ``chunk`` at a time, so
    neither the 3-channel input volume nor float32 features of all slices exist at once; the
    cache (on ``device``) is allocated once, at its final size, when the first chunk shows
    the shapes. ``amp``: the autocast dtype on a GPU (None: float32).
    """
    store = FEATURE_DTYPES[resolve_feature_dtype(feature_dtype, device)]
    chunk = chunk or auto_chunk(model.image_size, device)
    n = image_zyx.shape[0]
    cache: dict[str, torch.Tensor] = {}
    pos, info = None, None
    for i in range(0, n, chunk):
        fitted, info = fit_to_square(np.asarray(image_zyx[i:i + chunk], dtype=np.float32), model.image_size)
        with autocast(device, amp):
            f = model.encode(to_sam_input(fitted).to(device, non_blocking=True))
            _, q = model.boundary(f)
        parts = {"low": f.low, "s1": f.s1, "s0": f.s0, **({"query": q} if q is not None else {})}
        for key, t in parts.items():
            if key not in cache:
                cache[key] = torch.empty((n, *t.shape[1:]), dtype=store, device=t.device)
            cache[key][i:i + t.shape[0]] = t
        pos = f.pos.to(store)
        if progress is not None:
            progress(min(n, i + chunk))
    feats = SliceFeatures(cache["low"], cache["s1"], cache["s0"], pos)
    return feats, cache.get("query"), info


def feature_bytes(feats: SliceFeatures, query: torch.Tensor | None) -> int:
    ts = [feats.low, feats.s1, feats.s0, feats.pos] + ([query] if query is not None else [])
    return sum(t.numel() * t.element_size() for t in ts)


def _points(prompt: Prompt, info, device):
    """The prompt as SAM2 points on the fitted model input: (coords (1, P, 2), labels (1, P)),
    or None for a prompt with nothing in it (an unprompted conditioning slice)."""
    if prompt.box is None and prompt.point is None and not prompt.clicks:
        return None
    coords, labels = prompt_points(prompt)
    return (torch.as_tensor(map_points(coords, info), dtype=torch.float32, device=device)[None],
            torch.as_tensor(labels, dtype=torch.int32, device=device)[None])


def _as_prompts(prompt, n: int) -> list[Prompt]:
    """None, one Prompt or several -> one merged Prompt per slice (sorted), checked against ``n``."""
    if prompt is None:
        return []
    prompts = merge_prompts([prompt] if isinstance(prompt, Prompt) else list(prompt))
    for p in prompts:
        if not 0 <= int(p.slice_index) < n:
            raise ValueError(f"prompt slice {p.slice_index} outside the volume's {n} slices")
    return prompts


def _plan(n: int, slices: list[int], passes: str) -> list[tuple[list[int], dict[int, float]]]:
    """The propagation passes: (order, weight per slice); a slice's probability is the
    weighted sum over passes, weight 0 = not taken from that pass. ``slices``: the prompted
    (conditioning) slices, sorted; [] = auto mode. A pass with nothing to take is left out."""
    fwd, bwd = list(range(n)), list(range(n - 1, -1, -1))
    if passes in ONE_WAY:  # auto mode, one direction only (evaluate.directions)
        if slices:
            raise ValueError(f"passes={passes!r} is for auto mode (no prompts): a prompted volume propagates both ways")
        order = fwd if passes == "forward" else bwd
        return [(order, dict.fromkeys(order, 1.0))]
    if not slices or passes == "full":
        return [(fwd, dict.fromkeys(fwd, 0.5)), (bwd, dict.fromkeys(bwd, 0.5))]
    lo, hi = slices[0], slices[-1]
    cond = set(slices)
    both = {s: 0.5 for s in range(lo + 1, hi) if s not in cond}  # covered by both passes
    up = {s: both.get(s, 1.0) for s in range(lo, n)}  # conditioning slices: their output, from here
    down = {s: (0.0 if s in cond else both.get(s, 1.0)) for s in range(hi, -1, -1)}
    plan = [(list(up), up)]
    if any(down.values()):
        plan.append((list(down), down))
    return plan


def _outputs(plan) -> int:
    """Slice outputs taken over the passes of ``plan`` (the progress total)."""
    return sum(1 for _order, weight in plan for w in weight.values() if w)


def _propagate(model, feats, query, info, n: int, prompts: list[Prompt], passes: str, device, tick=None,
               stats: dict | None = None, amp: torch.dtype | None = None, lockstep: bool = False) -> torch.Tensor:
    """Probability (n, S, S) float32 on the fitted model input (CPU), per :func:`_plan`.

    The probabilities are summed on ``device`` and copied to the host once. ``lockstep``:
    two passes of the same length (auto mode's two directions, or ``full``) run as one batch
    of two (:meth:`~sam2_3dmed.model.network.SAM23dMed.propagate_lockstep`), the same outputs."""
    size = model.image_size
    dev = torch.device(device)
    prob = torch.zeros(n, size, size, dtype=torch.float32, device=dev)
    slices = [int(p.slice_index) for p in prompts]
    conds = {int(p.slice_index): _points(p, info, device) for p in prompts}
    plan = _plan(n, slices, passes)
    lanes = [(order, conds or {order[0]: None}) for order, _ in plan]  # auto: the pass's first slice, unprompted
    steps = sum(len(set(order) | set(c)) for order, c in lanes)  # decoder runs
    with autocast(dev, amp):
        if lockstep and len(lanes) == 2 and len(lanes[0][0]) == len(lanes[1][0]):
            outputs = model.propagate_lockstep(feats, lanes, query)
        else:
            outputs = ((k, s, raw, obj) for k, (order, c) in enumerate(lanes)
                       for s, raw, obj in model.propagate_iter(feats, order, query, conds=c))
        for k, s, raw, obj in outputs:
            w = plan[k][1][s]
            if not w:
                continue
            prob[s] += w * _prob(raw, obj)[0].float()
            if tick is not None:
                tick()
    if stats is not None:
        stats.update(slices=n, steps=steps)
    return prob.cpu()


def _unfit(prob: torch.Tensor, info, chunk: int) -> np.ndarray:
    """The fitted-square probabilities back on the prepared grid, ``chunk`` slices at a time,
    into one array allocated once (no list of pieces joined at the end)."""
    out = None
    for i in range(0, prob.shape[0], chunk):
        part = unfit(prob[i:i + chunk], info, mode="bilinear").numpy()
        if out is None:
            out = np.empty((prob.shape[0], *part.shape[1:]), dtype=np.float32)
        out[i:i + part.shape[0]] = part
    return out


@torch.no_grad()
def propagate_volume(model: SAM23dMed, feats: SliceFeatures, query: torch.Tensor | None, info, n: int,
                     prompt: "Prompt | list[Prompt] | None", passes: str, device: str | torch.device,
                     progress=None, chunk: int | None = None, stats: dict | None = None,
                     amp: torch.dtype | None = None, lockstep: bool = False) -> np.ndarray:
    """Probability map (z, y, x) float32 on the prepared grid from the features of
    :func:`encode_volume` (``feats``, ``query``, ``info``) of an ``n``-slice volume.

    ``prompt``: None (auto mode), one :class:`Prompt` or several (merged per slice with
    :func:`~sam2_3dmed.model.prompts.merge_prompts`); ``passes`` "half" or "full" (module
    docstring), or in auto mode "forward" / "backward": one direction only, from the first
    (last) slice as the unprompted conditioning slice, each slice its one output.
    ``progress(done, total)`` is called per slice output; ``stats`` (a dict) receives
    ``slices`` and ``steps`` (decoder runs). ``chunk``: slices mapped back at a time.
    ``amp``: autocast dtype on a GPU (None: float32); ``lockstep``: two passes of the same
    length as one batch of two (the same outputs; faster where a batch of two costs about
    what one does, on a GPU).
    """
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {', '.join(PASSES)}, got {passes!r}")
    prompts = _as_prompts(prompt, n)
    was_training = model.training
    model.eval()
    try:
        total, done = _outputs(_plan(n, [int(p.slice_index) for p in prompts], passes)), [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        prob = _propagate(model, feats, query, info, n, prompts, passes, device, tick, stats, amp, lockstep)
        return _unfit(prob, info, chunk or auto_chunk(model.image_size, device))
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_by_propagation(model: SAM23dMed, image_zyx: np.ndarray, prompt: "Prompt | list[Prompt] | None" = None,
                           chunk: int | None = None, device: str | torch.device = "cpu",
                           feature_dtype: str = "float32", passes: str = "half", progress=None,
                           stats: dict | None = None, amp: torch.dtype | None = None,
                           lockstep: bool = False) -> np.ndarray:
    """Probability map (z, y, x) float32 on the prepared grid for a (z, y, x) image in [0, 1]:
    :func:`encode_volume` then :func:`propagate_volume`.

    ``prompt``: None (auto mode), one :class:`Prompt` or several (merged per slice).
    ``progress(done, total)`` is called as slices are encoded and propagated; ``stats``
    (a dict) receives the feature cache size in bytes and the number of propagation steps.
    ``amp`` and ``lockstep`` as in :func:`propagate_volume`.
    """
    if passes not in ("half", "full"):
        raise ValueError(f"passes must be 'half' or 'full', got {passes!r}")
    n = int(image_zyx.shape[0])
    prompts = _as_prompts(prompt, n)
    was_training = model.training
    model.eval()
    try:
        chunk = chunk or auto_chunk(model.image_size, device)
        total = n + _outputs(_plan(n, [int(p.slice_index) for p in prompts], passes))  # encoded + outputs
        done = [0]

        def report(value: int) -> None:
            done[0] = value
            if progress is not None:
                progress(value, total)

        def tick() -> None:
            report(done[0] + 1)

        feats, query, info = encode_volume(model, image_zyx, chunk, device, feature_dtype, progress=report, amp=amp)
        run: dict = {}
        prob = _propagate(model, feats, query, info, n, prompts, passes, device, tick, run, amp, lockstep)
        if stats is not None:
            stats.update(feature_cache_bytes=feature_bytes(feats, query), slices=n, steps=run["steps"])
        del feats, query
        return _unfit(prob, info, chunk)
    finally:
        model.train(was_training)


def _prob(logits: torch.Tensor, obj_logits: torch.Tensor) -> torch.Tensor:
    """Mask probability, zero on slices the object score calls absent (as SAM2 does)."""
    present = (obj_logits > 0).float()[..., None, None]
    return torch.sigmoid(logits) * present
