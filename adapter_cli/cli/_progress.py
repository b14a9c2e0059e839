"""Training progress on stderr: a rich bar on a terminal, a line per evaluation otherwise."""

from __future__ import annotations

import sys
from typing import Any

from ..training.loop import Reporter


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class LineReporter(Reporter):
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def evaluated(self, epoch: int, step: int, metrics: dict[str, float], improved: bool) -> None:
        if not self.quiet:
            print(f"epoch {epoch} step {step}: {_fmt(metrics)}{' (best)' if improved else ''}", file=sys.stderr)

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

    def start(self, total_steps: int, step: int, description: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(description, total=total_steps, completed=step, loss="-", dev="")

    def step(self, step: int, loss: float, lr: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")

    def evaluated(self, epoch: int, step: int, metrics: dict[str, float], improved: bool) -> None:
        self.dev = _fmt(metrics)
        self.progress.update(self.task, dev=f"| dev {self.dev}")
        self.progress.console.print(f"epoch {epoch}: {self.dev}{' (best)' if improved else ''}")

    def note(self, message: str) -> None:
        self.console.print(message)

    def close(self) -> None:
        self.progress.stop()


def reporter(quiet: bool) -> Reporter:
    if sys.stderr.isatty() and not quiet:
        return RichReporter()
    return LineReporter(quiet)
