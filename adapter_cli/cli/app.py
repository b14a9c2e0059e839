"""The typer application object, shared by the command modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="adapt",
    help=(
        "adapt: add, train, extract, fuse, run and share adapters on pretrained transformers.\n\n"
        "Results go to stdout (--json for scripts), progress and errors to stderr. Exit codes: "
        "0 success, 1 failure, 2 bad input. ADAPT_DEBUG=1 shows tracebacks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
