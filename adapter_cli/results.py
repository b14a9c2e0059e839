"""Finished runs gathered into the AdapterFusion paper's Table 1 layout: rows tasks, columns methods
(head, full, adapter, fusion), each cell the mean +- standard deviation of the task's main dev metric
over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .errors import UsageError

COLUMN_ORDER = ("head", "full", "adapter", "fusion")


def collect(run_dirs: list[Path]) -> list[dict[str, Any]]:
    import yaml

    runs = []
    for run in run_dirs:
        final = run / "final_metrics.json"
        if not final.is_file():
            raise UsageError(f"{run} has no final_metrics.json: not a finished adapt run")
        summary = json.loads(final.read_text())
        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) if (run / "recipe.yaml").is_file() else {}
        column = summary.get("method", "?")
        adapter = recipe.get("adapter")
        if column == "adapter" and isinstance(adapter, str) and adapter not in ("pfeiffer", "seq_bn"):
            column = f"adapter ({Path(adapter).stem})"
        best = summary.get("best") or {}
        runs.append({"run": str(run), "task": summary.get("task"), "method": column, "seed": recipe.get("seed"),
                     "metric": summary.get("main_metric"), "value": best.get("metric"),
                     "metrics": best.get("metrics"), "wall_time_s": summary.get("wall_time_s")})
    return runs


def table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    methods = sorted({r["method"] for r in runs}, key=lambda m: (
        COLUMN_ORDER.index(m.split(" ")[0]) if m.split(" ")[0] in COLUMN_ORDER else 99, m))
    cells: dict[str, dict[str, Any]] = {}
    for task in tasks:
        cells[task] = {}
        for method in methods:
            values = [r["value"] for r in runs if r["task"] == task and r["method"] == method and r["value"] is not None]
            if values:
                cells[task][method] = {"mean": statistics.fmean(values),
                                       "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                       "n": len(values),
                                       "metric": next(r["metric"] for r in runs if r["task"] == task)}
    return {"tasks": tasks, "methods": methods, "cells": cells, "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    lines = ["| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for task in result["tasks"]:
        row = result["cells"][task]
        metric = next((c["metric"] for c in row.values()), "")
        values = []
        for m in methods:
            c = row.get(m)
            values.append("" if c is None else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" + (
                f" (n={c['n']})" if c["n"] != 1 else ""))
        lines.append(f"| {task} | {metric} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def csv_text(result: dict[str, Any]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "method", "metric", "mean", "std", "n"])
    for task in result["tasks"]:
        for method, c in result["cells"][task].items():
            writer.writerow([task, method, c["metric"], f"{c['mean']:.6f}", f"{c['std']:.6f}", c["n"]])
    return buffer.getvalue()
