"""Download, verify and safely extract one MSD task tar.

``fetch_msd`` is all-or-nothing: on any failure OUT holds nothing new, except a
download that was cut off (network error, Ctrl-C), which stays as the hidden file
``OUT/.TASK.tar.part`` so that the next run resumes it with an HTTP Range request.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .. import __version__
from ..atomic import atomic_dir
from ..console import console, log
from ..errors import ChecksumError, InputFileError, UserError
from . import msd

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # connect and per-read socket timeout
MAX_ATTEMPTS = 5  # consecutive attempts that make no progress before giving up
RETRY_DELAY_S = 2.0  # multiplied by the attempt number

_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d+)")
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
# ordinary network trouble worth a resumed retry; HTTPError is handled separately
_RETRYABLE = (urllib.error.URLError, OSError, http_exc := __import__("http.client").client.HTTPException)


class _Restart(Exception):
    """The server cannot continue the partial file; start again from byte 0."""


def fetch_msd(
    task: str,
    out: str | Path,
    url: str | None = None,
    md5: str | None = None,
    keep_archive: bool = False,
    overwrite: bool = False,
) -> Path:
    """Fetch MSD ``task`` into ``OUT/TASK`` and return that path.

    ``url`` is an http(s) URL, a ``file://`` URL or a local tar path (read in
    place); ``md5`` is the expected hex digest of the tar. Both default to the
    registry entry in :data:`msd.TASKS`.
    """
    spec = msd.get_task(task)
    expected = _check_md5(md5) if md5 is not None else spec.md5.lower()
    source = url or spec.url
    out = Path(out).expanduser()
    dest = out / task
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise UserError("output already exists; remove it or pass --overwrite", dest)
        if not dest.is_dir():
            raise UserError("output exists and is not a folder; remove it first", dest)

    local = _local_path(source)
    if local is not None and not local.is_file():
        what = "is a folder, not a tar archive" if local.is_dir() else "archive does not exist"
        raise InputFileError(what, local)

    created = _make_dir(out)
    part = out / f".{task}.tar.part"
    keep_part = False  # an interrupted download is kept for resuming
    try:
        if local is not None:
            archive, label = local, str(local)
            actual = _md5_file(local, f"verify {local.name}")
        else:
            archive, label = part, source
            try:
                actual = _download(source, part)
            except (KeyboardInterrupt, _Interrupted):
                keep_part = True
                raise
        if actual != expected:
            # the bad .part is removed below, with everything else
            raise ChecksumError(f"MD5 mismatch: expected {expected}, got {actual}", label)

        with atomic_dir(dest, overwrite=overwrite) as tmp:
            _extract(archive, label, task, tmp)
            _validate(tmp, task, label)

        if local is None:
            if keep_archive:
                os.replace(part, out / f"{task}.tar")
            else:
                part.unlink()
        return dest
    except _Interrupted as exc:
        raise UserError(str(exc), source) from None
    finally:
        if local is None and not keep_part and not (keep_archive and (out / f"{task}.tar").exists()):
            part.unlink(missing_ok=True)
        elif part.exists() and part.stat().st_size == 0:
            part.unlink()
        _remove_if_empty(out, created)


# --- arguments and files ---------------------------------------------------


def _check_md5(md5: str) -> str:
    md5 = md5.strip()
    if not _MD5_RE.fullmatch(md5):
        raise UserError(f"--md5 must be 32 hexadecimal characters, got {md5!r}")
    return md5.lower()


def _local_path(source: str) -> Path | None:
    """The local file ``source`` names, or None for an http(s) URL."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path))
    if "://" in source:
        raise UserError(f"unsupported URL scheme {scheme!r}; use http(s)://, file:// or a local path", source)
    return Path(source).expanduser()


def _make_dir(out: Path) -> Path | None:
    """Create ``out`` (and parents); return the topmost folder created, if any."""
    top = None
    for p in (out, *out.parents):
        if p.exists():
            break
        top = p
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", out) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError("output directory is not writable", out)
    return top


def _remove_if_empty(out: Path, created: Path | None) -> None:
    """Undo ``_make_dir``: remove the folders it created, if they are still empty."""
    if created is None:
        return
    for p in (out, *out.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return


def _bytes_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the bar is gone afterwards, so an error stays the only line
        disable=bool(os.environ.get("SAM2_3DMED_NO_PROGRESS")),
    )


def _md5_file(path: Path, description: str, progress: Progress | None = None) -> str:
    h = hashlib.md5()
    size = path.stat().st_size
    with _bytes_progress() if progress is None else _nullcontext(progress) as prog:
        bar = prog.add_task(description, total=size)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                prog.advance(bar, len(chunk))
        prog.remove_task(bar)
    return h.hexdigest()


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _no_space(exc: OSError, where: Path) -> UserError | None:
    if exc.errno == errno.ENOSPC:
        return UserError("no space left on device", where)
    return None


# --- download ----------------------------------------------------------------


class _Interrupted(Exception):
    """The download failed for good; the partial file is kept for resuming."""


def _download(url: str, part: Path) -> str:
    """Download ``url`` into ``part``, resuming what is there; return its MD5."""
    name = posixpath.basename(urllib.parse.urlsplit(url).path) or part.name
    with _bytes_progress() as progress:
        h = hashlib.md5()
        have = 0
        if part.exists():
            # resuming: the digest must cover the bytes already on disk
            h = hashlib.md5(bytes.fromhex("")) if False else hashlib.md5()
            have = part.stat().st_size
            if have:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
        bar = progress.add_task(f"download {name}", total=None, completed=have)
        failures = 0
        while True:
            before = have
            try:
                have, h = _download_once(url, part, have, h, progress, bar)
                return h.hexdigest()
            except _Restart:
                log.debug("server cannot resume %s; restarting from byte 0", url)
                part.unlink(missing_ok=True)
                have, h = 0, hashlib.md5()
                progress.update(bar, completed=0)
                if before == 0:
                    failures += 1
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    part.unlink(missing_ok=True)
                    raise UserError(f"download failed: HTTP {exc.code} {exc.reason}", url) from None
                failures, have = failures + 1, part.stat().st_size if part.exists() else 0
                reason: object = f"HTTP {exc.code} {exc.reason}"
            except _RETRYABLE as exc:
                err = _no_space(exc, part) if isinstance(exc, OSError) else None
                if err is not None:
                    raise err from None
                have = part.stat().st_size if part.exists() else 0
                failures = 0 if have > before else failures + 1
                reason = getattr(exc, "reason", None) or exc
            else:
                continue
            if failures >= MAX_ATTEMPTS:
                kept = f"; the partial file {part} is kept, run again to resume" if have else ""
                raise _Interrupted(f"download failed after {MAX_ATTEMPTS} attempts ({reason}){kept}")
            # the digest must match the bytes on disk exactly before resuming
            h = _md5_file(part, "re-check partial download", progress) if have else hashlib.md5()
            h = _rehash(part) if have else hashlib.md5()
            progress.update(bar, completed=have)
            delay = RETRY_DELAY_S * max(failures, 1)
            log.warning("download of %s interrupted (%s); resuming at byte %d in %.0fs", name, reason, have, delay)
            time.sleep(delay)
