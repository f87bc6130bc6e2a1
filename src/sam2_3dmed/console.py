"""One place for user-facing output: a stderr console, warnings and progress bars."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)
log = logging.getLogger("sam2_3dmed")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the stream at set-up), so a
    replaced or closed stderr (test capture, embedding) never breaks logging."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(debug: bool = False) -> None:
    if log.handlers:
        log.setLevel(logging.DEBUG if debug else logging.INFO)
        return
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=debug, show_time=False, markup=False)
    else:  # logs and pipes: one plain line per message, never wrapped
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def new_progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr.

    Off when stderr is not a terminal (rich would print a final snapshot and a blank
    line into logs and break one-line errors) or when SAM2_3DMED_NO_PROGRESS is set.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=bool(os.environ.get("SAM2_3DMED_NO_PROGRESS")) or not console.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with new_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def peak_rss_mb(children: bool = False) -> float:
    """The process's peak resident set size in MB (the kernel's high-water mark, exact, not
    sampled); with ``children``, the larger of it and that of its finished child processes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
