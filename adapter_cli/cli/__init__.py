"""The ``adapt`` command line. Command modules import torch only inside their functions."""

from __future__ import annotations

from . import activations, add, hub, infer, inspect, merge, results, train  # noqa: F401  (registers the commands)
from .app import app
from .cache import cache_app
from .hub import hub_app
from .recipes import recipes_app

app.add_typer(cache_app, name="cache")
app.add_typer(recipes_app, name="recipes")
app.add_typer(hub_app, name="hub")


def main() -> None:
    from ._common import run_app

    raise SystemExit(run_app(app))
