"""Progress for long steps: bars and step lines on a terminal; log records (logger ``slimops``, INFO) otherwise.

stderr of a non-interactive ``slimops`` holds what a pipeline acts on: one line for bad input, the verdict for
a gate. Progress goes to the ``slimops`` logger there: silent by default, shown with ``SLIMOPS_LOG_LEVEL=INFO``,
and picked up by orchestrators that collect Python logging (Airflow task logs).
"""

from __future__ import annotations

import contextlib
import logging
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)  # never break a verdict line in CI logs
log = logging.getLogger("slimops")


def interactive() -> bool:
    return sys.stderr.isatty()


def note(message: str, style: str = "dim") -> None:
    """One progress line: styled on a terminal, an INFO record otherwise."""
    if interactive():
        console.print(f"[{style}]{escape(message)}[/{style}]")
    else:
        log.info(message)


@contextlib.contextmanager
def task(description: str, total: int):
    """Yield ``advance(n)``; draws a bar on a terminal, logs one line otherwise."""
    if not interactive():
        log.info("%s (%s)", description, total)
        yield lambda n=1: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        handle = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(handle, n)


def configure_logging(level: str | None) -> None:
    """The CLI's handler for the ``slimops`` logger: stderr, at ``level`` (default WARNING)."""
    if any(getattr(h, "_slimops", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("slimops: %(message)s"))
    handler._slimops = True
    log.addHandler(handler)
    log.setLevel((level or "WARNING").upper() if (level or "WARNING").upper() in logging._nameToLevel else "WARNING")
    log.propagate = False
