"""Claim: our 3D metrics give MONAI's values and are faster than monai.metrics.

Masks: two overlapping smooth random blobs (ellipsoids with low-frequency noise on the
boundary) in a 512 x 512 x 100 volume with spacing 0.8 / 0.8 / 2.5 mm.

- ours: one ``compute_metrics`` call (Dice, IoU, HD95, NSD, ASSD from one pair of
  surface-distance maps on the cropped masks);
- MONAI: ``compute_hausdorff_distance(percentile=95)`` + ``compute_surface_dice`` (default,
  ``use_subvoxels=False``) + ``compute_average_surface_distance(symmetric=True)``, all with
  ``spacing=``; three calls, since MONAI has no combined one. Dice and IoU are not timed
  on the MONAI side (they are cheap), but they are inside our timed call.

Prints each metric from both sides with the relative difference, then the best-of-N wall
time of each side and the ratio MONAI / ours (> 1: ours is faster). The two are run
interleaved so that load from other processes hurts both alike. MONAI's HD95 is taken
with ``torch.quantile`` in float32, which can differ from the float64 value in the 6th
digit; all other metrics agree to float32 precision.

Usage: python benchmarks/bench_metrics.py [--repeats 3] [--tolerance-mm 1.0]
       [--radius-mm 60 45 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch
from scipy import ndimage
from _common import emit

SHAPE = (512, 512, 100)
SPACING = (0.8, 0.8, 2.5)


def blob(center_mm, radii_mm, seed: int, roughness: float = 0.1) -> np.ndarray:
    """An ellipsoid whose boundary is perturbed by smooth noise, in the SHAPE grid."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(SPACING)
    half = np.asarray(radii_mm) * 1.6 / sp  # region that can hold the blob, in voxels
    c = np.asarray(center_mm) / sp
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int), SHAPE)
    sub = tuple(int(h - l) for l, h in zip(lo, hi))
    axes = [((np.arange(l, h) - ci) * s / r) for l, h, ci, s, r in zip(lo, hi, c, sp, radii_mm)]
    d = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    noise = ndimage.gaussian_filter(rng.standard_normal((12, 12, 12)), 1.5)
    noise = ndimage.zoom(noise / noise.std(), [n / 12 for n in sub], order=3)
    out = np.zeros(SHAPE, bool)
    out[tuple(slice(l, h) for l, h in zip(lo, hi))] = d + roughness * noise[: sub[0], : sub[1], : sub[2]] < 1
    return out


def monai_side(P, G, tol):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(
            hd95=float(compute_hausdorff_distance(P, G, include_background=True, percentile=95, spacing=SPACING)),
            nsd=float(compute_surface_dice(P, G, [tol], include_background=True, spacing=SPACING)),
            assd=float(compute_average_surface_distance(P, G, include_background=True, symmetric=True,
                                                        spacing=SPACING)),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tolerance-mm", type=float, default=1.0)
    ap.add_argument("--radius-mm", type=float, nargs=3, default=(60.0, 45.0, 50.0))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from monai.metrics import compute_dice, compute_iou

    from sam2_3dmed.evaluate.metrics import compute_metrics

    centre = np.asarray(SHAPE) * np.asarray(SPACING) / 2
    gt = blob(centre, args.radius_mm, args.seed)
    pred = blob(centre + np.array([1.6, -0.8, 2.5]), np.asarray(args.radius_mm) * 0.97, args.seed + 1)
    P = torch.from_numpy(pred)[None, None].float()
    G = torch.from_numpy(gt)[None, None].float()

    ours_t, monai_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = compute_metrics(pred, gt, SPACING, args.tolerance_mm)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = monai_side(P, G, args.tolerance_mm)
        monai_t.append(time.perf_counter() - t)
    ref.update(dice=float(compute_dice(P, G, include_background=True)),
               iou=float(compute_iou(P, G, include_background=True)))

    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"shape {SHAPE}, spacing {SPACING} mm, NSD tolerance {args.tolerance_mm} mm")
    print(f"# voxels: pred {ours['pred_voxels']}, gt {ours['gt_voxels']}")
    print(f"{'metric':<8}{'ours':>20}{'monai':>20}{'rel diff':>12}")
    for key in ("dice", "iou", "hd95", "nsd", "assd"):
        a, b = ours[key], ref[key]
        print(f"{key:<8}{a:>20.10g}{b:>20.10g}{abs(a - b) / max(abs(b), 1e-12):>12.2e}")
    o, m = min(ours_t), min(monai_t)
    print(f"time HD95+NSD+ASSD (best of {args.repeats}): ours {o:.3f} s (all metrics, one call), "
          f"MONAI {m:.3f} s (three calls)")
    print(f"ratio MONAI / ours: {m / o:.2f}")
    worst = max(abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ("dice", "iou", "hd95", "nsd", "assd"))
    emit(f"3D metrics HD95+NSD+ASSD (+Dice, IoU), {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} masks", o, m,
         "monai.metrics (3 calls)", "s", better="lower", note=f"largest relative difference to MONAI {worst:.1e}")


if __name__ == "__main__":
    main()
