"""The Medical Segmentation Decathlon tasks this project knows, and their dataset.json.

MSD tars ship macOS resource-fork files (``._name``) beside the real ones; they are
never read: the case list always comes from ``dataset.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError, UserError


@dataclass(frozen=True)
class MSDTask:
    name: str
    url: str
    md5: str
    labels: dict[int, str]
    description: str


_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

TASKS: dict[str, MSDTask] = {
    "Task06_Lung": MSDTask(
        "Task06_Lung", f"{_MIRROR}/Task06_Lung.tar", "8afd997733c7fc0432f71255ba4e52dc",
        {0: "background", 1: "cancer"}, "Lung tumour, CT, 63 training cases",
    ),
    "Task07_Pancreas": MSDTask(
        "Task07_Pancreas", f"{_MIRROR}/Task07_Pancreas.tar", "4f7080cfca169fa8066d17ce6eb061e4",
        {0: "background", 1: "pancreas", 2: "cancer"}, "Pancreas and pancreatic tumour, CT, 281 training cases",
    ),
    "Task09_Spleen": MSDTask(
        "Task09_Spleen", f"{_MIRROR}/Task09_Spleen.tar", "410d4a301da4e5b2f6f86ec3ddba524e",
        {0: "background", 1: "spleen"}, "Spleen, CT, 41 training cases",
    ),
}


def get_task(name: str) -> MSDTask:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown MSD task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def is_resource_fork(path: str | Path) -> bool:
    """True for macOS AppleDouble files (``._x``) and ``__MACOSX`` folders."""
    parts = Path(path).parts
    return any(p.startswith("._") or p == "__MACOSX" for p in parts)


def case_id_from_path(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None


@dataclass
class DatasetIndex:
    """What a task's dataset.json lists, resolved to existing files."""

    root: Path
    name: str
    labels: dict[int, str]
    training: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def _resolve(root: Path, rel: str, dataset_json: Path) -> Path:
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise InputFileError(f"entry {rel!r} points outside the task folder", dataset_json)
    if is_resource_fork(rel_path):
        raise InputFileError(f"entry {rel!r} is a macOS resource-fork file, not an image", dataset_json)
    return root / rel_path


def load_dataset_json(task_dir: str | Path, check_files: bool = True) -> DatasetIndex:
    """Read and validate ``task_dir/dataset.json``; every listed file must exist."""
    root = Path(task_dir)
    path = root / "dataset.json"
    if root.exists() and not root.is_dir():
        raise InputFileError("is a file, not a task folder (expected a folder with dataset.json)", root)
    if not root.is_dir():
        raise InputFileError("task folder does not exist", root)
    if not path.is_file():
        raise InputFileError("missing dataset.json (not an MSD task folder?)", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"not valid JSON ({exc})", path) from None
    if not isinstance(raw, dict):
        raise InputFileError("top level must be a JSON object", path)
    for key in ("labels", "training"):
        if key not in raw:
            raise InputFileError(f"missing required key {key!r}", path)
    try:
        labels = {int(k): str(v) for k, v in raw["labels"].items()}
    except (AttributeError, ValueError):
        raise InputFileError("'labels' must map integer strings to names", path) from None
    if 0 not in labels:
        raise InputFileError("'labels' has no background label 0", path)

    training: list[Case] = []
    if not isinstance(raw["training"], list):
        raise InputFileError("'training' must be a list", path)
    for i, entry in enumerate(raw["training"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
            raise InputFileError(f"training[{i}] must have 'image' and 'label' paths", path)
        img = _resolve(root, entry["image"], path)
        lab = _resolve(root, entry["label"], path)
        training.append(Case(case_id_from_path(img), img, lab))
    test: list[Case] = []
    if not isinstance(raw.get("test") or [], list):
        raise InputFileError("'test' must be a list", path)
    for i, entry in enumerate(raw.get("test", []) or []):
        rel = entry if isinstance(entry, str) else entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(rel, str):
            raise InputFileError(f"test[{i}] must be a path or have 'image'", path)
        img = _resolve(root, rel, path)
        test.append(Case(case_id_from_path(img), img, None))

    ids = [c.case_id for c in training]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputFileError(f"duplicate training case ids: {', '.join(dup)}", path)
    n_declared = raw.get("numTraining")
    if n_declared is not None and not (isinstance(n_declared, int) or str(n_declared).isdigit()):
        raise InputFileError(f"'numTraining' must be an integer, got {n_declared!r}", path)
    if n_declared is not None and int(n_declared) != len(training):
        raise InputFileError(
            f"numTraining is {n_declared} but {len(training)} training entries are listed", path
        )
    if check_files:
        missing = [p for c in training for p in (c.image, c.label) if not p.is_file()]
        missing += [c.image for c in test if not c.image.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            what = "is a folder, not a file" if missing[0].is_dir() else "does not exist"
            raise InputFileError(
                f"lists {missing[0].relative_to(root)} which {what}{more}", path
            )
    return DatasetIndex(root, str(raw.get("name", root.name)), labels, training, test, raw)
