"""Progress on stderr: for training, a rich bar on a terminal and a line per evaluation otherwise; for work
over batches (``batch_progress``), a rich bar on a terminal and nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..training.reporter import Reporter


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class LineReporter(Reporter):
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.label = ""

    def start(self, total_steps: int, step: int, description: str) -> None:
        self.label = description  # "TASK METHOD": each epoch line says which run it belongs to

    def evaluated(self, epoch: int, step: int, metrics: dict[str, float], improved: bool) -> None:
        if not self.quiet:
            print(f"{self.label}: epoch {epoch} step {step}: {_fmt(metrics)}{' (best)' if improved else ''}",
                  file=sys.stderr)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr)


class RichReporter(Reporter):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]} {task.fields[dev]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.task: Any = None
        self.dev = ""
        self.label = ""

    def start(self, total_steps: int, step: int, description: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(description, total=total_steps, completed=step, loss="-", dev="")
        self.label = description

    def step(self, step: int, loss: float, lr: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")

    def evaluated(self, epoch: int, step: int, metrics: dict[str, float], improved: bool) -> None:
        self.dev = _fmt(metrics)
        self.progress.update(self.task, dev=f"| dev {self.dev}")
        self.progress.console.print(f"{self.label}: epoch {epoch}: {self.dev}{' (best)' if improved else ''}")

    def note(self, message: str) -> None:
        self.console.print(message)

    def close(self) -> None:
        self.progress.stop()


def reporter(quiet: bool) -> Reporter:
    if sys.stderr.isatty() and not quiet:
        return RichReporter()
    return LineReporter(quiet)


@contextmanager
def batch_progress(total: int, description: str, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """Progress over ``total`` batches: ``with batch_progress(n, "infer") as advance: ... advance(1)``.

    A rich bar (count, elapsed, remaining) on stderr when it is a terminal; when it is not, or with
    ``quiet``, ``advance`` does nothing, so logs and pipes stay clean. The bar goes away when done.
    """
    if quiet or total <= 0 or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def byte_progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar (downloads) on a terminal's stderr; nothing when piped or under 1 MB."""
    if not sys.stderr.isatty() or total < 1_000_000:
        yield None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns()[:2], DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
