"""Where a report's numbers come from: config, code version, data/model hashes, packages."""

from __future__ import annotations

import datetime as _dt
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

PACKAGES = ("sam2-3dmed", "torch", "sam2", "monai", "nibabel", "SimpleITK", "snakemake", "dvc", "numpy")


def git_info(cwd: Path) -> dict:
    """{"commit": sha or "unknown", "dirty": bool | None}; never raises."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = git("status", "--porcelain")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def dvc_hashes(cwd: Path) -> dict:
    """Outputs recorded in ``dvc.lock`` (stage, path, md5), or why there are none."""
    lock = Path(cwd) / "dvc.lock"
    if not lock.is_file():
        return {"tracked": False, "note": "not tracked by DVC (dvc.lock absent)", "outs": []}
    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return {"tracked": False, "note": f"dvc.lock could not be read ({type(exc).__name__})", "outs": []}
    outs = []
    stages = data.get("stages", {}) if isinstance(data, dict) else {}
    for stage, body in (stages or {}).items():
        for out in (body or {}).get("outs", []) or []:
            if isinstance(out, dict):
                outs.append({"stage": stage, "path": str(out.get("path", "?")),
                             "md5": str(out.get("md5") or out.get("etag") or out.get("checksum") or "?"),
                             "size": out.get("size"), "nfiles": out.get("nfiles")})
    return {"tracked": True, "note": f"{len(outs)} output(s) in dvc.lock", "outs": outs}


def package_versions() -> list[dict]:
    out = []
    for name in PACKAGES:
        try:
            out.append({"name": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            out.append({"name": name, "version": "not installed"})
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(cfg: dict, config_path: Path | None, cwd: Path | None = None) -> dict:
    cwd = Path(cwd or Path.cwd())
    return {
        "config_path": str(config_path) if config_path else "built-in defaults",
        "config_yaml": yaml.safe_dump(cfg, sort_keys=False),
        "git": git_info(cwd),
        "dvc": dvc_hashes(cwd),
        "packages": package_versions(),
        "date": utc_now(),
        "synthetic_config": cfg["data"]["source"] == "synthetic",
        "data_source": cfg["data"]["source"],
    }
