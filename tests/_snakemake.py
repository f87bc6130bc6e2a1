"""Snakemake in tests: a minimal project copy, and reading Snakemake's console output."""

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


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
