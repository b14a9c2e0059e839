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


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
