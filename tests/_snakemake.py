"""Snakemake in tests: a minimal project copy, and reading Snakemake's console output."""

import shutil
from pathlib import Path

import yaml

from sam2_3dmed.config import deep_merge

from _tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]


def tiny_workflow_config(**sections) -> dict:
    """The tests' tiny config as a whole synthetic workflow run (one target, variant and fold;
    a short training), with ``sections`` merged over it."""
    base = tiny_config(
        data={"root": "data/demo/raw", "prepared": "data/demo/prepared", "source": "synthetic",
              "synthetic": {"cases": 5, "test_cases": 0, "seed": 0, "size": 64}},
        targets={"spleen": {"spacing_mm": [3.0, 3.0]}},
        splits={"seed": 0},
        run={"targets": ["spleen"], "variants": ["full"], "folds": [0]},
        model={"backbone": "tiny"},
        train={"steps": 3, "warmup_steps": 1, "checkpoint_every": 3, "val_every": 3, "amp": False},
    )
    return deep_merge(base, sections)


def make_project(root: Path, config: dict, name: str = "run.yaml") -> Path:
    """A minimal copy of the project (workflow, profiles, the rules' conda env file) with
    CONFIG as config/NAME. The package itself is the installed one."""
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "slurm", root / "slurm")
    shutil.copy(REPO / "environment.yml", root / "environment.yml")  # in each job's metadata
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / name).write_text(yaml.safe_dump(config))
    return root


def job_counts(text: str) -> dict:
    """{rule: count} from Snakemake's job-stats table (empty when nothing is to be done)."""
    jobs, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                jobs[parts[0]] = int(parts[1])
    return jobs
