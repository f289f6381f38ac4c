"""Rich progress bars for long steps; silent when output is not a terminal (CI logs stay readable)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)  # never break a verdict line in CI logs


@contextlib.contextmanager
def task(description: str, total: int):
    """Yield ``advance(n)``; draws a bar on a terminal, prints one line otherwise."""
    if not sys.stderr.isatty():
        console.print(f"[dim]{description} ({total})[/dim]")
        yield lambda n=1: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        handle = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(handle, n)
