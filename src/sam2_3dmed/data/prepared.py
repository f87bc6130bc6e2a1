"""The one reader of a prepared target folder (the output of ``prepare``).

Every stage after ``prepare`` (training, evaluation, the report) reads the folder's
artifacts through :class:`PreparedTarget`, so each file is parsed and checked in one
place, with one-line errors that name the file::

    fingerprint.json   per-case geometry, intensities, label volume and slice range; where the raw task is
    splits.json        held-out test cases and K folds
    plan.json          the settings (and target) that produced the folder
    cases/<id>/        image.npy, label.npy (memory-mappable), geometry.json

Files are read lazily, when first asked for, and each at most once.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InputFileError, UserError
from .io import Volume, _short, load_label_mask
from .preprocess import CaseGeometry

SPLITS = ("train", "val", "test")


class PreparedTarget:
    """A prepared target folder and its artifacts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PreparedTarget({str(self.path)!r})"

    def _json(self, name: str, not_json: str):
        """Parse ``name``; ``not_json`` is the error when it is no JSON ({} = the exception's name)."""
        path = self.path / name
        if not path.is_file():
            raise UserError("not found; run `sam2-3dmed prepare` first", path)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputFileError(not_json.format(type(exc).__name__), path) from None

    # ------------------------------------------------------------ folder-level artifacts
    @cached_property
    def fingerprint(self) -> dict:
        """``fingerprint.json``, checked for what later stages use (task_dir, per-case label paths)."""
        fp = self._json("fingerprint.json", "not valid JSON ({}); re-run prepare")
        path = self.path / "fingerprint.json"
        cases = fp.get("cases") if isinstance(fp, dict) else None
        if not isinstance(cases, list) or not isinstance(fp.get("task_dir"), str):
            raise InputFileError("not a prepare fingerprint: needs 'task_dir' and a list of 'cases'; re-run prepare", path)
        for i, c in enumerate(cases):
            if not (isinstance(c, dict) and isinstance(c.get("case_id"), str) and isinstance(c.get("label"), str)):
                raise InputFileError(f"cases[{i}] needs 'case_id' and 'label' strings; re-run prepare", path)
        return fp

    @cached_property
    def splits(self) -> dict:
        """``splits.json``: {"test": [...], "folds": [{"train": [...], "val": [...]}, ...]}."""
        splits = self._json("splits.json", "not a valid splits file (not JSON: {})")
        folds = splits.get("folds") if isinstance(splits, dict) else None
        if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
            raise InputFileError("not a valid splits file: needs an object whose 'folds' is a list of "
                                 "{'train': [...], 'val': [...]}", self.path / "splits.json")
        return splits

    @cached_property
    def plan(self) -> dict | None:
        """``plan.json`` (None for a folder made before plans were written)."""
        path = self.path / "plan.json"
        if not path.is_file():
            return None
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            plan = None
        if not isinstance(plan, dict):
            raise InputFileError("not a valid plan.json (not a JSON object); re-run prepare", path)
        return plan

    @property
    def synthetic(self) -> bool:
        return bool(self.fingerprint.get("synthetic", False))

    def check_target(self, target: str) -> "PreparedTarget":
        """Refuse a folder prepared for another target (its plan.json says which)."""
        made_for = (self.plan or {}).get("target")
        if made_for is not None and made_for != target:
            raise InputFileError(f"this folder was prepared for target {made_for!r}, not {target!r}",
                                 self.path / "plan.json")
        return self

    def cases(self, fold: int, split: str = "train") -> list[str]:
        """Case ids of ``split``: 'train' or 'val' of fold ``fold``, or the held-out 'test'."""
        if split not in SPLITS:
            raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        splits, path = self.splits, self.path / "splits.json"
        folds = splits["folds"]
        if split == "test":
            ids, where = splits.get("test", []), "'test'"
        else:
            if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < len(folds):
                raise UserError(f"fold {fold!r} is out of range: it lists {len(folds)} folds (0..{len(folds) - 1})", path)
            ids, where = folds[fold].get(split), f"folds[{fold}].{split}"
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise InputFileError(f"not a valid splits file: {where} must be a list of case ids", path)
        return list(ids)

    def content_key(self) -> bytes:
        """The bytes a trained run depends on (fingerprint and splits; empty where missing)."""
        return b"".join((self.path / n).read_bytes() if (self.path / n).is_file() else b""
                        for n in ("fingerprint.json", "splits.json"))

    # ------------------------------------------------------------ per case
    def case(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, CaseGeometry]:
        """(image, label, geometry) of one prepared case; arrays memory-mapped by default."""
        return self._read_case(case_id, ("image.npy", "label.npy"), mmap)

    def case_image(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, CaseGeometry]:
        """(image, geometry) of one prepared case, the label left unopened (it must exist)."""
        label = self.path / "cases" / case_id / "label.npy"
        image, geom = self._read_case(case_id, ("image.npy",), mmap)
        if not label.is_file():
            raise InputFileError("prepared file missing; re-run prepare", label)
        return image, geom

    def _read_case(self, case_id: str, arrays: tuple[str, ...], mmap: bool) -> tuple:
        d = self.path / "cases" / case_id
        if not d.is_dir():
            raise UserError(f"no prepared case {case_id!r}", self.path)
        mode = "r" if mmap else None
        out = []
        try:
            for name in arrays:
                f = d / name
                out.append(np.load(f, mmap_mode=mode, allow_pickle=False))
            f = d / "geometry.json"
            out.append(CaseGeometry.from_dict(json.loads(f.read_text(encoding="utf-8"))))
        except (OSError, ValueError, EOFError, UnicodeDecodeError, KeyError, TypeError) as exc:
            why = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({_short(exc)})"
            raise InputFileError(f"prepared file {why}; re-run prepare", f) from None
        return tuple(out)

    def case_record(self, case_id: str) -> dict:
        """The case's entry in fingerprint.json."""
        rec = next((c for c in self.fingerprint["cases"] if c["case_id"] == case_id), None)
        if rec is None:
            raise InputFileError(f"does not list case {case_id!r}", self.path / "fingerprint.json")
        return rec

    def label_slice_ranges(self) -> dict[str, tuple[int, int]]:
        """{case_id: (first, last)} slice with foreground on the prepared grid, (-1, -1) for an
        empty label, from fingerprint.json's ``label_slice_range_prepared`` (written by prepare
        so that training need not read the labels). Cases prepared before the field existed,
        or a folder without fingerprint.json, are left out: the caller reads their labels."""
        if not (self.path / "fingerprint.json").is_file():
            return {}
        out = {}
        for c in self.fingerprint["cases"]:
            if "label_slice_range_prepared" not in c:
                continue
            r, shape = c["label_slice_range_prepared"], c.get("prepared_shape_zyx")
            ok = isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)
            if r is None and ok:
                out[c["case_id"]] = (-1, -1)
            elif (ok and isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in r) and 0 <= r[0] <= r[1] < shape[0]):
                out[c["case_id"]] = (r[0], r[1])
            else:
                raise InputFileError(f"case {c['case_id']!r}: label_slice_range_prepared must be null or "
                                     f"[first, last] slices within prepared_shape_zyx, got {r!r}; re-run prepare",
                                     self.path / "fingerprint.json")
        return out

    def original_label(self, case_id: str, labels: list[int]) -> tuple[np.ndarray, Volume]:
        """The case's ORIGINAL label file, as a {0, 1} mask of ``labels`` on its own grid."""
        return load_label_mask(Path(self.fingerprint["task_dir"]) / self.case_record(case_id)["label"], labels)
