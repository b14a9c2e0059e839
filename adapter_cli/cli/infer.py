"""``adapt infer``: run a base model with adapters, a composition and a head over texts."""

from __future__ import annotations

from pathlib import Path

import typer

from ..defaults import DEFAULT_MAX_LENGTH
from ._common import handle_errors, info
from .app import app


@app.command(
    "infer",
    epilog=(
        "Examples:\n\n"
        "  adapt infer -m minilm -a sst2 'a gripping film' 'dull and long'      # sst2: a cache name\n\n"
        "  adapt infer -m minilm -a mrpc --pair 'He said it.' 'It was said by him.'   # one text pair\n\n"
        "  adapt infer -m minilm -a sst2 -a mrpc --active 'parallel(sst2,mrpc)' --pair 'Good.' 'Fine.'\n\n"
        "  adapt infer -m minilm -a sst2 -a mrpc -a rte -f rte-fusion --pair 'A premise.' 'A hypothesis.'\n\n"
        "  adapt infer -m minilm -a sst2 -a cola --input mixed.csv --route-column task   # per-row adapter\n\n"
        "  cat texts.txt | adapt infer -m minilm -a sst2 --input - --output preds.csv   # many texts, one load\n\n"
        "  cat texts.txt | adapt infer -m minilm -a sst2 --input - --compile   # compiled: for long inputs\n\n"
        "  adapt infer -m ./smollm2 -a reviews --generate 'this film is' --max-new-tokens 40   # a decoder\n\n"
        "  adapt infer -m ./smollm2 -a reviews -a fresh --active 'parallel(reviews,fresh)' --generate 'the acting' "
        "--temperature 0.8 --top-p 0.9\n\n"
        "  adapt infer -m vit-small -a stripes_pf stripes/val/vertical/0.jpg stripes/val/horizontal   # ViT: images"
    ),
)
@handle_errors
def infer(
    texts: list[str] = typer.Argument(None, help="Texts to classify (or use --input); with --pair, taken two by "
                                      "two as (first, second) pairs. For a vision model (ViT): image files, or "
                                      "folders of them.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Base model directory or Hub id; 'minilm' is the "
                              "embedded all-MiniLM-L6-v2."),
    adapters: list[str] = typer.Option(None, "--adapter", "-a", help="Adapter directory (ours or AdapterHub's) or "
                                       "cache name (see adapt cache ls); repeatable. Its saved head is loaded too."),
    fusions: list[str] = typer.Option(None, "--fusion", "-f", help="Fusion directory or cache name (e.g. "
                                      "rte-fusion); repeatable. One fusion loaded with its members is the default "
                                      "composition."),
    head: Path = typer.Option(None, "--head", help="Head directory: answer every row with this head instead of "
                              "the one that fits the composition."),
    active: str = typer.Option(None, "--active", help="Composition, e.g. 'stack(lang,task)', "
                               "'fuse(mnli,qqp,rte)' or 'parallel(sst2,mrpc)' (one answer per member). Default: "
                               "the loaded fusion, else the last adapter given. Each composition is answered by "
                               "its own head: the adapter's, the last of a stack's, the fusion's."),
    pair: bool = typer.Option(False, "--pair", help="The texts are pairs (MRPC, RTE, STS-B...): A1 B1 A2 B2 ..."),
    allow_single: bool = typer.Option(False, "--allow-single", help="Score single texts with a head trained on "
                                      "pairs (refused by default: the answers would mean little)."),
    input_path: str = typer.Option(None, "--input", "-i", help="CSV, TSV, JSONL or text file; '-' reads stdin, "
                                   "one text per line (one model load for many texts: faster than a shell loop)."),
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
    json_out: bool = typer.Option(False, "--json", help="JSON lines on stdout (the default; accepted for "
                                  "symmetry with the other verbs)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Rows per forward pass."),
    max_length: int = typer.Option(DEFAULT_MAX_LENGTH, "--max-length", min=8, help="Tokens per row (longer rows "
                                   "are truncated); at most what the model's position embeddings cover (the "
                                   "default is cut to a smaller model's limit)."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on a GPU, fp32 on CPU), fp32, "
                                  "bf16 or fp16. Under autocast the base model's linear layers are stored in "
                                  "that dtype, which changes no result and halves their memory."),
    compile_: bool = typer.Option(False, "--compile", help="Run the base model under torch.compile (inductor): "
                                  "the first batch of each composition and shape compiles (seconds to a minute), "
                                  "later ones run faster; same outputs within 1e-5. Refused where inductor "
                                  "cannot build (no C++ compiler)."),
    compile_auto: bool = typer.Option(False, "--compile-auto", help="As --compile where inductor can build; "
                                      "elsewhere one warning and eager."),
    generate: bool = typer.Option(False, "--generate", help="Continue each text instead of classifying it: a "
                                  "decoder (GPT-2, Llama, Mistral, Qwen2) with a causal-LM head (the adapter's own, "
                                  "--head, else the model's pretrained one), adapters active. One JSON line per "
                                  "text: generated, finish (eos, stop, length), new_tokens."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="With --generate: at most this many "
                                       "new tokens per text.  [default: 32]", show_default=False),
    temperature: float = typer.Option(None, "--temperature", min=0.0, help="With --generate: 0 picks the most "
                                      "likely token (greedy); above 0 samples from the softmax at this "
                                      "temperature.  [default: 0]", show_default=False),
    top_p: float = typer.Option(None, "--top-p", help="With --generate and sampling: keep the smallest set of "
                                "tokens whose probabilities reach this mass (nucleus sampling).  [default: 1]",
                                show_default=False),
    stop: list[str] = typer.Option(None, "--stop", help="With --generate: end a text's continuation at this "
                                   "string (left out of the output); repeatable.", show_default=False),
    seed: int = typer.Option(None, "--seed", help="With --generate and sampling: the seed, so a run repeats.  "
                             "[default: 0]", show_default=False),
) -> None:
    """Predict a label and score for each text (or text pair), as JSON lines on stdout (or CSV/JSONL with
    --output). Each line names the composition and the head that answered it. With --generate, a decoder
    continues each text instead."""
    from ..composition import parse_composition
    from ..errors import UsageError

    if output is not None and output.suffix.lower() not in (".jsonl", ".csv"):
        raise UsageError(f"--output must end in .jsonl or .csv, got {output.name}")
    for flag, path in (("--output", output), ("--metrics", metrics_path)):  # before any work, not after it
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"cannot write {flag} {path}: the directory {path.parent} does not exist")
        if path is not None and path.is_dir():
            raise UsageError(f"cannot write {flag} {path}: it is a directory; give a file name")
    parse_composition(active)  # a malformed composition fails before any model is loaded
    from ..devices import autocast_dtype, resolve_device

    where = resolve_device(device)
    autocast = autocast_dtype(precision, where)
    if generate or stop or any(v is not None for v in (max_new_tokens, temperature, top_p, seed)):
        _generate(texts, input_path, text_column, (model, adapters or [], fusions or [], head, active),
                  (generate, max_new_tokens, temperature, top_p, stop, seed), batch_size, max_length, where, autocast,
                  output, {"--pair": pair, "--pair-column": pair_column, "--route-column": route_column,
                           "--label-column": label_column, "--task": task, "--metrics": metrics_path,
                           "--allow-single": allow_single, "--compile": compile_ or compile_auto})
        return
    if task is not None and not texts and input_path is None and _is_mlm(task):
        if compile_ or compile_auto:  # found in review: it was silently ignored here
            from ..errors import UsageError

            raise UsageError(f"--task {task} scores perplexity eagerly; --compile applies to predictions, drop it")
        _perplexity(task, data_dir, (model, adapters or [], fusions or [], head, active), batch_size, max_length,
                    where, autocast, metrics_path)
        return
    rows, spec = _rows(texts or [], pair, input_path, text_column, pair_column, label_column, route_column, task,
                       data_dir)
    from ..inference import image_rows, predict

    m, tokenizer, composition, head_name = _load(model, adapters or [], fusions or [], head, active)
    if m.arch.vision:  # the arguments name image files, or folders of them
        rows = image_rows(rows)
    max_length = m.fit_max_length(max_length, "--max-length")
    if autocast is not None:  # before the move: the GPU never holds the fp32 copies
        m.cast_frozen_linears(autocast)
    m.to(where)
    from ..compiled import compile_model

    compile_model(m, "auto" if compile_auto else compile_, where, "--compile", fallback="--compile-auto")
    from ._progress import batch_progress

    predictions: list[dict] = []
    with batch_progress(-(-len(rows) // batch_size), f"infer {task or ''}".strip()) as advance:
        for p in predict(m, tokenizer, rows, composition, batch_size, max_length, autocast, head_name,
                         allow_single, allow_empty=_unanswerable(rows, label_column is not None or task is not None)):
            predictions.append(p)
            if len(predictions) % batch_size == 0:
                advance(1)
    _finish(predictions, rows, (spec, m), max_length, metrics_path, output)


def _unanswerable(rows: list, labelled: bool) -> bool:
    """Whether the gold answers include questions without one (SQuAD 2.0): then a question-answering head
    may answer "", as training scored it."""
    from ..errors import UsageError
    from ..inference import answer_texts

    if not labelled:
        return False
    try:
        return any(not answer_texts(r.label, n) for n, r in enumerate(rows, 1))
    except UsageError:  # not question answering's labels
        return False


def _finish(predictions: list[dict], rows: list, scoring: tuple, max_length: int, metrics_path: Path | None,
            output: Path | None) -> None:
    """Warn about questions left unanswered, score labelled rows, print or write the predictions."""
    unanswered = sum(1 for p in predictions if "answer" in p and p["answer"] is None)
    if unanswered:
        import sys

        print(f"warning: {unanswered} question(s) leave no room for their context within --max-length {max_length}: "
              "answered null (raise --max-length)", file=sys.stderr)
    if any(r.label is not None for r in rows):
        _report_metrics(*scoring, rows, predictions, metrics_path)
    if output is None:
        import json

        for p in predictions:
            print(json.dumps(p, ensure_ascii=False))
        return
    _write(output, predictions)
    info(f"wrote {len(predictions)} predictions to {output}")


def _generate(texts: list[str] | None, input_path: str | None, text_column: str, load: tuple, knobs: tuple,
              batch_size: int, max_length: int, where: object, autocast: object, output: Path | None,
              others: dict) -> None:
    from ..errors import UsageError
    from ..generation import Sampling
    from ._generate import refuse_options, run

    generate, max_new_tokens, temperature, top_p, stop, seed = knobs
    if not generate:
        raise UsageError("--max-new-tokens, --temperature, --top-p, --stop and --seed set up generation; add "
                         "--generate")
    from ..inference import read_rows

    refuse_options(others)
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    sampling = Sampling(stop=tuple(stop or ()), **{k: v for k, v in given.items() if v is not None})
    rows = [r.text for r in read_rows(texts or [], input_path, text_column, None)]
    run(_load(*load), rows, sampling, batch_size, max_length, where, autocast, output, _write)


def _rows(texts: list[str], pair: bool, input_path: str | None, text_column: str, pair_column: str | None,
          label_column: str | None, route_column: str | None, task: str | None, data_dir: str | None) -> tuple:
    from ..errors import UsageError
    from ..inference import Row, read_rows, rows_from_task

    spec = None
    if task is not None:
        from ..tasks import get_task

        spec = get_task(task)
    if pair:
        if input_path is not None or not texts:
            raise UsageError("--pair takes the texts on the command line, two by two; with --input use "
                             "--pair-column")
        if len(texts) % 2:
            raise UsageError(f"--pair needs an even number of texts (first, second, first, second ...), "
                             f"got {len(texts)}")
        return [Row(a, b) for a, b in zip(texts[::2], texts[1::2])], spec
    if spec is not None and not texts and input_path is None:
        return rows_from_task(spec, data_dir), spec
    return read_rows(texts, input_path, text_column, pair_column, label_column, route_column), spec


def _load(model: str, adapters: list[str], fusions: list[str], head: Path | None, active: str | None) -> tuple:
    """The model with its adapters, fusions and head; the composition to run; the head chosen by --head."""
    from ..defaults import resolve_model
    from ..model import AdapterModel
    from ..tokenizer import load_preprocessor
    from ._common import quiet_libraries

    quiet_libraries()
    path = resolve_model(model)
    info(f"loading {model} ...")
    m = AdapterModel.from_pretrained(path)
    tokenizer = load_preprocessor(path, m, model)
    names = [m.load_adapter(_locate(a, m, "adapter")) for a in adapters]
    for f in fusions:
        m.load_fusion(_locate(f, m, "fusion"))
    if head is None and not adapters and not fusions and (Path(path) / "head_config.json").is_file():
        head = Path(path)  # a full fine-tuning run's best/: the model and its head in one directory
        info(f"answering with the head saved in {model}")
    head_name = m.load_head(head, overwrite=True) if head is not None else None
    return m, tokenizer, m.resolve_composition(active if active is not None else _default(m, names)), head_name


def _default(model: object, names: list[str]) -> str | None:
    """One fusion loaded (with its members): that fusion; else the last adapter given."""
    fusions = list(model.fusions.items())  # type: ignore[attr-defined]
    if len(fusions) == 1:
        name, fusion = fusions[0]
        members = ",".join(fusion.adapters)
        return f"fuse({members})" if name == members else f"fuse({members},name={name})"
    if len(fusions) > 1:
        from ..errors import UsageError

        raise UsageError(f"{len(fusions)} fusions are loaded ({', '.join(n for n, _ in fusions)}); choose one with "
                         "--active 'fuse(...)'")
    return names[-1] if names else None


def _is_mlm(task: str) -> bool:
    """A language-modelling task on plain text (mlm or lm): scored by perplexity, not row by row."""
    from ..tasks import get_task

    return get_task(task).plain_text


def _perplexity(task: str, data_dir: str | None, load: tuple, batch_size: int, max_length: int, where: object,
                autocast: object, metrics_path: Path | None) -> None:
    """--task of kind mlm: perplexity and masked-token accuracy of a masked-LM head (a language adapter's) on
    the task's dev text, masked as `adapt train` masks it; of kind lm: perplexity and next-token accuracy of
    a decoder's causal-LM head (the adapter's, else the model's own). One JSON line on stdout."""
    import json

    from ..errors import UsageError
    from ..fsutil import dump_json, write_text_atomic
    from ..tasks import get_task
    from ..tasks.text import load_text
    from ..training.mlm import Masker, check_blocks, encode_text, evaluate_mlm

    spec = get_task(task)
    lines, source = load_text(spec, "eval", data_dir)
    m, tokenizer, composition, head_name = _load(*load)
    if spec.kind == "lm":
        from ..generation import choose_lm_head

        name = choose_lm_head(m, head_name, composition, purpose=f"task {spec.name}")
    else:
        name = head_name or m.head_for(composition, required=True)
    wanted = "seq2seq_lm" if spec.kind == "lm" and m.arch.encoder_decoder else spec.head_type
    if m.heads[name].config.head_type != wanted:
        raise UsageError(f"task {spec.name} scores a {wanted} head, but head {name!r} is a "
                         f"{m.heads[name].config.head_type} head; load a language adapter (trained with --task mlm)")
    if spec.kind == "lm":
        from ..training.clm import encode_lm

        data = encode_lm(lines, tokenizer, m.fit_max_length(max_length, "--max-length"), m.arch.encoder_decoder)
    else:
        data = encode_text(lines, tokenizer, m.fit_max_length(max_length, "--max-length"))
    check_blocks(data, m.reft_suffix(m.resolve_composition(composition)), "scored")
    m.to(where)
    if spec.kind == "lm":
        from ..training.clm import evaluate_lm

        metrics = evaluate_lm(m, data, batch_size, composition, where, autocast, tokenizer.pad_token_id or 0, name)
    else:
        metrics = evaluate_mlm(m, data, Masker.for_tokenizer(tokenizer, m.vocab_size, 0.15), batch_size,
                               composition, where, autocast, tokenizer.pad_token_id or 0, head=name)
    from ..composition import shown

    result = {"task": spec.name, "text": source, "active": shown(composition), "head": name,
              "lines": len(lines), "blocks": len(data), **metrics}
    if metrics_path is not None:
        write_text_atomic(metrics_path, dump_json(result))
    print(json.dumps(result))


def _report_metrics(spec: object, m: object, rows: list, predictions: list[dict], path: Path | None) -> None:
    import sys

    from ..inference import score

    metrics = score(spec, m, rows, predictions)
    print("metrics: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" ({len(rows)} rows)",
          file=sys.stderr)
    if path is not None:
        from ..fsutil import dump_json, write_text_atomic

        write_text_atomic(path, dump_json({"rows": len(rows), **metrics}))  # whole or not at all


def _locate(spec: str, model: object, kind: str) -> Path:
    from ..resolve import locate

    return locate(spec, model.name_or_path, kind)  # type: ignore[attr-defined]


def _write(path: Path, predictions: list[dict]) -> None:
    import csv
    import io
    import json

    from ..fsutil import write_text_atomic

    f = io.StringIO(newline="")
    if path.suffix.lower() == ".csv":
        flat = [_flatten(p) for p in predictions]
        fields = list(dict.fromkeys(k for p in flat for k in p))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    else:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    write_text_atomic(path, f.getvalue())  # whole or not at all; a full disk is one line (handle_errors)


def _flatten(prediction: dict) -> dict:
    """parallel(...) answers as columns MEMBER.label, MEMBER.score, ... in a CSV."""
    import json

    flat = {k: v for k, v in prediction.items() if k != "members"}
    for member, answer in (prediction.get("members") or {}).items():
        flat.update({f"{member}.{k}": v for k, v in answer.items()})
    # label sets, per-word tags and entity spans are one JSON cell each
    return {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in flat.items()}
