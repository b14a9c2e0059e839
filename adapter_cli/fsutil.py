"""Atomic file and directory writes: a failed command never leaves a half-written artifact behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(dump_json(data), encoding="utf-8")


@contextmanager
def atomic_directory(target: Path | str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it into place only if the block succeeds.

    The temporary directory lives in the same parent so the final rename is atomic on one file system.
    An existing ``target`` is replaced only after the new content is complete.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        from .errors import UsageError

        raise UsageError(f"{target} exists and is not a directory; choose another output path")
    if target.exists() and not overwrite:
        from .errors import UsageError

        raise UsageError(f"{target} already exists; pass --overwrite or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, backup / "old")
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
