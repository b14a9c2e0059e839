"""``adapt results``: finished runs as the AdapterFusion paper's Table 1."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit_json, handle_errors
from .app import app


@app.command(
    "results",
    epilog="Examples:\n\n  adapt results runs/*\n\n  adapt results runs/* --format csv --output table.csv",
)
@handle_errors
def results(
    runs: list[Path] = typer.Argument(..., help="Run directories (finished adapt train / adapt fuse runs)."),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv or json."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the table to this file instead of stdout."),
) -> None:
    """Rows tasks, columns methods (head, full, adapter, fusion); mean ± std of the dev metric over seeds."""
    from ..errors import UsageError
    from ..results import collect, csv_text, markdown, table

    if fmt not in ("markdown", "csv", "json"):
        raise UsageError(f"--format must be markdown, csv or json, got {fmt!r}")
    result = table(collect([r for r in runs if r.is_dir()]))
    if fmt == "json":
        if output is None:
            emit_json(result)
            return
        import json

        text = json.dumps(result, indent=2) + "\n"
    else:
        text = markdown(result) if fmt == "markdown" else csv_text(result)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
