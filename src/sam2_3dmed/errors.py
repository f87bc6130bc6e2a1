"""User-facing errors.

Anything the user can fix (a bad file, a bad config key, a wrong checksum) is raised
as :class:`UserError` with a one-line message that names the file or key and the
problem. The CLI prints it as one line and exits non-zero; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by input the user controls; its message is shown as one line."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        msg = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {msg}" if self.path else msg)


class InputFileError(UserError):
    """A file the user gave (image, label, archive, dataset.json) is unusable."""


class ConfigError(UserError):
    """The configuration is invalid; the message names the offending key."""


class ChecksumError(UserError):
    """A downloaded or given file does not match its expected checksum."""
