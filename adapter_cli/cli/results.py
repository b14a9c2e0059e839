"""``adapt results``: finished runs as the AdapterFusion paper's Table 1."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._common import emit_json, handle_errors
from .app import app


@app.command(
    "results",
    epilog=("Examples:\n\n  adapt results runs/\n\n  adapt results runs/ --wall-time --output table.md\n\n"
            "  adapt results runs/* --csv --output table.csv\n\n  adapt results runs/mrpc-* --json"),
)
@handle_errors
def results(
    runs: list[Path] = typer.Argument(..., help="Finished run directories (adapt train / adapt fuse), or folders "
                                      "that hold them (unfinished runs there are skipped)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object: cells with mean, std, n and seeds, "
                                  "and every run read."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (task, method, metric, mean, std, n)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the table to this file instead of stdout."),
    wall_time: bool = typer.Option(False, "--wall-time", help="Markdown: add a row with each column's training "
                                   "time (every run once)."),
    old_format: str = typer.Option(None, "--format", "-f", hidden=True, help="Refused: use --csv or --json."),
) -> None:
    """The AdapterFusion paper's Table 1: rows tasks, columns methods (head, full, adapter (ST-A), mt-a,
    fusion (F. w/ ST-A), fusion (mt-a) (F. w/ MT-A)) with their configuration; each cell the mean ± std of
    the task's main dev metric over distinct seeds, and n. Markdown by default, followed by Table 2: each
    fusion against its adapters (↑ better by more than 0.3 points, = within 0.3, ↓ worse).

    Runs are averaged only when they differ in nothing but the seed; a configuration run twice with the
    same seed counts once (the most recent run, noted on stderr). An MT-A run fills one row per task.
    """
    from ..errors import UsageError
    from ..results import csv_text, markdown, report

    if old_format is not None:
        raise UsageError(f"adapt results no longer takes --format {old_format}: use --csv or --json "
                         "(markdown is the default)")
    if json_out and csv_out:
        raise UsageError("--json and --csv contradict each other; give one of them")
    if wall_time and (json_out or csv_out):
        raise UsageError("--wall-time adds a row to the markdown table; the --json output always has wall_time_s, "
                         "and --csv has none: leave out one of them")
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"cannot write --output {output}: the directory {output.parent} does not exist")
    result = report(runs)
    for note in result["notes"]:
        print(note, file=sys.stderr)
    if json_out:
        if output is None:
            emit_json(result)
            return
        import json

        text = json.dumps(result, indent=2, default=str) + "\n"
    else:
        text = csv_text(result) if csv_out else markdown(result, wall_time)
    if output is None:
        print(text, end="")
        return
    from ..fsutil import write_text_atomic

    write_text_atomic(output, text)  # whole or not at all
