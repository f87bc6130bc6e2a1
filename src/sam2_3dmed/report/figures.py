"""Figures as base64 PNG data URIs (matplotlib's Agg canvas, no pyplot global state).

* :func:`distribution_figure`  box + strip plot per metric, variant and mode
* :func:`training_figure`      every loss term and validation Dice vs step, for one run
* :func:`case_figure`          axial / coronal / sagittal views of one case with GT and
                               prediction contours, in mm, in a radiological orientation
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .collect import LOSS_TERMS, METRICS

DPI = 80
MODE_COLOURS = {"auto": "#1f77b4", "prompted": "#ff7f0e"}
EXTRA_COLOURS = ["#2ca02c", "#9467bd", "#8c564b", "#17becf"]
LOSS_COLOURS = {"loss": "black", "seg": "#1f77b4", "obj": "#ff7f0e", "srpp": "#2ca02c", "bd": "#d62728"}
GT_COLOUR = "#00e000"
PRED_COLOUR = "#ff00ff"
CROP_MARGIN_MM = 25.0


def to_data_uri(fig: Figure, dpi: int = DPI, palette: bool = False) -> str:
    """PNG as a data URI; ``palette`` stores line plots with 256 colours (about 3x smaller)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    if palette:  # not for CT images: 256 colours would posterise the grey levels
        from PIL import Image

        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mode_colour(mode: str, modes: list[str]) -> str:
    if mode in MODE_COLOURS:
        return MODE_COLOURS[mode]
    return EXTRA_COLOURS[modes.index(mode) % len(EXTRA_COLOURS)]


# ---------------------------------------------------------------- distributions
def distribution_figure(df, variants: list[str], modes: list[str], labels: dict[str, str]) -> str | None:
    """One panel per metric; a box per variant x mode with the cases as jittered points."""
    groups = [(v, m) for v in variants for m in modes
              if not df[(df["variant"] == v) & (df["mode"] == m)].empty]
    if not groups:
        return None
    ncols = 3 if len(groups) <= 6 else 2
    nrows = -(-len(METRICS) // ncols)
    panel_w = max(3.2, 0.42 * len(groups) + 1.2)
    fig = Figure(figsize=(panel_w * ncols, 2.9 * nrows), layout="constrained")
    rng = np.random.default_rng(0)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, METRICS):
        data = [df[(df["variant"] == v) & (df["mode"] == m)][metric].to_numpy(dtype=float) for v, m in groups]
        pos = np.arange(1, len(groups) + 1)
        bp = ax.boxplot(data, positions=pos, widths=0.6, showfliers=False, patch_artist=True)
        for patch, (_, m) in zip(bp["boxes"], groups):
            patch.set_facecolor(_mode_colour(m, modes))
            patch.set_alpha(0.35)
        for median in bp["medians"]:
            median.set_color("black")
        for p, vals, (_, m) in zip(pos, data, groups):
            ax.scatter(p + rng.uniform(-0.15, 0.15, len(vals)), vals, s=9, color=_mode_colour(m, modes),
                       edgecolors="black", linewidths=0.3, zorder=3)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{v}\n{m}" for v, m in groups], fontsize=7, rotation=0 if len(groups) <= 6 else 45)
        ax.set_title(labels.get(metric, metric), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(METRICS):]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="s", linestyle="", color=_mode_colour(m, modes), alpha=0.6, label=m) for m in modes]
    fig.legend(handles=handles, loc="outside upper right", fontsize=8, ncols=len(modes), title="mode", title_fontsize=8)
    return to_data_uri(fig, palette=True)


# ---------------------------------------------------------------- training curves
def _thin(x: np.ndarray, y: np.ndarray, n: int = 1500):
    if len(x) <= n:
        return x, y
    idx = np.linspace(0, len(x) - 1, n).astype(int)
    return x[idx], y[idx]


def _smooth(y: np.ndarray) -> np.ndarray:
    w = max(1, len(y) // 40)
    if w == 1:
        return y
    ok = ~np.isnan(y)
    num = np.convolve(np.where(ok, y, 0.0), np.ones(w), mode="same")
    den = np.convolve(ok.astype(float), np.ones(w), mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _step_axis(ax, ylabel: str) -> None:
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def training_figure(train_log, val_log, title: str) -> str | None:
    """Left: every loss term vs step (raw, faint; smoothed, solid). Right: validation Dice vs step."""
    if train_log is None and val_log is None:
        return None
    fig = Figure(figsize=(9.5, 3.0), layout="constrained")
    ax_l, ax_r = fig.subplots(1, 2)
    if train_log is not None and len(train_log):
        step = train_log["step"].to_numpy(dtype=float)
        nonneg = True
        for term in LOSS_TERMS:
            if term not in train_log.columns:
                continue
            y = train_log[term].to_numpy(dtype=float)
            if np.all(np.isnan(y)):
                continue  # a head the variant does not have
            nonneg &= bool(np.nanmin(y) >= 0)
            xs, ys = _thin(step, y)
            c = LOSS_COLOURS.get(term)
            ax_l.plot(xs, ys, color=c, alpha=0.18, linewidth=0.6)
            xs, ys = _thin(step, _smooth(y))
            ax_l.plot(xs, ys, color=c, linewidth=1.3, label=term)
        if nonneg:
            ax_l.set_yscale("log", nonpositive="mask")  # losses span decades; exact zeros are not drawn
        ax_l.legend(fontsize=7, ncols=5, loc="best", framealpha=0.85)
    else:
        ax_l.text(0.5, 0.5, "no train_log.csv", ha="center", va="center", transform=ax_l.transAxes)
    _step_axis(ax_l, "loss (smoothed; raw faint)")
    if val_log is not None and len(val_log):
        step = val_log["step"].to_numpy(dtype=float)
        for c in val_log.columns:
            if c not in ("step", "mean_dice"):
                ax_r.plot(step, val_log[c].to_numpy(dtype=float), color="grey", alpha=0.35, linewidth=0.7)
        ax_r.plot(step, val_log["mean_dice"].to_numpy(dtype=float), "o-", color="#1f77b4", markersize=3,
                  label="mean over validation cases")
        ax_r.plot([], [], color="grey", alpha=0.5, label="each case")
        ax_r.legend(fontsize=7, loc="lower right")
        ax_r.set_ylim(-0.02, 1.02)
    else:
        ax_r.text(0.5, 0.5, "no val_log.csv", ha="center", va="center", transform=ax_r.transAxes)
    _step_axis(ax_r, "validation 3D Dice")
    fig.suptitle(title, fontsize=9)
    return to_data_uri(fig, palette=True)


# ---------------------------------------------------------------- qualitative
@dataclass
class CaseVolumes:
    """Image, ground truth and prediction on one canonical (RAS+) grid."""

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, float, float]
    offset: tuple[int, int, int] = (0, 0, 0)  # of this (cropped) block in the canonical volume
    shape: tuple[int, int, int] | None = None  # of the whole canonical volume


class GridMismatch(ValueError):
    pass


class CanonicalVolume:
    """A NIfTI volume seen in the closest canonical (RAS+) orientation, read lazily.

    ``vol[idx]`` (ints and step-1 slices, one per axis) reads only that block through
    nibabel's array proxy, in the file's own dtype; ``np.asarray(vol)`` reads it all.
    The figures read the image this way (three planes, not a float32 copy of the volume).
    """

    def __init__(self, img, window: tuple[slice, ...] | None = None):
        import nibabel as nib

        self._img = img
        stored = tuple(img.shape[:3])
        self._ornt = nib.orientations.io_orientation(img.affine)
        self._stored = stored
        axis_of = {int(new): i for i, (new, _) in enumerate(self._ornt)}  # canonical axis -> stored axis
        self._axis = [axis_of[j] for j in range(3)]
        full = tuple(stored[i] for i in self._axis)
        self._window = window or tuple(slice(0, n) for n in full)
        self.shape = tuple(w.stop - w.start for w in self._window)
        self.ndim = 3
        self.dtype = img.get_data_dtype()
        self.affine = img.affine @ nib.orientations.inv_ornt_aff(self._ornt, stored)

    def crop(self, sl: tuple[slice, ...]) -> "CanonicalVolume":
        win = tuple(slice(w.start + s.start, w.start + s.stop) for w, s in zip(self._window, sl))
        return CanonicalVolume(self._img, win)

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        idx = idx + (slice(None),) * (3 - len(idx))
        stored_idx: list = [None] * 3
        kept = []  # canonical axes that stay, in canonical order
        flips = []
        for j, (item, w) in enumerate(zip(idx, self._window)):
            i, n = self._axis[j], self._stored[self._axis[j]]
            flip = self._ornt[i, 1] < 0
            if isinstance(item, (int, np.integer)):
                k = w.start + int(item) + (self.shape[j] if item < 0 else 0)
                stored_idx[i] = n - 1 - k if flip else k
                continue
            lo, hi, step = item.indices(self.shape[j])
            if step != 1:
                raise IndexError("only step-1 slices")
            lo, hi = w.start + lo, w.start + max(hi, lo)
            stored_idx[i] = slice(n - hi, n - lo) if flip else slice(lo, hi)
            kept.append(j)
            flips.append(flip)
        if len(self._img.shape) == 4:
            stored_idx.append(0)
        arr = np.asanyarray(self._img.dataobj[tuple(stored_idx)])
        # arr's axes are the kept stored axes in stored order; put them in canonical order
        stored_order = sorted(kept, key=lambda j: self._axis[j])
        arr = np.transpose(arr, [stored_order.index(j) for j in kept])
        for pos, flip in enumerate(flips):
            if flip:
                arr = np.flip(arr, axis=pos)
        return arr

    def __array__(self, dtype=None, copy=None):
        arr = self[:, :, :]
        return arr if dtype is None else arr.astype(dtype)


def load_canonical(path: Path):
    """(volume, affine) of a NIfTI file in the closest canonical (RAS+) orientation.

    The volume is a lazy :class:`CanonicalVolume`: nothing is read until it is indexed.
    """
    import nibabel as nib

    vol = CanonicalVolume(nib.load(str(path)))
    return vol, np.asarray(vol.affine, dtype=float)


def _mask_of(vol, labels=None) -> np.ndarray:
    """A bool mask (values in ``labels``, or > 0) read in the file's dtype, one axial block at a time."""
    out = np.zeros(vol.shape, dtype=bool)
    for k0 in range(0, vol.shape[2], 16):
        part = np.asarray(vol[:, :, k0:k0 + 16])
        if labels is None:
            out[:, :, k0:k0 + 16] = part > 0
        else:
            if not np.issubdtype(part.dtype, np.integer):
                part = np.rint(part)
            out[:, :, k0:k0 + 16] = np.isin(part, labels)
    return out


def case_volumes(image: tuple, label: tuple, pred: tuple, labels: list[int]) -> CaseVolumes:
    """The case's image (lazy: only the drawn planes are read) and its two masks (bool)."""
    (img, a_img), (lab, a_lab), (prd, a_prd) = image, label, pred
    for name, (arr, aff) in {"label": (lab, a_lab), "prediction": (prd, a_prd)}.items():
        if tuple(arr.shape) != tuple(img.shape) or not np.allclose(aff, a_img, atol=1e-3):
            raise GridMismatch(f"the {name} is not on the image's grid (shape {arr.shape} vs {img.shape})")
    spacing = tuple(float(s) for s in np.linalg.norm(a_img[:3, :3], axis=0))
    if not isinstance(img, CanonicalVolume):
        img = np.asarray(img)
    return CaseVolumes(img, _mask_of(lab, labels), _mask_of(prd), spacing, shape=tuple(img.shape))


def _crop(cv: CaseVolumes) -> CaseVolumes:
    union = cv.gt | cv.pred
    if not union.any():
        return cv
    sl = []
    for ax in range(3):
        idx = np.flatnonzero(np.any(union, axis=tuple(a for a in range(3) if a != ax)))
        m = int(np.ceil(CROP_MARGIN_MM / cv.spacing[ax]))
        sl.append(slice(max(0, idx[0] - m), min(union.shape[ax], idx[-1] + m + 1)))
    off = tuple(s.start for s in sl)
    sl = tuple(sl)
    image = cv.image.crop(sl) if isinstance(cv.image, CanonicalVolume) else cv.image[sl]
    return CaseVolumes(image, cv.gt[sl], cv.pred[sl], cv.spacing, off, cv.shape or cv.gt.shape)


def _display(plane: np.ndarray) -> np.ndarray:
    # plane is (a, b) in RAS+ index order; the screen shows b top-down descending, a left-right
    # descending: axial = patient's right on the left and anterior at the top (radiological),
    # coronal = right on the left and superior at the top, sagittal = anterior on the left
    return plane[::-1, ::-1].T


def case_figure(cv: CaseVolumes, hu_window, title: str) -> str:
    """Axial slice with the largest GT area, coronal and sagittal through the organ's centre."""
    full_nz = (cv.shape or cv.gt.shape)[2]
    cv = _crop(cv)
    ref = cv.gt if cv.gt.any() else cv.pred
    nx, ny, nz = cv.gt.shape
    if ref.any():
        k = int(np.argmax(ref.sum(axis=(0, 1))))
        n_ref = int(np.count_nonzero(ref))  # the centroid from projections (np.argwhere: 24 bytes a voxel)
        ci, cj = (int(round(int(np.dot(np.arange(ref.shape[ax]), np.count_nonzero(ref, axis=tuple(
            a for a in range(3) if a != ax)))) / n_ref)) for ax in (0, 1))
    else:
        ci, cj, k = nx // 2, ny // 2, nz // 2
    sx, sy, sz = cv.spacing
    views = [
        (f"axial (slice {k + cv.offset[2] + 1} of {full_nz}, inferior to superior)",
         (slice(None), slice(None), k), (sx, sy), ("R", "L", "A", "P")),
        ("coronal (through organ centre)", (slice(None), cj, slice(None)), (sx, sz), ("R", "L", "S", "I")),
        ("sagittal (through organ centre)", (ci, slice(None), slice(None)), (sy, sz), ("A", "P", "S", "I")),
    ]
    widths = []
    for _, idx, (cw, rh), _ in views:
        plane = cv.gt[idx]  # the image plane's shape; the image itself is read once, below
        widths.append(plane.shape[0] * cw / max(plane.shape[1] * rh, 1e-6))
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[max(w, 0.3) for w in widths])
    lo, hi = hu_window
    for ax, (name, idx, (cw, rh), (left, right, top, bottom)) in zip(axes, views):
        img = _display(np.asarray(cv.image[idx], dtype=np.float32))
        gt = _display(cv.gt[idx]).astype(float)
        pr = _display(cv.pred[idx]).astype(float)
        h, w = img.shape
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=(0, w * cw, h * rh, 0), interpolation="bilinear")
        xs, ys = (np.arange(w) + 0.5) * cw, (np.arange(h) + 0.5) * rh
        # ground truth wide underneath, prediction narrow on top: both stay visible where they agree
        for mask, colour, lw in ((gt, GT_COLOUR, 2.4), (pr, PRED_COLOUR, 1.0)):
            if 0 < mask.sum() < mask.size:
                ax.contour(xs, ys, mask, levels=[0.5], colors=colour, linewidths=lw)
        ax.set_xlim(0, w * cw)
        ax.set_ylim(h * rh, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=8)
        style = dict(color="yellow", fontsize=8, fontweight="bold", transform=ax.transAxes)
        ax.text(0.01, 0.5, left, ha="left", va="center", **style)
        ax.text(0.99, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.99, top, ha="center", va="top", **style)
        ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    handles = [Line2D([], [], color=GT_COLOUR, linewidth=2.4, label="ground truth"),
               Line2D([], [], color=PRED_COLOUR, linewidth=1.0, label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return to_data_uri(fig)
