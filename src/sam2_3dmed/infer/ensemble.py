"""Several trained checkpoints as one model: nnU-Net's fold ensemble.

An ensemble averages the members' foreground probabilities on the prepared grid, before
mapping back, thresholding and post-processing (as ``nnUNetv2_predict`` does with the
folds of a trained model). That needs one prepared grid, so every member must be a model
of the same target with the same preprocessing (spacing, HU window, crop, labels):
:func:`load_ensemble` refuses anything else in one line naming the checkpoint. Members
may differ in everything else (fold, variant, architecture, image size). Threshold and
post-processing come from the first member (``predict``) or from the evaluating config
(``evaluate``).

Checkpoints are named as files (``best.pt``, ``last.pt``), as a fold's run folder (which
holds ``best.pt``), or as a run folder holding several folds (``fold0/``, ``fold1/``, ...:
every fold in it, in fold order): :func:`resolve_checkpoints`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

from ..console import log
from ..data.preprocess import Preprocessing
from ..errors import UserError
from ..model.checkpoint import LoadedModel, load_model

_FOLD_DIR = re.compile(r"fold(\d+)$")


def resolve_checkpoints(paths: Iterable[str | Path], which: str = "best") -> list[Path]:
    """Checkpoint files for ``paths`` (files, fold run folders, or folders of folds)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            if (p / f"{which}.pt").is_file():
                out.append(p / f"{which}.pt")
                continue
            folds = sorted((int(m.group(1)), d) for d in p.iterdir()
                           if d.is_dir() and (m := _FOLD_DIR.fullmatch(d.name)) and (d / f"{which}.pt").is_file())
            if not folds:
                raise UserError(f"holds neither {which}.pt nor fold*/{which}.pt: give a checkpoint or a run folder", p)
            out += [d / f"{which}.pt" for _, d in folds]
        else:
            raise UserError("does not exist: give a checkpoint (best.pt) or a run folder", p)
    seen: dict[Path, Path] = {}
    for p in out:
        key = p.resolve()
        if key in seen:
            raise UserError(f"given twice (also as {seen[key]}): each checkpoint may be in the ensemble once", p)
        seen[key] = p
    return out


@dataclass
class Ensemble:
    """Loaded members (at least one); the first one's target and config speak for all."""

    members: list[LoadedModel]

    @property
    def first(self) -> LoadedModel:
        return self.members[0]

    @property
    def target(self) -> str:
        return self.first.target

    @property
    def config(self) -> dict:
        return self.first.config

    @property
    def device(self):
        return self.first.device

    @property
    def accepts_prompts(self) -> bool:
        return all(m.model.accepts_prompts for m in self.members)

    @property
    def folds(self) -> list[int | None]:
        return [m.fold for m in self.members]

    @property
    def paths(self) -> list[Path]:
        return [Path(m.path) for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def describe(self) -> str:
        if len(self) == 1:
            return f"{self.first.variant} model (fold {self.first.fold})"
        folds = ", ".join("?" if f is None else str(f) for f in self.folds)
        return f"ensemble of {len(self)} models (folds {folds})"

    def summary(self) -> dict:
        """What summary.json records about the models behind the numbers."""
        return {"size": len(self), "folds": self.folds, "checkpoints": [str(p) for p in self.paths],
                "steps": [m.step for m in self.members], "variants": [m.variant for m in self.members]}


def as_ensemble(models: "Ensemble | LoadedModel") -> Ensemble:
    return models if isinstance(models, Ensemble) else Ensemble([models])


def check_compatible(first: LoadedModel, other: LoadedModel) -> None:
    """One-line refusal unless ``other`` can be averaged with ``first``."""
    if other.target != first.target:
        raise UserError(f"checkpoint is a {other.target} model, but {first.path} is a {first.target} model: "
                        f"an ensemble needs one target", other.path)
    a = Preprocessing.from_config(first.config, first.target)
    b = Preprocessing.from_config(other.config, other.target)
    if a != b:
        diff = ", ".join(f"{f.name} {getattr(b, f.name)} vs {getattr(a, f.name)}" for f in fields(a)
                         if getattr(a, f.name) != getattr(b, f.name))
        raise UserError(f"preprocessing differs from {first.path} ({diff}): an ensemble averages probabilities "
                        f"on one prepared grid", other.path)


def load_ensemble(paths: Iterable[str | Path], device: str | None = None, base_weights=None,
                  which: str = "best") -> Ensemble:
    """Load every checkpoint of ``paths`` (see :func:`resolve_checkpoints`) once, checked
    to agree on target and preprocessing."""
    ckpts = resolve_checkpoints(paths, which)
    members: list[LoadedModel] = []
    for c in ckpts:
        lm = load_model(c, device, base_weights)
        if members:
            check_compatible(members[0], lm)
        members.append(lm)
    ens = Ensemble(members)
    if len(ens) > 1:
        log.info("%s of %s", ens.describe(), ens.target)
    return ens
