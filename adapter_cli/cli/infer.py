"""``adapt infer``: run a base model with adapters, a composition and a head over texts."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import handle_errors, info
from .app import app


@app.command(
    "infer",
    epilog=(
        "Examples:\n\n"
        "  adapt infer -m minilm -a ./sst2-adapter 'a gripping film' 'dull and long'\n\n"
        "  adapt infer -m bert-base-uncased -a ./mnli -a ./qqp -a ./rte -f ./fusion --head ./rte-head \\\n"
        "      --active 'fuse(mnli,qqp,rte)' --input dev.csv --text-column sentence1 --pair-column sentence2\n\n"
        "  cat texts.txt | adapt infer -m minilm -a ./sst2-adapter --input - --output preds.csv"
    ),
)
@handle_errors
def infer(
    texts: list[str] = typer.Argument(None, help="Texts to classify (or use --input).", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Base model directory or Hub id; 'minilm' is the "
                              "embedded all-MiniLM-L6-v2."),
    adapters: list[str] = typer.Option(None, "--adapter", "-a", help="Adapter directory (ours or AdapterHub's) or "
                                       "cache name (see adapt cache ls); repeatable. Its saved head is loaded too."),
    fusions: list[str] = typer.Option(None, "--fusion", "-f", help="Fusion directory or cache name; repeatable."),
    head: Path = typer.Option(None, "--head", help="Head directory (overrides heads saved with adapters)."),
    active: str = typer.Option(None, "--active", help="Composition, e.g. 'stack(lang,task)' or "
                               "'fuse(mnli,qqp,rte)'. Default: the last adapter given."),
    input_path: str = typer.Option(None, "--input", "-i", help="CSV, TSV, JSONL or text file; '-' reads stdin."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    pair_column: str = typer.Option(None, "--pair-column", help="Column holding the second text of a pair."),
    route_column: str = typer.Option(None, "--route-column", help="Column naming the adapter or composition for "
                                     "each row (per-example routing), e.g. values 'sst2' or 'fuse(a,b)'."),
    label_column: str = typer.Option(None, "--label-column", help="Column with gold labels: report the task "
                                     "metrics (on stderr, and in --metrics)."),
    task: str = typer.Option(None, "--task", "-t", help="Task whose metrics and label names apply; without texts "
                             "or --input, its dev split is predicted and scored."),
    data_dir: str = typer.Option(None, "--data-dir", "-d", help="The task's original files (default: the Hub)."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Write the metrics as JSON to this file."),
    output: Path = typer.Option(None, "--output", "-o", help="Write predictions here (.jsonl or .csv) "
                                "instead of stdout."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Rows per forward pass."),
    max_length: int = typer.Option(128, "--max-length", min=8, help="Tokens per row (longer rows are truncated)."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on a GPU, fp32 on CPU), fp32, "
                                  "bf16 or fp16. Under autocast the base model's linear layers are stored in "
                                  "that dtype, which changes no result and halves their memory."),
) -> None:
    """Predict a label and score for each text, as JSON lines on stdout (or CSV/JSONL with --output)."""
    import json

    from ..composition import parse_composition
    from ..errors import UsageError

    if output is not None and output.suffix.lower() not in (".jsonl", ".csv"):
        raise UsageError(f"--output must end in .jsonl or .csv, got {output.name}")
    parse_composition(active)  # a malformed composition fails before any model is loaded
    from ..devices import autocast_dtype, resolve_device

    where = resolve_device(device)
    autocast = autocast_dtype(precision, where)
    from ..inference import predict, read_rows, rows_from_task, score

    spec = None
    if task is not None:
        from ..tasks import get_task

        spec = get_task(task)
    if spec is not None and not texts and input_path is None:
        rows = rows_from_task(spec, data_dir)
    else:
        rows = read_rows(texts or [], input_path, text_column, pair_column, label_column, route_column)
    from transformers import AutoTokenizer

    from ..defaults import resolve_model
    from ..model import AdapterModel
    from ._common import quiet_libraries

    quiet_libraries()
    path = resolve_model(model)
    info(f"loading {model} ...")
    m = AdapterModel.from_pretrained(path)
    names = [m.load_adapter(_locate(a, m)) for a in adapters or []]
    for f in fusions or []:
        m.load_fusion(_locate(f, m))
    if head is not None:
        m.load_head(head, overwrite=True)
    composition = m.resolve_composition(active if active is not None else (names[-1] if names else None))
    if autocast is not None:  # before the move: the GPU never holds the fp32 copies
        m.cast_frozen_linears(autocast)
    m.to(where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"no tokenizer for {model}: {str(exc).splitlines()[0][:160]}") from None
    predictions = list(predict(m, tokenizer, rows, composition, batch_size, max_length, autocast))
    if any(r.label is not None for r in rows):
        metrics = score(spec, m, rows, predictions)
        print("metrics: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" ({len(rows)} rows)",
              file=__import__("sys").stderr)
        if metrics_path is not None:
            from ..fsutil import dump_json

            metrics_path.write_text(dump_json({"rows": len(rows), **metrics}))
    if output is None:
        for p in predictions:
            print(json.dumps(p, ensure_ascii=False))
        return
    _write(output, predictions)
    info(f"wrote {len(predictions)} predictions to {output}")


def _locate(spec: str, model: object) -> Path:
    from ..cache import locate

    return locate(spec, model.name_or_path)  # type: ignore[attr-defined]


def _write(path: Path, predictions: list[dict]) -> None:
    import csv
    import json
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".csv":
                fields = list(dict.fromkeys(k for p in predictions for k in p))
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(predictions)
            else:
                for p in predictions:
                    f.write(json.dumps(p, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
