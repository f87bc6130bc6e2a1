"""All-or-nothing outputs: write to a temporary sibling, then rename into place.

A crash, a Ctrl-C or a validation error leaves either the complete output or
nothing at all, and never touches what the user already had unless they asked
(``overwrite=True``), in which case the old output is only removed after the new
one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


def ensure_dir(path: str | Path) -> Path | None:
    """Create the folder ``path`` and its parents, and check that it is writable.

    Return the topmost folder this created (to remove on failure), or None if
    ``path`` already existed. Raises a one-line :class:`UserError` naming ``path``
    if it cannot be created or is not writable.
    """
    path = Path(path)
    top = None
    for p in (path, *path.parents):
        if p.exists():
            break
        top = p
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError("output directory is not writable", path)
    return top


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_empty_dir(path: Path) -> bool:
    # an empty folder holds nothing to lose (workflow engines pre-create them)
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` on success.

    ``final`` must not exist (or be an empty folder) unless ``overwrite`` is true. On any exception the
    temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    if final.exists() and not overwrite and not _is_empty_dir(final):
        raise UserError("output already exists; remove it or pass --overwrite", final)
    ensure_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it is renamed to ``final`` on success."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError("output already exists; remove it or pass --overwrite", final)
    ensure_dir(final.parent)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed, keys in insertion order."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
