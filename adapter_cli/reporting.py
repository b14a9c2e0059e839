"""How the library reports without printing: warnings through the logger "adapter_cli" (the CLI shows them
as `warning: ...` lines; a Python program configures logging as it likes), and progress through a factory
that the program installs (the CLI draws a rich bar on a terminal; by default nothing is drawn)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

log = logging.getLogger("adapter_cli")

Advance = Callable[[int], None]
ProgressFactory = Callable[[int, str], AbstractContextManager[Advance | None]]
_factory: ProgressFactory | None = None


def set_progress_factory(factory: ProgressFactory | None) -> None:
    """``factory(total, label)`` gives a context manager yielding ``advance(n)`` (or None: no progress)."""
    global _factory
    _factory = factory


@contextmanager
def progress(total: int, label: str) -> Iterator[Advance | None]:
    """Progress over ``total`` units (bytes, rows) as the program chose to show it, or None."""
    if _factory is None:
        yield None
        return
    with _factory(total, label) as advance:
        yield advance
