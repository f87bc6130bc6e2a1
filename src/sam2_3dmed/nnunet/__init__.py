"""nnU-Net v2 as a reference arm: variants with ``model.arch: nnunet`` (``variants.nnunet``).

The same cases, folds and metrics as SAM2-3dMed, with nnU-Net's own pipeline in between:

* ``sam2-3dmed nnunet-plan`` (:mod:`.dataset`): the target's training cases (every case
  but the held-out test split) in nnU-Net's raw format, labels merged exactly as
  ``prepare`` merges them (``targets.<t>.labels`` -> 1); **our** ``splits.json`` folds as
  nnU-Net's ``splits_final.json``; then ``nnUNetv2_plan_and_preprocess`` (nnU-Net's own
  fingerprint, plans and preprocessing, untouched). CPU only.
* ``sam2-3dmed train`` of such a variant (:mod:`.training`): nnU-Net's trainer
  (``nnunet.trainer``, default ``nnUNetTrainer``) on one fold, resumed from its latest
  checkpoint as ``nnUNetv2_train --c`` does; epochs and iterations per epoch from
  ``nnunet.*`` (null: the trainer's own 1000 x 250).
* ``sam2-3dmed evaluate`` / ``predict`` of such a run (:mod:`.inference`): nnU-Net predicts
  each case from its raw image (its own preprocessing, sliding window, export to the
  image's grid); **our** metrics score it against the original label, written in the
  same metrics.csv / summary.json layout as every other variant.

Layout (nnU-Net's three folders are set by these commands, never taken from the user's
environment or home)::

    <nnunet.root>/<target>/raw/Dataset<NNN>_<target>/   nnUNet_raw: imagesTr (links), labelsTr, dataset.json, splits_final.json
    <nnunet.root>/<target>/preprocessed/Dataset<NNN>_<target>/   nnUNet_preprocessed
    <nnunet.root>/<target>/nnunet_plan.json             what was planned (patch, batch, spacing), the folds, the cost
    RUNS/<target>/<variant>/fold<k>/nnUNet_results/     nnUNet_results of that fold's training
    RUNS/<target>/<variant>/fold<k>/model.pt            the trained weights, plans and settings (loaded weights_only)

``nnunet.root`` null means beside ``data.prepared`` (``<its parent>/nnunet``); NNN is the
MSD task number (Task09_Spleen -> Dataset009_spleen).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from ..config import require_nnunet, target_config
from ..errors import UserError

ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
MODEL_FILE = "model.pt"
RUN_FILE = "nnunet_run.json"
PLAN_FILE = "nnunet_plan.json"


def nnunet_base(cfg: dict) -> Path:
    """Where every target's nnUNet_raw / nnUNet_preprocessed live (``nnunet.root``, or
    ``<parent of data.prepared>/nnunet``)."""
    root = cfg["nnunet"]["root"]
    return Path(root) if root else Path(cfg["data"]["prepared"]).parent / "nnunet"


def nnunet_root(cfg: dict, target: str) -> Path:
    """The target's nnU-Net data folder: ``raw/``, ``preprocessed/`` and nnunet_plan.json."""
    return nnunet_base(cfg) / target


def dataset_name(cfg: dict, target: str) -> str:
    """nnU-Net's dataset name of a target: ``Dataset<task number>_<target>``."""
    task = target_config(cfg, target)["task"]
    m = re.match(r"Task(\d+)_", task)
    if not m:
        raise UserError(f"targets.{target}.task: {task!r} is not an MSD task name (TaskNN_Name); nnU-Net needs its "
                        "number for the dataset id")
    return f"Dataset{int(m[1]):03d}_{target}"


def dataset_id(name: str) -> int:
    return int(name[len("Dataset"):len("Dataset") + 3])


def _nnunet_run_folder(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / RUN_FILE).is_file()


def is_nnunet_path(path) -> bool:
    """An nnU-Net run's model.pt, its fold folder, or a run folder of such fold*/ folders.
    A fold folder is known by its nnunet_run.json beside model.pt (a SAM2-3dMed checkpoint
    may well be called model.pt too)."""
    p = Path(path)
    if p.is_file():
        return p.name == MODEL_FILE and (p.parent / RUN_FILE).is_file()
    return p.is_dir() and (_nnunet_run_folder(p) or any(_nnunet_run_folder(d) for d in p.glob("fold*")))


def import_nnunet(what: str = "the nnunet variant"):
    """``nnunetv2``, or the one-line error naming the optional extra."""
    require_nnunet(what)
    import nnunetv2

    return nnunetv2


def nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover - import_nnunet checked it
        return "unknown"


@contextmanager
def environment(raw: Path | None = None, preprocessed: Path | None = None, results: Path | None = None,
                extra: dict | None = None):
    """nnU-Net's folders (absolute paths) in ``os.environ`` for the block, the caller's
    values restored afterwards. An unset folder is removed for the block, so a user's own
    nnUNet_* variables (their home, another project) are never read or written.
    nnunetv2 >= 2.6 reads them at each use, so setting them in-process is enough."""
    want = dict(zip(ENV_KEYS, (raw, preprocessed, results)))
    new = {k: str(Path(v).resolve()) for k, v in want.items() if v is not None}
    new.update({k: str(v) for k, v in (extra or {}).items()})
    keys = set(ENV_KEYS) | set(new)
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            if k in new:
                os.environ[k] = new[k]
            else:
                os.environ.pop(k, None)
        yield new
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
