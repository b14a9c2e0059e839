"""The ``adapt`` command line. Command modules import torch only inside their functions."""

from __future__ import annotations

from . import add, infer, inspect  # noqa: F401  (registers the commands)
from .app import app


def main() -> None:
    app()
