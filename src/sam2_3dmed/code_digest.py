"""A digest of the package's own files: which code produced an output.

Recorded in ``train_summary.json`` so that a finished run can be matched to the exact
code that trained it (the learning test reuses the demo's run only when it matches).
A git commit would miss uncommitted edits and an installed (non-git) copy.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SUFFIXES = {".py", ".yaml", ".json", ".j2"}  # code, defaults, schema, report templates


@lru_cache(maxsize=1)
def package_digest() -> str:
    """SHA-256 (hex, first 16) over the package's source files: relative paths and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.suffix in _SUFFIXES and "__pycache__" not in p.parts):
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
