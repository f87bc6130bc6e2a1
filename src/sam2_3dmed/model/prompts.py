"""Prompts: SAM2's convention, prompts simulated from masks, and their mapping onto the
model input [ours, method.md decision 7]. The one home for prompts: training simulates
them per clip, evaluation's ``prompted`` mode from the ground truth, ``predict`` takes them
from the user; all reach the model through :func:`prompt_points` and :func:`map_points`.

Coordinates are pixels with ``x`` = column and ``y`` = row, integer = pixel centre; a
box is ``[x0, y0, x1, y1]`` with the *inclusive* extreme columns/rows of the mask (as in
SAM's ``batched_mask_to_box``). :func:`map_points` moves coordinates from the prepared
slice onto the fitted S x S model input (see :mod:`sam2_3dmed.data.slices`).

SAM2 convention (``SAM2ImagePredictor`` / ``SAM2VideoPredictor.add_new_points_or_box``):
a box is two points labelled 2 (top-left) and 3 (bottom-right), placed *before* any
clicks; a positive click is labelled 1 (negative 0); -1 marks a padding point (no prompt).

Several prompts may be given on several slices (as clicks on several frames of SAM2's
video predictor): one :class:`Prompt` per slice, at most one box each, any number of
positive/negative clicks (:func:`merge_prompts`); every prompted slice is a conditioning
slice of the propagation (``infer/propagation.py``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..data.slices import FitInfo

BOX_LABELS = (2, 3)
POSITIVE = 1
NEGATIVE = 0
PADDING = -1


@dataclass
class Prompt:
    """A prompt on one slice of the prepared grid, in that slice's pixel coordinates.

    ``box`` and ``point`` (one positive click) are what training and evaluation simulate;
    ``clicks`` adds further clicks ``(x, y, label)`` on the same slice, label 1 positive,
    0 negative. A prompt with only negative clicks is allowed (SAM2 allows it); one with
    nothing marks an unprompted conditioning slice.
    """

    slice_index: int
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    point: tuple[float, float] | None = None  # x, y (positive click)
    clicks: tuple[tuple[float, float, int], ...] = ()  # (x, y, label 1/0), after the point

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "point"


def _mask2d(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {m.shape}")
    return m > 0.5 if m.dtype.kind == "f" else m != 0


def slice_areas(mask_zyx) -> np.ndarray:
    """Foreground pixels per slice of a (z, y, x) mask (int64)."""
    m = np.asarray(mask_zyx)
    if m.ndim != 3:
        raise ValueError(f"expected a (z, y, x) mask, got shape {m.shape}")
    m = m > 0.5 if m.dtype.kind == "f" else m != 0
    return m.reshape(m.shape[0], -1).sum(axis=1).astype(np.int64)


def key_slice(mask_zyx) -> int:
    """Index of the slice with the largest cross-section (first among ties); -1 if empty."""
    areas = slice_areas(mask_zyx)
    if areas.size == 0 or areas.max() == 0:
        return -1
    return int(np.argmax(areas))


def box_from_mask(mask2d, rng: np.random.Generator | None = None, jitter: float = 0.0) -> np.ndarray:
    """Tight box ``[x0, y0, x1, y1]`` (float32) of a non-empty 2D mask.

    With ``jitter > 0`` each side moves independently by up to ``jitter`` x the box's side
    length (uniform, from ``rng``), then the box is clipped to the image.
    """
    m = _mask2d(mask2d)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot make a box from an empty mask")
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)
    if jitter > 0:
        if rng is None:
            raise ValueError("box jitter needs an rng")
        w = box[2] - box[0] + 1.0
        h = box[3] - box[1] + 1.0
        box = box + rng.uniform(-jitter, jitter, size=4) * np.array([w, h, w, h])
        hgt, wid = m.shape
        box[[0, 2]] = np.clip(box[[0, 2]], 0, wid - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, hgt - 1)
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
    return box.astype(np.float32)


def point_from_mask(mask2d, rng: np.random.Generator | None = None) -> np.ndarray:
    """A positive click ``[x, y]`` (float32) inside a non-empty 2D mask.

    Without ``rng``: the foreground pixel farthest from the boundary (the image border
    counts as boundary; among ties, the one nearest to the ties' centroid). With ``rng``: a random
    foreground pixel drawn with probability proportional to its squared distance to the
    boundary, so clicks favour the interior but still vary.
    """
    m = _mask2d(mask2d)
    if not m.any():
        raise ValueError("cannot place a point in an empty mask")
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    if rng is None:
        # ties (a ridge of equally deep pixels): the one nearest to the ridge's centroid
        ys, xs = np.nonzero(dist >= dist.max() - 1e-6)
        k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        flat = int(np.ravel_multi_index((ys[k], xs[k]), m.shape))
    else:
        w = dist.ravel() ** 2
        flat = int(rng.choice(w.size, p=w / w.sum()))
    y, x = np.unravel_index(flat, m.shape)
    return np.array([x, y], dtype=np.float32)


def to_sam_points(box=None, point=None) -> tuple[np.ndarray, np.ndarray]:
    """(coords (1, P, 2) float32, labels (1, P) int32) in SAM2's convention.

    The box (if any) comes first as labels 2, 3; then the positive click (label 1).
    ``point`` may be one ``[x, y]`` or several ``(N, 2)`` positive clicks.
    """
    coords, labels = [], []
    if box is not None:
        b = np.asarray(box, dtype=np.float32).reshape(4)
        coords += [b[:2], b[2:]]
        labels += list(BOX_LABELS)
    if point is not None:
        p = np.asarray(point, dtype=np.float32).reshape(-1, 2)
        coords += list(p)
        labels += [POSITIVE] * len(p)
    if not coords:
        raise ValueError("to_sam_points needs a box, a point or both")
    return np.stack(coords)[None].astype(np.float32), np.asarray(labels, dtype=np.int32)[None]


def prompt_from_label(label_zyx, kind: str) -> Prompt | None:
    """Evaluation's simulated prompt: a tight box (``kind="box"``) or the deepest interior
    click (``"point"``) from the ground truth on its largest cross-section; None if empty."""
    lab = np.asarray(label_zyx) > 0
    if not lab.any():
        return None
    k = key_slice(lab)
    if kind == "box":
        return Prompt(k, box=tuple(float(v) for v in box_from_mask(lab[k])))
    return Prompt(k, point=tuple(float(v) for v in point_from_mask(lab[k])))


def prompts_from_label(label_zyx, kind: str, k: int) -> list[Prompt]:
    """Evaluation's ``k`` simulated prompts on ``k`` slices from the ground truth
    (deterministic); [] if the label is empty.

    ``k = 1``: exactly ``[prompt_from_label(label, kind)]`` (the key slice). ``k > 1``: the
    key slice (largest cross-section) plus ``k - 1`` slices spread over the organ's slice
    range ``[first, last]`` (first and last non-empty slice): ``k`` positions at the
    centres of ``k`` equal parts of the range, ``first - 0.5 + (j + 0.5) (last - first + 1) / k``;
    the position nearest to the key slice is dropped (the key slice stands for it), and each
    other one, in order, takes the nearest non-empty slice not yet taken (lower index among
    ties). An organ on at most ``k`` slices gets all of them. Each slice gets a tight box
    (``kind="box"``) or its deepest interior click (``"point"``) of that slice's mask, as
    :func:`prompt_from_label`. Returned sorted by slice.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k == 1:
        p = prompt_from_label(label_zyx, kind)
        return [] if p is None else [p]
    lab = np.asarray(label_zyx) > 0
    nonempty = np.flatnonzero(slice_areas(lab) > 0)
    if nonempty.size == 0:
        return []
    key = key_slice(lab)
    if nonempty.size <= k:
        chosen = [int(s) for s in nonempty]
    else:
        first, last = int(nonempty[0]), int(nonempty[-1])
        pos = first - 0.5 + (np.arange(k) + 0.5) * (last - first + 1) / k
        pos = np.delete(pos, int(np.argmin(np.abs(pos - key))))
        chosen, free = [key], [int(s) for s in nonempty if s != key]
        for p in pos:
            s = min(free, key=lambda t: (abs(t - p), t))
            free.remove(s)
            chosen.append(s)
    out = []
    for s in sorted(chosen):
        if kind == "box":
            out.append(Prompt(s, box=tuple(float(v) for v in box_from_mask(lab[s]))))
        else:
            out.append(Prompt(s, point=tuple(float(v) for v in point_from_mask(lab[s]))))
    return out


def slice_at_fraction(label_zyx, fraction: float) -> int:
    """The slice at ``fraction`` of the organ's extent: ``first + fraction (last - first)``
    (first and last slice with organ), rounded half up, then the nearest slice with organ
    (lower index among ties); -1 if the label is empty."""
    nonempty = np.flatnonzero(slice_areas(label_zyx) > 0)
    if nonempty.size == 0:
        return -1
    first, last = int(nonempty[0]), int(nonempty[-1])
    target = int(np.floor(first + float(fraction) * (last - first) + 0.5))
    return int(min(nonempty, key=lambda s: (abs(int(s) - target), int(s))))


def perturbation_draw(seed: int, case_id: str) -> np.ndarray:
    """A case's draw for the prompt perturbations: 4 numbers uniform in [-1, 1] (the box
    sides' shifts) and an angle in [0, 2 pi) (the click's direction), from ``seed`` and the
    case id only, so every level of a perturbation scales the same error."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(case_id).encode("utf-8"))])
    return np.concatenate([rng.uniform(-1.0, 1.0, size=4), rng.uniform(0.0, 2 * np.pi, size=1)])


def perturbed_prompt(label_zyx, kind: str, perturbation: str, level: float, draw: np.ndarray) -> Prompt | None:
    """Evaluation's prompt-robustness modes [ours: the paper tested none]: a worse prompt than
    :func:`prompt_from_label`'s, on one slice; None if the label is empty.

    * ``box_jitter``: the tight box of the key slice (largest cross-section) with each side
      moved by ``draw[i] * level`` times the box's side (``draw`` from
      :func:`perturbation_draw`: the same draw at every level), clipped to the slice, its
      corners re-sorted (as training's jitter, :func:`box_from_mask`). Level 0 is the tight box.
    * ``point_offset``: the deepest interior click of the key slice moved by ``level`` times
      the cross-section's radius ``sqrt(area / pi)`` in the direction ``draw[4]``, rounded to
      a pixel; a click that lands off the organ moves to the nearest organ pixel (lowest
      row, then column, among ties), so it stays a correct positive click. Level 0 is the
      deepest click.
    * ``key_slice``: the ``kind`` prompt (box or point, unperturbed) on the slice at ``level``
      of the organ's extent (:func:`slice_at_fraction`) instead of the largest cross-section.
    """
    lab = np.asarray(label_zyx) > 0
    if not lab.any():
        return None
    level = float(level)
    if perturbation == "key_slice":
        s = slice_at_fraction(lab, level)
        m = lab[s]
        if kind == "box":
            return Prompt(s, box=tuple(float(v) for v in box_from_mask(m)))
        return Prompt(s, point=tuple(float(v) for v in point_from_mask(m)))
    s = key_slice(lab)
    m = lab[s]
    if perturbation == "box_jitter":
        box = box_from_mask(m).astype(np.float64)
        if level > 0:
            w, h = box[2] - box[0] + 1.0, box[3] - box[1] + 1.0
            box = box + np.asarray(draw[:4], dtype=np.float64) * level * np.array([w, h, w, h])
            hgt, wid = m.shape
            box[[0, 2]] = np.clip(box[[0, 2]], 0, wid - 1)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, hgt - 1)
            box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        return Prompt(s, box=tuple(float(v) for v in box.astype(np.float32)))
    if perturbation == "point_offset":
        x, y = (float(v) for v in point_from_mask(m))
        if level > 0:
            r = float(np.sqrt(m.sum() / np.pi))
            ang = float(draw[4])
            x, y = np.floor(x + level * r * np.cos(ang) + 0.5), np.floor(y + level * r * np.sin(ang) + 0.5)
            hgt, wid = m.shape
            inside = 0 <= x < wid and 0 <= y < hgt and bool(m[int(y), int(x)])
            if not inside:
                ys, xs = np.nonzero(m)
                k = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))  # first in row-major order among ties
                x, y = float(xs[k]), float(ys[k])
        return Prompt(s, point=(float(x), float(y)))
    raise ValueError(f"unknown prompt perturbation {perturbation!r}: box_jitter, point_offset or key_slice")


def merge_prompts(prompts) -> list[Prompt]:
    """Prompts grouped per slice, sorted by slice index: one :class:`Prompt` per slice.

    A slice with one prompt keeps it as given. Several prompts on one slice merge into one:
    the box (at most one per slice: two raise ValueError naming the slice), the first
    ``point``, then the further points (as positive clicks) and all clicks in the order given.
    """
    groups: dict[int, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(int(p.slice_index), []).append(p)
    out = []
    for s in sorted(groups):
        group = groups[s]
        if len(group) == 1:
            out.append(group[0])
            continue
        boxes = [p.box for p in group if p.box is not None]
        if len(boxes) > 1:
            raise ValueError(f"{len(boxes)} boxes on slice {s}; at most one box per slice")
        point, clicks = None, []
        for p in group:
            if p.point is not None:
                if point is None:
                    point = p.point
                else:
                    clicks.append((float(p.point[0]), float(p.point[1]), POSITIVE))
            clicks.extend(p.clicks)
        out.append(Prompt(s, box=boxes[0] if boxes else None, point=point, clicks=tuple(clicks)))
    return out


def prompt_points(prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
    """A :class:`Prompt` as SAM2 points on its slice: (coords (P, 2) float32, labels (P,)
    int32): the box first (labels 2, 3), then ``point`` (1), then ``clicks`` in order."""
    coords, labels = [], []
    if prompt.box is not None or prompt.point is not None:
        c, lab = to_sam_points(box=prompt.box, point=prompt.point)
        coords, labels = list(c[0]), list(lab[0])
    for click in prompt.clicks:
        if len(click) != 3 or int(click[2]) not in (POSITIVE, NEGATIVE) or click[2] != int(click[2]):
            raise ValueError(f"a click is (x, y, label) with label 1 or 0, got {click!r} on slice {prompt.slice_index}")
        coords.append(np.asarray(click[:2], dtype=np.float32))
        labels.append(int(click[2]))
    if not coords:
        raise ValueError(f"the prompt on slice {prompt.slice_index} has no box, point or click")
    return np.stack(coords).astype(np.float32), np.asarray(labels, dtype=np.int32)


def clip_prompts(key_masks, use_box: bool, rng: np.random.Generator, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Training prompts for a batch: one box (jittered) or one random interior click per
    clip from its mask on the conditioning slice; a clip whose organ is absent there gets
    padding points (no prompt). Returns (coords (B, 2, 2) float32, labels (B, 2) int32)."""
    coords = np.zeros((len(key_masks), 2, 2), dtype=np.float32)
    labels = np.full((len(key_masks), 2), PADDING, dtype=np.int32)
    for b, m in enumerate(key_masks):
        m = np.asarray(m) > 0.5
        if not m.any():
            continue
        if use_box:
            coords[b] = box_from_mask(m, rng=rng, jitter=jitter).reshape(2, 2)
            labels[b] = BOX_LABELS
        else:
            coords[b, 0] = point_from_mask(m, rng=rng)
            labels[b, 0] = POSITIVE
    return coords, labels


def _apply_xy(coords, fn) -> np.ndarray:
    """Apply an (..., 2) -> (..., 2) coordinate map to points (..., 2) or boxes (..., 4)."""
    c = np.asarray(coords, dtype=np.float64)
    if c.shape[-1] == 4:
        return fn(c.reshape(*c.shape[:-1], 2, 2)).reshape(c.shape)
    if c.shape[-1] != 2:
        raise ValueError(f"expected (..., 2) points or (..., 4) boxes, got shape {c.shape}")
    return fn(c)


def map_points(coords, info: FitInfo) -> np.ndarray:
    """Prepared-slice pixel coordinates -> fitted S x S input coordinates (float32).

    ``coords``: (..., 2) points as (x, y), or (..., 4) boxes as [x0, y0, x1, y1].
    """
    return _apply_xy(coords, info.map_xy)


def unmap_points(coords, info: FitInfo) -> np.ndarray:
    """Inverse of :func:`map_points`: input coordinates -> prepared-slice pixels."""
    return _apply_xy(coords, info.unmap_xy)
