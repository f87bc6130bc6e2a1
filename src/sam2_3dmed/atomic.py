"""All-or-nothing outputs: write to a temporary sibling, then rename into place.

A crash, a Ctrl-C or a validation error leaves either the complete output or
nothing at all, and never touches what the user already had unless they asked
(``overwrite=True``), in which case the old output is only removed after the new
one is complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

# failures of the file system an output is written to (a read never raises these)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


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
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        raise UserError(f"output directory is not writable ({os.strerror(errno.EROFS if read_only else errno.EACCES)})",
                        path)
    return top


def _write_error(exc: BaseException, final: Path, tmp: Path) -> BaseException:
    """What to raise for ``exc`` from writing ``final`` through ``tmp``: a full or read-only
    file system becomes a one-line UserError naming ``final``; a UserError naming a path
    inside ``tmp`` (a nested atomic write) names that place under ``final`` instead."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return UserError(f"cannot write the output ({os.strerror(exc.errno)})", final)
    if isinstance(exc, UserError) and exc.path is not None:
        p = Path(exc.path)
        if p == tmp or tmp in p.parents:
            return type(exc)(str(exc)[len(exc.path) + 2:], final / p.relative_to(tmp))
    return exc


def _remove_created(path: Path, top: Path | None) -> None:
    """Undo :func:`ensure_dir` after a failure: remove the folders it made, while empty."""
    if top is None:
        return
    for p in (path, *path.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


def remove_stale(final: str | Path) -> None:
    """Remove the temporary siblings of ``final`` that a killed writer (SIGKILL, power
    loss) left behind. Only for outputs that one process owns, e.g. a run's checkpoints."""
    final = Path(final)
    for p in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


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
    if final.exists() and not final.is_dir():  # --overwrite replaces an output folder, never a file
        raise UserError("output exists and is not a folder; remove it yourself", final)
    created = ensure_dir(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        _remove_created(final.parent, created)
        raise UserError(f"cannot write the output ({exc.strerror})", final) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(final.parent, created)
        err = _write_error(exc, final, tmp)
        if err is exc:
            raise
        raise err from None
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
    created = ensure_dir(final.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    except OSError as exc:
        _remove_created(final.parent, created)
        raise UserError(f"cannot write the output ({exc.strerror})", final) from None
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like open()'s
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _remove_created(final.parent, created)
        err = _write_error(exc, final, tmp)
        if err is exc:
            raise
        raise err from None


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed, keys in insertion order."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
