"""User prompts for ``predict``: boxes and positive/negative clicks on one or several slices,
in the INPUT image's voxel coordinates, mapped onto the prepared grid [ours, method.md decision 7].

Coordinates: ``x`` = first array index (i), ``y`` = second (j), ``z`` = third (k), 0-based,
as in ``nibabel.load(f).dataobj[x, y, z]``; they are mapped to the prepared grid through the
affines, so any orientation works as long as each prompt lies on one axial slice.

Forms (each repeatable, all may be combined):

* ``--prompt-box z,x0,y0,x1,y1``: a box (inclusive extreme columns/rows of the organ);
* ``--prompt-point z,x,y``: a positive click;
* ``--prompt-negative z,x,y``: a negative click (not the organ);
* a JSON file: ``{"boxes": [[z, x0, y0, x1, y1], ...], "points": [[z, x, y], ...],
  "negatives": [[z, x, y], ...]}`` (every key optional).

Prompts landing on the same prepared slice are merged into one SAM2 prompt (at most one box
per slice); every prompted slice conditions SAM2's memory (``infer/propagation.py``).
Negative clicks need a box or a positive click somewhere; a slice with only negative clicks
is allowed (SAM2 allows it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.preprocess import CaseGeometry
from ..errors import UserError
from ..model.prompts import NEGATIVE, Prompt, merge_prompts

#: kind -> (option, JSON key, how many numbers, their form)
FORMS = {
    "box": ("--prompt-box", "boxes", 5, "z,x0,y0,x1,y1"),
    "point": ("--prompt-point", "points", 3, "z,x,y"),
    "negative": ("--prompt-negative", "negatives", 3, "z,x,y"),
}


@dataclass(frozen=True)
class UserPrompt:
    """One prompt in input voxel coordinates: ``kind`` "box" (``values`` x0, y0, x1, y1),
    "point" or "negative" (``values`` x, y), on slice ``z``."""

    kind: str
    z: float
    values: tuple[float, ...]


def _numbers(vals, n: int, json_numbers: bool = False) -> list[float] | None:
    """``vals`` (strings, or JSON numbers with ``json_numbers``) as ``n`` finite floats, or None."""
    if len(vals) != n or any(isinstance(v, bool) for v in vals):
        return None
    if json_numbers and not all(isinstance(v, (int, float)) for v in vals):
        return None
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def parse_prompts(boxes: list[str] = (), points: list[str] = (), negatives: list[str] = (),
                  json_file: Path | None = None) -> list[UserPrompt]:
    """``--prompt-box`` / ``--prompt-point`` / ``--prompt-negative`` strings and a JSON file
    (module docstring) -> UserPrompts (the options first, then the file, each in order).

    Raises UserError (one line, naming the option or the file) for a wrong count or a
    non-finite number, a file that does not parse, an unknown key, and for negative clicks
    without any box or positive click. No prompt at all gives [] (auto mode).
    """
    out: list[UserPrompt] = []
    for kind, texts in (("box", boxes), ("point", points), ("negative", negatives)):
        option, _key, n, form = FORMS[kind]
        for text in texts or ():
            vals = _numbers(str(text).split(","), n)
            if vals is None:
                raise UserError(f"{option} must be {n} comma-separated numbers {form}, got {text!r}")
            out.append(UserPrompt(kind, vals[0], tuple(vals[1:])))
    if json_file is not None:
        out += _read_json(Path(json_file))
    if out and not any(p.kind != "negative" for p in out):
        raise UserError("negative clicks need a box or a positive click (--prompt-box/--prompt-point)")
    return out


def _read_json(path: Path) -> list[UserPrompt]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("prompt file does not exist", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file: {e}", path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"prompt file is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", path) from None
    keys = {key: kind for kind, (_o, key, _n, _f) in FORMS.items()}
    if not isinstance(data, dict):
        raise UserError(f"prompt file must hold a JSON object with keys {', '.join(keys)}", path)
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(map(repr, unknown))} in the prompt file; "
                        f"known: {', '.join(keys)}", path)
    out = []
    for key, kind in keys.items():
        _o, _k, n, form = FORMS[kind]
        items = data.get(key, [])
        if not isinstance(items, list):
            raise UserError(f'"{key}" must be a list of [{form}] lists', path)
        for i, item in enumerate(items):
            vals = _numbers(item, n, json_numbers=True) if isinstance(item, list) else None
            if vals is None:
                raise UserError(f'"{key}"[{i}] must be {n} finite numbers [{form}], got {json.dumps(item)}', path)
            out.append(UserPrompt(kind, vals[0], tuple(vals[1:])))
    return out


def _to_prepared(spec: UserPrompt, geom: CaseGeometry, shape_ijk, source: Path) -> Prompt:
    """One prompt in input voxel coordinates -> a Prompt on the prepared grid."""
    z = spec.z
    vals = [spec.z, *spec.values]
    if spec.kind == "box":
        x0, y0, x1, y1 = spec.values
        if x1 < x0 or y1 < y0:
            raise UserError(f"prompt box needs x0 <= x1 and y0 <= y1, got {list(spec.values)}")
        corners = np.array([[x0, y0, z], [x1, y0, z], [x0, y1, z], [x1, y1, z]], dtype=np.float64)
    else:
        corners = np.array([[spec.values[0], spec.values[1], z]], dtype=np.float64)
    hi = np.asarray(shape_ijk, dtype=np.float64) - 0.5
    if np.any(corners < -0.5) or np.any(corners > hi):
        raise UserError(f"prompt {vals} lies outside the image (shape {tuple(int(s) for s in shape_ijk)})", source)
    m = np.linalg.inv(np.asarray(geom.prepared_affine)) @ np.asarray(geom.original_affine)
    xyz = (m[:3, :3] @ corners.T).T + m[:3, 3]
    zs = xyz[:, 2]
    if zs.max() - zs.min() > 0.5:
        raise UserError(f"the prompt is not on one axial slice of this image (orientation {geom.original_axcodes}); "
                        "z must be the axis across axial slices", source)
    nz, ny, nx = geom.prepared_shape_zyx
    k = int(round(float(zs.mean())))
    if not 0 <= k < nz:
        raise UserError(f"prompt slice z={z:g} lies outside the body crop the model sees", source)
    xs = np.clip(xyz[:, 0], 0, nx - 1)
    ys = np.clip(xyz[:, 1], 0, ny - 1)
    if spec.kind == "box":
        return Prompt(k, box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    if spec.kind == "point":
        return Prompt(k, point=(float(xs[0]), float(ys[0])))
    if spec.kind == "negative":
        return Prompt(k, clicks=((float(xs[0]), float(ys[0]), NEGATIVE),))
    raise ValueError(f"unknown prompt kind {spec.kind!r}")


def prompts_to_prepared(specs: list[UserPrompt], geom: CaseGeometry, shape_ijk, source: Path) -> list[Prompt]:
    """Map prompts in input voxel coordinates onto the prepared grid and merge them per
    prepared slice (:func:`~sam2_3dmed.model.prompts.merge_prompts`): one Prompt per slice,
    sorted by slice. Raises UserError for a prompt outside the image or the body crop, not on
    one axial slice, a box with x0 > x1 or y0 > y1, and two boxes on one prepared slice."""
    mapped = [(spec, _to_prepared(spec, geom, shape_ijk, source)) for spec in specs]
    boxes: dict[int, list[UserPrompt]] = {}
    for spec, p in mapped:
        if p.box is not None:
            boxes.setdefault(p.slice_index, []).append(spec)
    for k, on in sorted(boxes.items()):
        if len(on) > 1:
            zs = ", ".join(f"z={s.z:g}" for s in on)
            raise UserError(f"{len(on)} prompt boxes ({zs}) land on the same slice {k} of the prepared volume; "
                            "give at most one box per slice", source)
    return merge_prompts([p for _spec, p in mapped])
