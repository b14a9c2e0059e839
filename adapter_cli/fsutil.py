"""Atomic file and directory writes: a failed command never leaves a half-written artifact behind,
and never deletes a directory that is not one of ours."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A directory holding one of these was written by adapt (or AdapterHub) and may be replaced.
ARTIFACT_MARKERS = ("adapter_config.json", "fusion_config.json", "adapter_fusion_config.json", "head_config.json",
                    "model.safetensors", "entry.json", "activations.json", "results.json",
                    "site.json")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(dump_json(data), encoding="utf-8")


def _replaceable(target: Path) -> bool:
    return not any(target.iterdir()) or any((target / m).is_file() for m in ARTIFACT_MARKERS)


@contextmanager
def atomic_directory(target: Path | str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; move it into place only if the block succeeds.

    An existing ``target`` is replaced only when ``overwrite`` is set and it is empty or holds an artifact
    (never an arbitrary user directory), and only after the new content is complete.
    """
    from .errors import ArtifactError, UsageError

    target = Path(target).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"{target} exists and is not a directory; choose another output path")
        if not overwrite:
            raise UsageError(f"{target} already exists; choose another path")
        if not _replaceable(target):
            raise UsageError(f"{target} is a non-empty directory that holds no adapter, fusion or head; "
                             "choose a new path (it is never replaced)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ArtifactError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(backup, target)  # put the old content back
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
