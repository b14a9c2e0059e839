"""Domain errors. Every one maps to a single line on stderr and an exit code in the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdaptError(Exception):
    """A failure the user can act on. ``exit_code`` 1 means the work failed, 2 means bad input."""

    exit_code = 1


class UsageError(AdaptError):
    """Bad input: a wrong name, key, value or file. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """An adapter, fusion or head configuration that cannot be used as given."""


class CompositionError(UsageError):
    """A malformed or invalid composition string such as ``stack(a,fuse(b,c))``."""


class ArtifactError(UsageError):
    """A missing, corrupt or unreadable adapter/fusion/head directory."""


class BaseModelMismatch(UsageError):
    """An artifact made for another base model (hidden size, model type, layer count)."""


class UnsupportedModel(UsageError):
    """A transformers architecture that has no stitching table."""


def check_keys(data: Iterable[str], known: Iterable[str], where: str, error: type[AdaptError] | None = None,
               extra: str = "") -> None:
    """The one unknown-key check: the first key of ``data`` not in ``known`` is one line naming ``where``
    and the nearest known key (``error`` defaults to ConfigError)."""
    known = list(known)
    for key in data:
        if key not in known:
            raise (error or ConfigError)(f"unknown key {key!r} in {where}{suggest(str(key), known)}{extra}")


def positive_env(name: str, default: str, unit: str) -> float:
    """A positive number from the environment variable ``name`` (a limit or a time), else one line."""
    import os

    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{name} must be a positive number of {unit}, got {raw!r}")
    return value


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DiskFull(AdaptError):
    """A write that failed for lack of room (a full disk, a quota, a file-size limit). Exit code 1: the
    input was fine, and the same command works once there is space."""


def disk_full(exc: BaseException, what: str, hint: str = "free some space and run it again") -> DiskFull | None:
    """``exc`` as a one-line DiskFull when it says the disk (or quota, or file-size limit) ran out, else
    None. Besides OSError, this reads the "(os error N)" that safetensors' Rust errors carry."""
    import errno
    import os
    import re

    codes = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"\(os error (\d+)\)", str(exc))
        code = int(found.group(1)) if found else None
    if code not in codes:
        return None
    return DiskFull(f"cannot write {what}: {os.strerror(code)} (the disk or a quota or file-size limit is full); "
                    f"{hint}")
