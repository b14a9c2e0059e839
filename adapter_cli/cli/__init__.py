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
    import os
    import sys

    from ._common import run_app

    code = run_app(app)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A worker of torchrun or accelerate: everything is written and closed by now. Its exit skips the
        # interpreter's and C++'s teardown, where a gloo thread left joinable aborts the process after a
        # run that went well ("terminate called without an active exception": once in CI, and about once
        # in 100 two-process runs here), which the launcher then reports as the run's failure.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
