"""Download, verify and safely extract one MSD task tar; download and verify single files.

``fetch_msd`` is all-or-nothing: on any failure OUT holds nothing new, with one
deliberate exception: a download that is cut off (network failure after all
retries, Ctrl-C) stays as the hidden file ``OUT/.TASK.tar.part`` so that the next
run resumes it with an HTTP Range request instead of starting over.

``fetch_file`` applies the same machinery (resumable download, checksum, the same
exception for cut-off downloads) to one file, e.g. model weights, with any
``hashlib`` algorithm and an optional content check before the file appears.
"""

from __future__ import annotations

import copy
import errno
import gzip
import hashlib
import http.client
import lzma
import os
import posixpath
import re
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .. import __version__
from ..atomic import atomic_dir, atomic_file, ensure_dir
from ..console import console, log
from ..errors import ChecksumError, InputFileError, UserError
from . import msd

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # socket timeout for the connect and for each read
MAX_ATTEMPTS = 5  # consecutive attempts without progress before giving up
RETRY_DELAY_S = 2.0  # times the number of consecutive failures

_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_HASH_NAMES = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d+)")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
# tarfile's extraction filters (PEP 706) exist from Python 3.12, 3.11.4 and 3.10.12; Debian 12
# ships 3.11.2. Without them, _extract_checked makes the same real-path checks itself.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class _Refused(Exception):
    """A member that resolves outside the destination (the fallback's tarfile.FilterError)."""

    def __init__(self, tarinfo: tarfile.TarInfo, reason: str):
        super().__init__(reason)
        self.tarinfo, self.reason = tarinfo, reason


_FILTER_ERRORS = (tarfile.FilterError, _Refused) if _HAS_DATA_FILTER else (_Refused,)
_FILTER_REASONS = {
    "AbsolutePathError": "absolute path",
    "OutsideDestinationError": "path outside the task folder",
    "SpecialFileError": "device or FIFO member",
    "AbsoluteLinkError": "link to an absolute path",
    "LinkOutsideDestinationError": "link pointing outside the task folder",
}


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
    place, never copied or deleted); ``md5`` is the expected hex digest of the
    tar. Both default to the registry entry in :data:`msd.TASKS`.
    """
    spec = msd.get_task(task)
    expected = _check_md5(md5) if md5 is not None else spec.md5.lower()
    source = url or spec.url
    out = Path(out).expanduser()
    dest = out / task
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise UserError("output already exists; remove it or pass --overwrite", dest)
        if not dest.is_dir() or dest.is_symlink():
            raise UserError("output exists and is not a folder; remove it yourself", dest)

    local = _local_path(source)
    if local is not None and not local.is_file():
        raise InputFileError("is a folder, not a tar archive" if local.is_dir() else "archive does not exist", local)

    created = ensure_dir(out)
    part = out / f".{task}.tar.part"
    bad_archive = False
    try:
        if local is not None:
            archive, label = local, str(local)
            actual = _md5_file(local, f"verify {local.name}")
        else:
            archive, label = part, source
            actual = _download(source, part)
        try:
            if actual != expected:
                raise ChecksumError(f"MD5 mismatch: expected {expected}, got {actual}", label)
            with atomic_dir(dest, overwrite=overwrite) as tmp:
                _extract(archive, label, task, tmp)
                _validate(tmp, task, label)
        except (ChecksumError, InputFileError):
            bad_archive = True
            raise

        if local is None:
            if keep_archive:
                os.replace(part, out / f"{task}.tar")
            else:
                part.unlink()
        return dest
    finally:
        # A bad archive is deleted; any other failure (Ctrl-C, network, full
        # disk) keeps the download for the next run to resume or re-verify.
        if local is None and (bad_archive or _is_empty(part)):
            part.unlink(missing_ok=True)
        _remove_if_empty(out, created)


def fetch_file(
    source: str,
    dest: str | Path,
    expected: str | None,
    algorithm: str = "sha256",
    validate: Callable[[Path, str], None] | None = None,
    overwrite: bool = False,
) -> str:
    """Fetch one file from ``source`` to ``dest``; return its hex digest.

    ``source`` is an http(s) URL (downloaded resumably to the hidden sibling
    ``.NAME.part``), a ``file://`` URL or a local path (copied, never moved).
    ``expected`` is the lower-case hex digest under ``algorithm``; None skips the
    comparison (the caller decides whether that is allowed and warns).
    ``validate(path, label)`` may check the content and raise
    :class:`InputFileError` naming ``label`` (the URL or the local path). ``dest``
    only appears once the checksum and ``validate`` have passed; a bad file is
    deleted, a cut-off download is kept for the next run to resume.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir() and not dest.is_symlink():
        raise UserError("output is a folder; remove it yourself", dest)
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise UserError("output already exists; remove it or pass --overwrite", dest)
    local = _local_path(source)
    if local is not None and not local.is_file():
        raise InputFileError("is a folder, not a file" if local.is_dir() else "file does not exist", local)

    name = _HASH_NAMES.get(algorithm, algorithm)
    created = ensure_dir(dest.parent)
    part = dest.with_name(f".{dest.name}.part")
    bad_file = False
    try:
        if local is not None:
            label = str(local)
            # hash the copy, not the original: what is checked is what is kept
            with atomic_file(dest, overwrite=overwrite) as tmp:
                actual = _copy_hashing(local, tmp, algorithm)
                if expected is not None and actual != expected:
                    raise ChecksumError(f"{name} mismatch: expected {expected}, got {actual}", label)
                if validate is not None:
                    validate(tmp, label)
            return actual
        label = source
        actual = _download(source, part, algorithm)
        try:
            if expected is not None and actual != expected:
                raise ChecksumError(f"{name} mismatch: expected {expected}, got {actual}", label)
            if validate is not None:
                validate(part, label)
        except (ChecksumError, InputFileError):
            bad_file = True
            raise
        with atomic_file(dest, overwrite=overwrite) as tmp:
            os.replace(part, tmp)
        return actual
    finally:
        if local is None and (bad_file or _is_empty(part)):
            part.unlink(missing_ok=True)
        if not dest.exists():
            _remove_if_empty(dest.parent, created)


# --- arguments and folders ---------------------------------------------------


def _check_md5(md5: str) -> str:
    md5 = md5.strip()
    if not _MD5_RE.fullmatch(md5):
        raise UserError(f"--md5 must be 32 hexadecimal characters, got {md5!r}")
    return md5.lower()


def _local_path(source: str) -> Path | None:
    """The local file ``source`` names, or None for an http(s) URL."""
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if "://" in source:
        raise UserError(f"unsupported URL scheme {scheme!r}; use http(s)://, file:// or a local path", source)
    return Path(source).expanduser()


def _remove_if_empty(out: Path, created: Path | None) -> None:
    """Undo :func:`ensure_dir` on failure: remove the folders it made while empty."""
    if created is None:
        return
    for p in (out, *out.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


def _require_space(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    if need > free:
        # MB below 1 GB: "needs 0.0 GB, only 0.0 GB available" said nothing on a small disk
        size = (lambda n: f"{n / 1e9:.1f} GB") if need >= 1e9 else (lambda n: f"{n / 1e6:.1f} MB")
        raise UserError(f"{os.strerror(errno.ENOSPC)}: needs {size(need)} of free space, only {size(free)} "
                        "available", where)


def _bytes_progress() -> Progress:
    # transient, and off when stderr is not a terminal (rich would still print a
    # blank line there): an error stays the only line of output
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=bool(os.environ.get("SAM2_3DMED_NO_PROGRESS")) or not console.is_interactive,
    )


def _md5_file(path: Path, description: str) -> str:
    h = hashlib.md5()
    try:
        with _bytes_progress() as progress, open(path, "rb") as f:
            bar = progress.add_task(description, total=path.stat().st_size)
            while chunk := f.read(CHUNK):
                h.update(chunk)
                progress.advance(bar, len(chunk))
    except OSError as exc:
        raise InputFileError(f"cannot read the archive ({exc.strerror})", path) from None
    return h.hexdigest()


def _copy_hashing(src: Path, dst: Path, algorithm: str) -> str:
    """Copy ``src`` to ``dst`` and return the digest of the bytes written."""
    h = hashlib.new(algorithm)
    try:
        size = src.stat().st_size
        _require_space(dst.parent, size)
        with _bytes_progress() as progress, open(src, "rb") as fin, open(dst, "wb") as fout:
            bar = progress.add_task(f"copy {src.name}", total=size)
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                progress.advance(bar, len(chunk))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError("no space left on device while copying", dst.parent) from None
        raise InputFileError(f"cannot copy the file ({exc.strerror})", src) from None
    return h.hexdigest()


# --- download ----------------------------------------------------------------


class _Restart(Exception):
    """The server cannot continue the partial file; it was reset to zero bytes."""


class _PartFile:
    """The partial download on disk, with the digest and size of exactly its bytes."""

    def __init__(self, path: Path, algorithm: str = "md5"):
        self.path = path
        self.size = 0
        self.algorithm = algorithm
        self.hash = hashlib.new(algorithm)

    def load(self, progress: Progress, bar: TaskID) -> None:
        """Hash what an earlier run left, so the digest covers the whole file."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                self.hash.update(chunk)
                self.size += len(chunk)
                progress.update(bar, completed=self.size)

    def reset(self) -> None:
        self.path.write_bytes(b"")
        self.size = 0
        self.hash = hashlib.new(self.algorithm)

    def append(self, f, chunk: bytes) -> None:
        try:
            f.write(chunk)
        except OSError as exc:
            raise UserError(f"cannot write the download ({exc.strerror})", self.path) from None
        self.hash.update(chunk)
        self.size += len(chunk)


def _download(url: str, path: Path, algorithm: str = "md5") -> str:
    """Download ``url`` into ``path``, resuming what is there; return its hex digest."""
    name = posixpath.basename(urllib.parse.urlsplit(url).path) or path.name
    part = _PartFile(path, algorithm)
    with _bytes_progress() as progress:
        bar = progress.add_task(f"download {name}", total=None)
        part.load(progress, bar)
        failures = 0
        while True:
            before = part.size
            try:
                _download_once(url, part, progress, bar)
                return part.hash.hexdigest()
            except _Restart:
                reason: object = "server could not resume the partial file"
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code not in _RETRY_STATUS:
                    raise UserError(f"download failed: HTTP {exc.code} {exc.reason}", url) from None
                reason = f"HTTP {exc.code} {exc.reason}"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ssl.SSLCertVerificationError):
                    raise UserError(f"download failed: {exc.reason}", url) from None
                reason = exc.reason
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, cut-off bodies
                reason = str(exc) or type(exc).__name__
            except ValueError as exc:  # a malformed URL
                raise UserError(f"invalid URL ({exc})", url) from None
            failures = 0 if part.size > before else failures + 1
            if failures >= MAX_ATTEMPTS:
                kept = f"; the partial file {path} is kept, run again to resume" if part.size else ""
                raise UserError(f"download failed after {MAX_ATTEMPTS} attempts ({reason}){kept}", url)
            delay = RETRY_DELAY_S * max(failures, 1)
            log.warning("download of %s interrupted (%s); resuming at byte %d in %gs", name, reason, part.size, delay)
            time.sleep(delay)


def _download_once(url: str, part: _PartFile, progress: Progress, bar: TaskID) -> None:
    headers = {"User-Agent": f"sam2-3dmed/{__version__}"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not part.size:
            raise
        # nothing left to send: complete, unless the server says the file is another size
        m = _UNSATISFIED_RANGE_RE.match(exc.headers.get("Content-Range", ""))
        exc.close()
        if m is None or int(m[1]) == part.size:
            return
        part.reset()
        raise _Restart from None

    with resp:
        if resp.status == 206:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m[1]) != part.size:
                part.reset()
                raise _Restart
            total = None if m[3] == "*" else int(m[3])
        else:
            # a server without Range support sends the whole file again
            if part.size:
                log.debug("server ignored the Range request; restarting %s from byte 0", url)
                part.reset()
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            _require_space(part.path.parent, total - part.size)
        progress.update(bar, total=total, completed=part.size)
        with open(part.path, "ab") as f:
            # read1 returns what has arrived, so a read that times out loses nothing;
            # a body cut short of Content-Length just ends early and is caught below
            while chunk := resp.read1(CHUNK):
                part.append(f, chunk)
                progress.update(bar, completed=part.size)
    if total is not None and part.size != total:
        raise http.client.IncompleteRead(b"", total - part.size)


# --- extraction ----------------------------------------------------------------


def _parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; pathlib drops '.' and empty ones."""
    return PurePosixPath(name).parts


def _unsafe(member: tarfile.TarInfo, task: str) -> str | None:
    """Why ``member`` must not be extracted, or None if it is safe."""
    if member.name.startswith("/"):
        return "absolute path"
    parts = _parts(member.name)
    if ".." in parts:
        return "'..' in path"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or FIFO member"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return "unsupported member type"
    if member.issym() or member.islnk():
        if member.linkname.startswith("/"):
            return "link to an absolute path"
        # symlink targets are relative to the link's folder, hard-link targets to the archive root
        base = "/".join(parts[:-1]) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname)).split("/")
        if target[0] != task:
            return "link pointing outside the task folder"
    return None


def _changed(member: tarfile.TarInfo, **changes) -> tarfile.TarInfo:
    """A copy of a member with some fields changed (``TarInfo.replace`` where Python has it)."""
    if hasattr(member, "replace"):
        return member.replace(**changes, deep=False)
    out = copy.copy(member)
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def _extract_checked(tar: tarfile.TarFile, members, dest: Path) -> None:
    """Extract member by member, each first resolved against what is already on disk (so a
    chain of links that lexically stays inside but really leaves ``dest`` is caught): what
    the 'data' filter does, for Pythons without it. No owners, modes or times are restored."""
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    for m in members:
        parent = os.path.realpath(os.path.join(root, posixpath.dirname(m.name)))
        if not inside(os.path.join(parent, posixpath.basename(m.name))):
            raise _Refused(m, "path outside the task folder")
        if m.issym() and not inside(os.path.realpath(os.path.join(parent, m.linkname))):
            raise _Refused(m, "link pointing outside the task folder")
        if m.islnk() and not inside(os.path.realpath(os.path.join(root, m.linkname))):
            raise _Refused(m, "link pointing outside the task folder")
        tar.extract(m, root, set_attrs=False)


def _plan(members: list[tarfile.TarInfo], task: str, label: str) -> list[tarfile.TarInfo]:
    """Check every member; return the ones to extract, renamed relative to TASK/."""
    keep: list[tarfile.TarInfo] = []
    files: set[str] = set()
    others: list[str] = []
    for m in members:
        problem = _unsafe(m, task)
        if problem:
            raise InputFileError(f"refusing member {m.name!r}: {problem}", label)
        if msd.is_resource_fork(m.name):
            continue
        parts = _parts(m.name)
        if not parts or parts[0] != task:
            if parts:
                others.append(m.name)
            continue
        rel = "/".join(parts[1:])
        if not rel:  # the TASK folder itself: it becomes the output folder
            continue
        changes = {"name": rel}
        if m.islnk():
            target = "/".join(_parts(posixpath.normpath(m.linkname))[1:])
            if target not in files:
                raise InputFileError(f"refusing member {m.name!r}: hard link to a file not extracted before it", label)
            changes["linkname"] = target
        keep.append(_changed(m, **changes))
        if m.isreg() or m.islnk():
            files.add(rel)
    if others:
        log.warning("%s: ignoring %d member(s) outside %s/, e.g. %s", label, len(others), task, others[0])
    if "dataset.json" not in files:
        raise InputFileError(f"no {task}/dataset.json in the archive (is it the MSD {task} tar?)", label)
    return keep


def _extract(archive: Path, label: str, task: str, dest: Path) -> None:
    """Extract the contents of the archive's TASK/ folder into ``dest``."""
    try:
        tar = tarfile.open(archive, "r:*")
    except _TAR_ERRORS:
        raise InputFileError("not a valid or complete tar archive (unrecognised format)", label) from None
    try:
        with tar:
            members = _plan(tar.getmembers(), task, label)
            total = sum(m.size for m in members if m.isreg())
            _require_space(dest, total)
            with _bytes_progress() as progress:
                bar = progress.add_task(f"extract {task}", total=total)

                def advancing() -> Iterator[tarfile.TarInfo]:
                    for m in members:
                        yield m
                        progress.advance(bar, m.size if m.isreg() else 0)

                # the 'data' filter re-checks each member against the real
                # file system (symlink chains), as a second line of defence
                if _HAS_DATA_FILTER:
                    tar.extractall(dest, members=advancing(), filter="data")
                else:
                    _extract_checked(tar, advancing(), dest)
    except _FILTER_ERRORS as exc:
        reason = exc.reason if isinstance(exc, _Refused) else _FILTER_REASONS.get(type(exc).__name__, "unsafe member")
        name = f"{task}/{exc.tarinfo.name}"
        raise InputFileError(f"refusing member {name!r}: {reason}", label) from None
    except _TAR_ERRORS as exc:
        raise InputFileError(f"not a valid or complete tar archive ({str(exc) or type(exc).__name__})", label) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError("no space left on device while extracting", dest.parent) from None
        raise


def _validate(tmp: Path, task: str, label: str) -> None:
    """Every file dataset.json lists must have been in the archive."""
    try:
        msd.load_dataset_json(tmp)
    except InputFileError as exc:
        # name the archive, not the temporary folder that is about to vanish
        raise InputFileError(str(exc).replace(str(tmp), task), label) from None
