"""SAM2-3dMed: SAM2 (image encoder, memory attention, memory encoder, prompt encoder,
mask decoder from the ``sam2`` package) plus slice adapter, SRPP head, BD head and
BD-fusion. See method.md for the design and every decision marked [ours].

One slice-propagation routine serves training clips and whole volumes:
:meth:`SAM23dMed.encode` embeds slices (once), :meth:`SAM23dMed.propagate` runs SAM2's
memory mechanism over the slices in a given order, starting from one or several
conditioning slices (with box/click prompts in ``prompted`` mode, without one in ``auto`` mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapter import SliceAdapter
from .boundary import BDFusion, BDHead
from .ops import resize_bilinear
from .srpp import SRPPHead

NO_OBJ_SCORE = -1024.0  # SAM2's logit for "no object" masks


class _CaptureMemoryAttention(nn.Module):
    """Stands in for SAM2's memory attention while SAM2 gathers a frame's memories
    (:meth:`SAM23dMed.propagate_lockstep`): records the call's inputs and returns ``curr``
    unchanged, of the output's shape; the caller runs the real attention, batched."""

    def __init__(self):
        super().__init__()
        self.args: dict | None = None

    def forward(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0):
        self.args = {"curr": curr, "curr_pos": curr_pos, "memory": memory, "memory_pos": memory_pos,
                     "num_obj_ptr_tokens": num_obj_ptr_tokens}
        return curr[0] if isinstance(curr, list) else curr


def _remember(out_dict: dict, s: int, entry: dict, is_cond: bool, step: int, keep: int) -> None:
    """Keep slice ``s``'s memory entry as SAM2 does (conditioning or not); of the others only
    the last ``keep`` in propagation order (bounded memory on long volumes)."""
    if is_cond:
        out_dict["cond_frame_outputs"][s] = entry
        return
    out_dict["non_cond_frame_outputs"][s] = entry
    out_dict["non_cond_frame_outputs"].pop(s - step * keep, None)


@dataclass
class SliceFeatures:
    """Per-slice features, N slices: low (N, C, h, w) adapted; s1 (N, 64, 2h, 2w);
    s0 (N, 32, 4h, 4w); pos (1 or N, C, h, w) positional encoding of the low level."""

    low: torch.Tensor
    s1: torch.Tensor
    s0: torch.Tensor
    pos: torch.Tensor

    def select(self, idx) -> "SliceFeatures":
        pos = self.pos if self.pos.shape[0] == 1 else self.pos[idx]
        return SliceFeatures(self.low[idx], self.s1[idx], self.s0[idx], pos)

    def to(self, dtype: torch.dtype) -> "SliceFeatures":
        if self.low.dtype == dtype:
            return self
        return SliceFeatures(self.low.to(dtype), self.s1.to(dtype), self.s0.to(dtype), self.pos.to(dtype))


class SAM23dMed(nn.Module):
    accepts_prompts = True  # the model interface (model/factory.py)
    inference = "propagation"

    def __init__(self, sam, *, adapter: bool = True, srpp: bool = True, bd: bool = True, bd_fusion: bool = True,
                 freeze_encoder: bool = True, adapter_blocks: int = 2, srpp_layers: int = 2, srpp_heads: int = 4,
                 srpp_token_dim: int = 128, bd_hidden: int = 64):
        super().__init__()
        self.sam = sam
        dim = sam.hidden_dim
        self.image_size = sam.image_size
        self.adapter = SliceAdapter(dim, dim, adapter_blocks) if adapter else None
        self.srpp = SRPPHead(dim, srpp_token_dim, srpp_layers, srpp_heads) if srpp else None
        self.bd = BDHead(dim, hidden=bd_hidden) if bd else None
        self.fusion = BDFusion(dim) if (bd and bd_fusion) else None
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.sam.image_encoder.requires_grad_(False)

    # ------------------------------------------------------------------ encoding
    def encode(self, images: torch.Tensor) -> SliceFeatures:
        """images (N, 3, S, S), SAM2-normalised -> SliceFeatures."""
        enc = self.sam.image_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            if self.freeze_encoder:
                enc.eval()  # frozen means frozen: no dropout/drop-path noise either
            out = enc(images)
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        dec = self.sam.sam_mask_decoder
        s0, s1 = dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])
        low = fpn[2]
        if self.adapter is not None:
            low = self.adapter(low)
        return SliceFeatures(low, s1, s0, pos[2][:1])

    def boundary(self, f: SliceFeatures):
        """(boundary logits (N, 1, S, S), fusion queries (N, C, h, w)) or (None, None)."""
        if self.bd is None:
            return None, None
        return self.bd(f.low, f.s1, f.s0, self.image_size)

    # ------------------------------------------------------------------ SAM heads
    def _heads(self, pix, f: SliceFeatures, point_inputs):
        """SAM2's prompt encoder + mask decoder on memory-conditioned features ``pix``.

        Unlike SAM2Base._forward_sam_heads, this also returns the raw mask logits before
        absent slices are overwritten with NO_OBJ_SCORE, so the mask loss stays finite and
        differentiable on slices the model wrongly calls absent.
        """
        sam = self.sam
        b = pix.shape[0]
        if point_inputs is None:
            coords = torch.zeros(b, 1, 2, device=pix.device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=pix.device)
        else:
            coords, labels = point_inputs
        sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, _ious, tokens, obj_logits = sam.sam_mask_decoder(
            image_embeddings=pix,
            image_pe=sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[f.s0, f.s1],
        )
        raw = resize_bilinear(low_res.float(), (self.image_size, self.image_size))
        present = obj_logits > 0  # (B, 1)
        masked = torch.where(present[:, :, None, None], raw, torch.full_like(raw, NO_OBJ_SCORE))
        obj_ptr = sam.obj_ptr_proj(tokens[:, 0])
        lam = present.float()
        if sam.fixed_no_obj_ptr:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * sam.no_obj_ptr
        return raw[:, 0], masked, obj_logits[:, 0], obj_ptr, low_res

    # ------------------------------------------------------------------ propagation
    def propagate_iter(self, feats: SliceFeatures, order: list[int], bd_query: torch.Tensor | None = None,
                       prompt=None, batch: int = 1, keep_memory: int | None = None, *, cond: int | None = None,
                       conds: dict | None = None, reverse: bool | None = None, num_frames: int | None = None):
        """Run SAM2 memory propagation over slices ``order``; yield (slice, logits, obj).

        ``feats`` hold ``batch * n_slices`` slices laid out (batch, slice), possibly stored in a
        compact dtype (they are cast to the model's dtype one slice at a time); ``order``
        indexes slices within one batch item.

        Conditioning slices: ``conds`` maps slice index -> SAM2 points for that slice,
        (coords (B, P, 2), labels (B, P)), or None for an unprompted conditioning slice
        (auto mode). Without ``conds``, the one conditioning slice is ``cond`` (default
        ``order[0]``) with ``prompt`` (or none), i.e. ``conds={cond: prompt}``. Every
        conditioning slice is processed first, in index order, as an initial conditioning
        frame (no memory: all prompts are known up front, as points added before any
        propagation in SAM2's video predictor); when ``order`` reaches one its output is
        yielded there, not recomputed. The other slices attend to the conditioning slices'
        memory (SAM2 selects them, ``max_cond_frames_in_attn``) and to the recent
        non-conditioning memory, keyed by slice index: the "previous" slice is s - 1, or
        s + 1 with ``reverse`` (default: the order descends), exactly SAM2's
        ``track_in_reverse``. Yields per slice in ``order``: raw mask logits (B, S, S) and
        object logits (B,).
        """
        sam = self.sam
        n = feats.low.shape[0] // batch
        num_frames = num_frames or n
        if conds is None:
            conds = {order[0] if cond is None else cond: prompt}
        elif cond is not None or prompt is not None:
            raise ValueError("give conds, or cond/prompt, not both")
        if not conds:
            raise ValueError("propagation needs at least one conditioning slice")
        if reverse is None:
            reverse = len(order) > 1 and order[1] < order[0]
        step = -1 if reverse else 1
        h, w = feats.low.shape[-2:]
        keep = keep_memory or max(sam.num_maskmem, sam.max_obj_ptrs_in_encoder) + 1
        dtype = next(self.sam.sam_mask_decoder.parameters()).dtype
        cast = feats.low.dtype != dtype and not torch.is_autocast_enabled()  # compact storage
        out_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        cond_results = {}
        for s in [*sorted(conds), *order]:
            if s in conds and s in cond_results:  # the order reaches a conditioning slice
                yield (s, *cond_results[s])
                continue
            idx = torch.arange(batch, device=feats.low.device) * n + s
            f = feats.select(idx).to(dtype) if cast else feats.select(idx)
            flat = f.low.flatten(2).permute(2, 0, 1)  # (hw, B, C)
            pos = f.pos.expand(batch, -1, -1, -1).flatten(2).permute(2, 0, 1)
            is_cond = s in conds
            pts = conds[s] if is_cond else None
            pix = sam._prepare_memory_conditioned_features(
                frame_idx=s, is_init_cond_frame=is_cond, current_vision_feats=[flat],
                current_vision_pos_embeds=[pos], feat_sizes=[(h, w)], output_dict=out_dict,
                num_frames=num_frames, track_in_reverse=reverse,
            )
            pix = self._fuse(pix, bd_query, idx, f, cast, dtype)
            raw, obj_logit, entry = self._decode(pix, f, flat, pts, (h, w))
            _remember(out_dict, s, entry, is_cond, step, keep)
            if is_cond:
                cond_results[s] = (raw, obj_logit)
                continue  # yielded when the order reaches it
            yield s, raw, obj_logit

    def _fuse(self, pix, bd_query, idx, f: SliceFeatures, cast: bool, dtype):
        """BD-fusion of the memory-conditioned features ``pix`` of slices ``idx`` (unchanged
        without the fusion module)."""
        if self.fusion is None:
            return pix
        q = bd_query[idx].to(dtype) if cast else bd_query[idx]
        return self.fusion(pix, q, f.low, f.pos.expand(pix.shape[0], -1, -1, -1))

    def _decode(self, pix, f: SliceFeatures, flat, pts, hw):
        """Mask decoder and memory encoder of one step: (raw logits, object logits, the memory
        entry SAM2 keeps for the slice)."""
        raw, masked, obj_logit, obj_ptr, _ = self._heads(pix, f, pts)
        mem, mem_pos = self.sam._encode_new_memory(
            current_vision_feats=[flat], feat_sizes=[hw], pred_masks_high_res=masked,
            object_score_logits=obj_logit[:, None], is_mask_from_pts=pts is not None,
        )
        return raw, obj_logit, {"maskmem_features": mem, "maskmem_pos_enc": mem_pos, "obj_ptr": obj_ptr}

    def propagate_lockstep(self, feats: SliceFeatures, lanes: list[tuple[list[int], dict]],
                           bd_query: torch.Tensor | None = None, num_frames: int | None = None):
        """Several independent propagations of one volume (``lanes``: (order, conds) each, orders
        of equal length, as :meth:`propagate_iter`'s ``order`` and ``conds``) in lockstep: at
        each step every lane's next slice is processed in ONE batch (memory attention, BD
        fusion, mask decoder, memory encoder), each lane with its own memory bank. Yields
        (lane, slice, logits (1, S, S), obj (1,)) in the order of the lanes at each step;
        per lane exactly what :meth:`propagate_iter` yields, in the same order.

        What each lane's slice attends to is chosen by SAM2's own
        ``_prepare_memory_conditioned_features`` (run per lane with its memory attention
        captured, not called); lanes whose memories have the same layout (the two directions
        of auto mode always do: their memory banks mirror each other) share one batched
        memory-attention call, others get their own. ``feats`` hold one volume (batch 1).
        """
        sam = self.sam
        n = feats.low.shape[0]
        num_frames = num_frames or n
        if len({len(order) + len(conds) for order, conds in lanes}) != 1:
            raise ValueError("lockstep lanes need orders of the same length")
        h, w = feats.low.shape[-2:]
        keep = max(sam.num_maskmem, sam.max_obj_ptrs_in_encoder) + 1
        dtype = next(self.sam.sam_mask_decoder.parameters()).dtype
        cast = feats.low.dtype != dtype and not torch.is_autocast_enabled()
        states = []
        for order, conds in lanes:
            if not conds:
                raise ValueError("propagation needs at least one conditioning slice")
            reverse = len(order) > 1 and order[1] < order[0]
            states.append({"seq": [*sorted(conds), *order], "conds": conds, "reverse": reverse,
                           "step": -1 if reverse else 1, "cond_results": {},
                           "out": {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}})
        for i in range(len(states[0]["seq"])):
            todo = []
            for lane, st in enumerate(states):
                s = st["seq"][i]
                if s in st["conds"] and s in st["cond_results"]:  # the order reaches a conditioning slice
                    yield (lane, s, *st["cond_results"][s])
                else:
                    todo.append((lane, s))
            if not todo:
                continue
            idx = torch.tensor([s for _, s in todo], device=feats.low.device)
            f = feats.select(idx).to(dtype) if cast else feats.select(idx)
            flat = f.low.flatten(2).permute(2, 0, 1)  # (hw, L, C)
            pos = f.pos.expand(len(todo), -1, -1, -1).flatten(2).permute(2, 0, 1)
            pix = self._fuse(self._lockstep_memory(states, todo, flat, pos, (h, w), num_frames), bd_query, idx, f,
                             cast, dtype)
            pts = [states[lane]["conds"].get(s) for lane, s in todo]
            # unprompted slices decode as one batch; prompted ones (their points differ in number) one by one
            groups = [list(range(len(todo)))] if all(p is None for p in pts) else [[j] for j in range(len(todo))]
            results = [None] * len(todo)
            for g in groups:
                sel = torch.tensor(g, device=feats.low.device)
                raw, obj_logit, entry = self._decode(pix[sel], f.select(sel), flat[:, sel],
                                                     pts[g[0]] if len(g) == 1 else None, (h, w))
                for k, j in enumerate(g):
                    results[j] = (raw[k:k + 1], obj_logit[k:k + 1],
                                  {"maskmem_features": entry["maskmem_features"][k:k + 1],
                                   "maskmem_pos_enc": [m[k:k + 1] for m in entry["maskmem_pos_enc"]],
                                   "obj_ptr": entry["obj_ptr"][k:k + 1]})
            for (lane, s), (raw, obj_logit, entry) in zip(todo, results):
                st = states[lane]
                _remember(st["out"], s, entry, s in st["conds"], st["step"], keep)
                if s in st["conds"]:
                    st["cond_results"][s] = (raw, obj_logit)
                    continue
                yield lane, s, raw, obj_logit

    def _lockstep_memory(self, states, todo, flat, pos, hw, num_frames) -> torch.Tensor:
        """Memory-conditioned features (L, C, h, w) of the lanes' slices ``todo``: SAM2 gathers
        each lane's memories; lanes with equal memory layouts share a memory-attention call."""
        sam = self.sam
        h, w = hw
        real = sam.memory_attention
        pix: list = [None] * len(todo)
        calls: list[tuple[int, dict]] = []
        capture = _CaptureMemoryAttention()
        sam._modules["memory_attention"] = capture  # SAM2 picks the memories; we batch the attention
        try:
            for j, (lane, s) in enumerate(todo):
                st = states[lane]
                capture.args = None
                out = sam._prepare_memory_conditioned_features(
                    frame_idx=s, is_init_cond_frame=s in st["conds"], current_vision_feats=[flat[:, j:j + 1]],
                    current_vision_pos_embeds=[pos[:, j:j + 1]], feat_sizes=[(h, w)], output_dict=st["out"],
                    num_frames=num_frames, track_in_reverse=st["reverse"])
                if capture.args is None:
                    pix[j] = out  # no attention (an initial conditioning slice with no-memory embedding)
                else:
                    calls.append((j, capture.args))
        finally:
            sam._modules["memory_attention"] = real
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for j, a in calls:
            layout = (tuple(a["memory"].shape), a["num_obj_ptr_tokens"])
            groups.setdefault(layout, []).append((j, a))
        for members in groups.values():
            cat = lambda key: torch.cat([a[key] for _, a in members], 1)  # noqa: E731  (seq, L, C)
            out = real(curr=[torch.cat([a["curr"][0] for _, a in members], 1)],
                       curr_pos=[torch.cat([a["curr_pos"][0] for _, a in members], 1)],
                       memory=cat("memory"), memory_pos=cat("memory_pos"),
                       num_obj_ptr_tokens=members[0][1]["num_obj_ptr_tokens"])
            out = out.permute(1, 2, 0).reshape(len(members), -1, h, w)
            for k, (j, _) in enumerate(members):
                pix[j] = out[k:k + 1]
        return torch.cat(pix, 0)

    def propagate(self, feats: SliceFeatures, order: list[int], bd_query: torch.Tensor | None = None,
                  prompt=None, batch: int = 1, keep_memory: int | None = None, **kw):
        """:meth:`propagate_iter` collected: logits (B, len(order), S, S), obj (B, len(order))."""
        logits, obj = [], []
        for _s, raw, o in self.propagate_iter(feats, order, bd_query, prompt, batch, keep_memory, **kw):
            logits.append(raw)
            obj.append(o)
        return torch.stack(logits, 1), torch.stack(obj, 1)

    # ------------------------------------------------------------------ training forward
    def forward_clip(self, images: torch.Tensor, key_index: torch.Tensor | None = None, prompt=None) -> dict:
        """Training/validation forward over clips.

        images (B, D, 3, S, S). Auto mode (``prompt`` None): slices are processed in clip
        order from slice 0. Prompted mode: ``prompt`` on slice ``key_index`` (same for the
        whole batch), propagated forward to the clip end and backward to its start.
        Returns mask_logits (B, D, S, S), obj_logits (B, D), srpp (B, D, D) or None,
        bd_logits (B, D, S, S) or None.
        """
        b, d = images.shape[:2]
        feats = self.encode(images.flatten(0, 1))
        srpp = None
        if self.srpp is not None and self.training:
            srpp = self.srpp(feats.low.view(b, d, *feats.low.shape[1:]))
        bd_logits, bd_query = self.boundary(feats)
        if prompt is None:
            logits, obj = self.propagate(feats, list(range(d)), bd_query, None, batch=b)
        else:
            k = int(key_index)
            fwd_l, fwd_o = self.propagate(feats, list(range(k, d)), bd_query, prompt, batch=b)
            bwd_l, bwd_o = self.propagate(feats, list(range(k, -1, -1)), bd_query, prompt, batch=b)
            logits = torch.cat([bwd_l.flip(1)[:, :k], fwd_l], 1)
            obj = torch.cat([bwd_o.flip(1)[:, :k], fwd_o], 1)
        out = {"mask_logits": logits, "obj_logits": obj, "srpp": srpp, "bd_logits": None}
        if bd_logits is not None:
            out["bd_logits"] = bd_logits.view(b, d, *bd_logits.shape[-2:])
        return out
