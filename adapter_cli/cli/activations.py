"""``adapt inspect-activations``: which adapters each fusion layer attends to (AdapterFusion Fig. 4/6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ._common import emit_json, handle_errors, info, print_table
from .app import app


@app.command(
    "inspect-activations",
    epilog=(
        "Examples:\n\n"
        "  adapt inspect-activations rte-fusion --data-dir glue/RTE --out plots/\n\n"
        "  adapt inspect-activations rte-fusion mrpc-fusion --data-dir rte=glue/RTE --data-dir mrpc=glue/MRPC "
        "--out plots/ --json\n\n"
        "  adapt inspect-activations ./my-fusion -a ./sst2 -a ./mrpc --task rte --data-dir glue/RTE"
    ),
)
@handle_errors
def inspect_activations(
    fusions: list[str] = typer.Argument(..., help="Fusions: cache names (they know their members and target "
                                        "task) or directories (then give -a and --task)."),
    model: str = typer.Option(None, "--model", "-m", help="Base model (default: the MT-A base the fusions were "
                              "trained with, if they were, else minilm)."),
    adapters: list[str] = typer.Option(None, "--adapter", "-a", help="Member adapters for fusion directories."),
    task: str = typer.Option(None, "--task", "-t", help="Task whose dev split is used (default: the fusion's "
                             "target task)."),
    data_dirs: list[str] = typer.Option(None, "--data-dir", "-d", help="The task's original files; with several "
                                        "fusions, task=DIR per task."),
    max_examples: int = typer.Option(None, "--max-examples", min=1, help="Use at most this many dev examples (a "
                                     "seeded subset; each label keeps its share)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write activations.png, .csv and .json to this directory."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    json_out: bool = typer.Option(False, "--json", help="Print the mean weights as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Mean AdapterFusion attention per layer and adapter on a task's dev split, as a heat map grid
    (rows: target tasks, columns: adapters, one panel per layer), CSV/JSON and a terminal table.
    Layers are numbered from 0 in all of them."""
    from ..activations import plot
    from ..defaults import resolve_model
    from ..model import AdapterModel
    from ._common import quiet_libraries

    dirs = _data_dirs(data_dirs or [])
    from ..tokenizer import load_preprocessor

    quiet_libraries()
    if model is None:
        from ..resolve import mta_base_of

        model = mta_base_of([*fusions, *(adapters or [])]) or "minilm"
    path = resolve_model(model)
    if not quiet:
        info(f"loading {model} ...")
    m = AdapterModel.from_pretrained(path)
    tokenizer = load_preprocessor(path, m, model)  # a vision model's image processor
    loaded: set[str] = set()
    settings = {"adapters": adapters or [], "task": task, "dirs": dirs, "max_examples": max_examples,
                "batch_size": batch_size, "quiet": quiet}
    results = [_measure_one(m, tokenizer, spec, index, loaded, settings) for index, spec in enumerate(fusions)]
    rows = [r for result in results for r in result.rows()]
    if out is not None:
        _write(out, results, rows, plot)
    if json_out:
        emit_json({"results": [{"target": r.target, "fusion": r.fusion, "adapters": r.adapters,
                                "layers": [{"placement": loc, "layer": layer, "weights": w}
                                           for (loc, layer), w in sorted(r.weights.items())]} for r in results],
                   "files": sorted(str(p) for p in out.iterdir()) if out is not None else []})
        return
    for r in results:
        print_table(*table(r), title=f"{r.fusion} on {r.target} (mean fusion attention; each row sums to 1)")
    if out is not None:
        print(f"wrote {out / 'activations.png'}, activations.csv, activations.json")


def _measure_one(m: Any, tokenizer: Any, spec: str, index: int, loaded: set[str], settings: dict[str, Any]) -> Any:
    """Load one fusion (and its members) and measure it on its target task's dev split."""
    from ..activations import batches, measure
    from ..errors import UsageError
    from ..formats import read_fusion
    from ..resolve import locate
    from ..tasks import get_task
    from ..tasks.loading import load_split
    from ..training.data import encode
    from ._progress import batch_progress

    location = locate(spec, m.name_or_path, "fusion")
    artifact = read_fusion(location)
    entry = json.loads((location / "entry.json").read_text()) if (location / "entry.json").is_file() else {}
    for member in entry.get("fusion_adapters") or settings["adapters"]:
        where = locate(member, m.name_or_path, "adapter")
        name = json.loads((where / "adapter_config.json").read_text()).get("name")
        if name not in loaded and name in artifact.adapters:
            m.load_adapter(where, with_head=False)
            loaded.add(name)
    target = settings["task"] or entry.get("task_source") or entry.get("task")
    if target is None:
        raise UsageError(f"{spec}: give --task (a fusion directory does not say which task it was trained on)")
    spec_task = get_task(target)
    fusion_name = m.load_fusion(location, name=f"fusion{index}", with_head=False)
    dirs = settings["dirs"]
    examples = load_split(spec_task, "eval", dirs.get(spec_task.name, dirs.get("")))
    if settings["max_examples"]:  # a seeded subset, each label keeping its share: files are often sorted by label
        from ..tasks.subsets import draw

        chosen = draw("eval", [e.label for e in examples], settings["max_examples"], 0,
                      stratify=spec_task.kind in ("single", "pair", "image"))
        examples = [examples[i] for i in chosen.indices]
    if spec_task.kind == "multiple_choice":
        raise UsageError("multiple-choice targets are not supported by inspect-activations yet")
    encoded = encode(spec_task, examples, tokenizer, 128)
    if not settings["quiet"]:
        info(f"{spec}: {len(examples)} {spec_task.name} dev examples")
    pad_id = getattr(tokenizer, "pad_token_id", 0) or 0  # an image processor has none
    with batch_progress(batches(len(examples), settings["batch_size"]), spec, settings["quiet"]) as advance:
        result = measure(m, fusion_name, encoded, settings["batch_size"], pad_id,
                         spec_task.name, progress=advance)
    result.fusion = spec
    return result


def table(result: Any) -> tuple[list[str], list[list[str]]]:
    """The terminal table of one result: a row per layer (0-based, as in the CSV), a column per adapter."""
    from ..activations import layer_label

    ordered = sorted(result.weights.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    return ["layer", *result.adapters], [[layer_label(loc, layer), *(f"{w:.2f}" for w in ws)]
                                         for (loc, layer), ws in ordered]


def _data_dirs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        out[task if sep else ""] = path if sep else item
    return out


def _write(out: Path, results: list, rows: list[dict], plot: Any) -> None:
    import csv

    from ..fsutil import atomic_directory

    with atomic_directory(out) as tmp:
        with open(tmp / "activations.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "activations.json").write_text(json.dumps(rows, indent=1) + "\n")
        plot(results, tmp / "activations.png")
