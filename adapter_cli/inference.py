"""Batched prediction with an AdapterModel: texts (or text pairs) in, label and score per row out."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_MAX_LENGTH
from .errors import UsageError


@dataclass
class Row:
    text: str
    pair: str | None = None
    extra: dict[str, Any] | None = None
    label: Any = None
    route: str | None = None  # the composition for this row (per-example routing)
    words: tuple[str, ...] | None = None  # a tagging task's own words (else the text split on whitespace)
    image: Any = None  # a vision model's image, when it is not the file ``text`` names (a Hub dataset's)


def rows_from_task(task: Any, data_dir: str | None) -> list[Row]:
    """The task's evaluation split, labelled (single-text and pair tasks)."""
    from .tasks.loading import load_split

    if task.kind == "multiple_choice":
        raise UsageError("adapt infer does not read multiple-choice tasks yet; evaluate them with adapt train")
    examples = load_split(task, "eval", data_dir)
    if task.kind == "qa":  # the question and its context, and the gold answer texts (none: unanswerable)
        return [Row(e.texts[0], e.texts[1], label=[text for _, text in e.label]) for e in examples]
    if task.kind == "tagging":  # the words as a text, and a label name per word
        return [Row(" ".join(e.words), label=[task.labels[i] for i in e.label], words=e.words) for e in examples]
    if task.kind == "multilabel":
        return [Row(e.texts[0], label=[name for name, on in zip(task.labels, e.label) if on]) for e in examples]
    if task.kind == "image":  # the file (or where a Hub row came from) and the label's name
        return [Row(e.texts[0], label=task.labels[e.label], image=None if isinstance(e.image, Path) else e.image)
                for e in examples]
    return [Row(e.texts[0], e.texts[1] if len(e.texts) > 1 else None, label=e.label) for e in examples]


def score(task: Any, model: Any, rows: list[Row], predictions: list[dict[str, Any]]) -> dict[str, float]:
    """Task metrics for labelled rows; labels may be names or ids. Every row must have been answered by one
    head: metrics over the labels of several heads would mean nothing."""
    from .tasks.metrics import compute

    if any("members" in p for p in predictions):
        raise UsageError("metrics are not computed for parallel(...): score each member with its own `active` composition")
    heads = sorted({str(p.get("head")) for p in predictions})
    if len(heads) != 1:
        raise UsageError(f"metrics need one head for every row, but rows were answered by {', '.join(heads)}; "
                         "score each task on its own")
    head = model.heads[heads[0]].config
    if head.head_type == "question_answering":
        golds = [answer_texts(r.label, n) for n, r in enumerate(rows, 1)]
        return compute(task.metrics if task else ("token_f1", "exact_match"), [p["answer"] for p in predictions],
                       golds, "qa")
    if head.head_type in ("multilabel_classification", "tagging"):
        return _score_labels(task, head, rows, predictions)
    if head.head_type == "regression":
        gold = [float(r.label) for r in rows]
        return compute(task.metrics if task else ("pearson", "spearman"), [p["score"] for p in predictions], gold)
    names = [head.id2label[i] for i in range(len(head.id2label))]
    def index(value: Any) -> int:
        text = str(value).strip()
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            return int(text)
        raise UsageError(f"label {value!r} is not one of {', '.join(names)}")
    gold_ids = [index(r.label) for r in rows]
    pred_ids = [names.index(p["label"]) for p in predictions]
    return compute(task.metrics if task else ("accuracy",), pred_ids, gold_ids)


def _score_labels(task: Any, head: Any, rows: list[Row], predictions: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics of a multi-label head (gold: a list of label names or ids per row, or one string of them
    separated by commas) or a tagging head (gold: a label per word)."""
    from .tasks.metrics import compute

    names = [head.id2label[i] for i in range(len(head.id2label))]
    kind = "tagging" if head.head_type == "tagging" else "multilabel"
    golds = [_label_ids(r.label.split() if kind == "tagging" and isinstance(r.label, str) else r.label, names, n)
             for n, r in enumerate(rows, 1)]
    if kind == "tagging":
        from .tagging import outside_label

        fill = outside_label(names)  # a word truncation cut counts as outside any entity
        preds = [[names.index(t) if t is not None else fill for t in p["tags"]] for p in predictions]
        for n, (gold, pred) in enumerate(zip(golds, preds), 1):
            if len(gold) != len(pred):
                raise UsageError(f"row {n} has {len(pred)} words but {len(gold)} gold labels; give one label per "
                                 "word (words are split on whitespace)")
        metrics = task.metrics if task else ("entity_f1", "accuracy")
        return compute(metrics, preds, golds, kind, names)
    hot = [[int(i in gold) for i in range(len(names))] for gold in golds]
    preds = [[int(name in p["labels"]) for name in names] for p in predictions]
    return compute(task.metrics if task else ("micro_f1", "macro_f1", "accuracy"), preds, hot, kind)


def answer_texts(value: Any, row: int) -> list[str]:
    """A question's gold answer texts from a label cell: a text, a list of texts or of {text, answer_start}
    objects, the Hub's {text: [...], answer_start: [...]}, or nothing (null, [], ""): no answer."""
    if isinstance(value, dict):
        value = value.get("text")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    texts = [item.get("text") if isinstance(item, dict) else item for item in items]
    if not all(isinstance(t, str) for t in texts):
        raise UsageError(f"row {row}: a gold answer must be a text, a list of texts or of {{text, answer_start}}, got "
                         f"{value!r}"[:300])
    return [t for t in texts if t]


def _label_ids(value: Any, names: list[str], row: int) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
    out = []
    for item in items:
        text = str(item).strip()
        if text in names:
            out.append(names.index(text))
        elif text.isascii() and text.isdigit() and int(text) < len(names):
            out.append(int(text))
        else:
            raise UsageError(f"row {row}: label {item!r} is not one of {', '.join(names)}")
    return out


def read_rows(texts: list[str], input_path: str | None, text_column: str, pair_column: str | None,
              label_column: str | None = None, route_column: str | None = None) -> list[Row]:
    """Rows from arguments, a CSV/TSV/JSONL file, or stdin ('-'): one text per line."""
    if texts and input_path:
        raise UsageError("give texts as arguments or `input`, not both")
    if texts:
        return [Row(t) for t in texts]
    if input_path is None:
        raise UsageError("no input: give texts as arguments or `input` FILE ('-' reads stdin)")
    if input_path == "-":
        lines = [line.rstrip("\n") for line in sys.stdin]
        return [Row(line) for line in lines if line.strip()]
    path = Path(input_path)
    if path.is_dir():
        raise UsageError(f"input {path} is a folder; give a file of rows (images and their folders are given as "
                         "arguments)")
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        from .tasks.loading import read_table

        records = read_table(path)
    else:  # plain text: one row per line
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        records = [{text_column: line} for line in text.splitlines() if line.strip()]
    if not records:
        raise UsageError(f"{path} holds no rows")
    for column in (text_column, pair_column, label_column, route_column):
        if column is not None and column not in records[0]:
            raise UsageError(f"{path} has no column {column!r}; columns: {', '.join(map(str, records[0]))}")
    return [Row(str(r[text_column]), str(r[pair_column]) if pair_column else None, r,
                r[label_column] if label_column else None, str(r[route_column]) if route_column else None)
            for r in records]


def predict(model: Any, tokenizer: Any, rows: list[Row], active: Any = None, batch_size: int = 32,
            max_length: int = DEFAULT_MAX_LENGTH, autocast: Any = None, head: str | None = None,
            allow_single: bool = False, allow_empty: bool = False) -> Iterator[dict[str, Any]]:
    """Predictions in row order, on the model's device (under autocast to ``autocast`` when given). Rows
    with a ``route`` use that composition (validated up front), the others ``active``; rows are batched
    per composition. Each row is answered by the head that fits its composition (``AdapterModel.head_for``)
    unless ``head`` names one for all; a single text given to a head trained on pairs is refused unless
    ``allow_single``. ``allow_empty``: a question-answering head answers "" where position 0 (no answer)
    scores higher than the best span, as for SQuAD 2.0."""
    routes = {r.route for r in rows if r.route is not None}
    compositions = {route: model.resolve_composition(route) for route in sorted(routes)}
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.route, []).append(i)
    for route, indices in groups.items():
        chosen = compositions[route] if route is not None else model.resolve_composition(active)
        _check_inputs(model, [rows[i] for i in indices], chosen, head, allow_single)
    options = _Options(batch_size, max_length, autocast, head, allow_empty)
    if not routes:
        yield from _predict(model, tokenizer, rows, model.resolve_composition(active), options)
        return
    questions = any(h.config.head_type == "question_answering" for h in model.heads.values())
    if not questions and all(r.route in model.adapters and _splittable(model.adapters[r.route]) for r in rows):
        yield from _predict_routed(model, tokenizer, rows, options)
        return
    results: list[dict[str, Any] | None] = [None] * len(rows)
    for route, indices in groups.items():
        chosen = compositions[route] if route is not None else model.resolve_composition(active)
        for i, out in zip(indices, _predict(model, tokenizer, [rows[i] for i in indices], chosen, options)):
            results[i] = out
    yield from (r for r in results if r is not None)


def _splittable(adapter_set: Any) -> bool:
    """Whether rows of this adapter may share a batch split with other adapters' rows: a ReFT adapter runs only
    alone and an invertible layer only at the bottom of a composition, so their rows run group by group (so do a
    prompt adapter's: it lengthens its rows)."""
    return adapter_set.config.architecture not in ("reft", "prompt_tuning") and \
        getattr(adapter_set, "invertible", None) is None


@dataclass(frozen=True)
class _Options:
    batch_size: int
    max_length: int
    autocast: Any
    head: str | None
    allow_empty: bool = False


def _check_inputs(model: Any, rows: list[Row], composition: Any, head: str | None, allow_single: bool) -> None:
    """Refuse what would give meaningless answers: no head at all, a multiple-choice head (options must be
    grouped), single texts for a head trained on pairs."""
    names = [head] if head is not None else model.heads_for(composition, required=True)
    singles = sum(r.pair is None for r in rows)
    if model.arch.vision and singles < len(rows):
        raise UsageError(f"{model.arch.name} models classify one image at a time; give image files, not pairs")
    questions = [n for n in names if model.heads[n].config.head_type == "question_answering"]
    if questions and len(questions) < len(names):
        raise UsageError(f"head {questions[0]!r} answers from windows of the context, one or more per row, which "
                         "another kind of head cannot read row by row; run the question-answering adapters apart "
                         "from the others")
    for name in dict.fromkeys(names):
        config = model.heads[name].config
        if config.head_type == "multiple_choice":
            raise UsageError("adapt infer scores one text per row; a multiple-choice head needs its options "
                             "grouped (evaluate multiple-choice tasks with adapt train)")
        if config.head_type == "masked_lm":
            raise UsageError(f"head {name!r} is a masked-LM head (a language adapter's): adapt infer answers with task "
                             f"heads; stack a task adapter on the language adapter, e.g. `adapter` {name} `adapter` "
                             f"TASK `active` 'stack({name},TASK)'")
        if config.head_type == "question_answering":
            if singles:
                raise UsageError(f"head {name!r} answers a question from a context: give each row as a pair, the "
                                 "question first (`pair`, or `pair_column` with `input`)")
            from .composition import BatchSplit, Stack

            node = composition
            while isinstance(node, Stack):
                node = node.children[-1]
            if isinstance(node, BatchSplit):
                raise UsageError(f"head {name!r} answers from windows of the context, which a batch split (or "
                                 "routing) cannot divide by rows; run one composition at a time")
        if config.text_pair and singles and not allow_single:
            raise UsageError(f"head {name!r} was trained on text pairs, but {singles} row(s) hold a single text; "
                             "give pairs (`pair`, or `pair_column` with `input`), or pass `allow_single` to "
                             "score single texts anyway")


def _predict_routed(model: Any, tokenizer: Any, rows: list[Row], options: _Options) -> Iterator[dict[str, Any]]:
    """Every row names one adapter: each batch runs once, its rows grouped by adapter in a batch split
    (one batched product over per-row weights, whatever the number of distinct adapters); each part is
    answered by its own adapter's head."""
    from .composition import BatchSplit, Stack

    for start in range(0, len(rows), options.batch_size):
        chunk = rows[start:start + options.batch_size]
        order = sorted(range(len(chunk)), key=lambda i: str(chunk[i].route))
        names = [str(chunk[i].route) for i in order]
        runs = [(name, len(list(group))) for name, group in itertools.groupby(names)]
        split: Any = Stack((runs[0][0],)) if len(runs) == 1 else \
            BatchSplit(tuple(name for name, _ in runs), sizes=tuple(n for _, n in runs))
        outs = list(_predict(model, tokenizer, [chunk[i] for i in order], split,
                             _Options(len(chunk), options.max_length, options.autocast, options.head,
                                      options.allow_empty)))
        placed: list[dict[str, Any]] = [{}] * len(chunk)
        for i, out in zip(order, outs):
            out["active"] = chunk[i].route
            placed[i] = out
        yield from placed


def _predict(model: Any, tokenizer: Any, rows: list[Row], active: Any, options: _Options) -> Iterator[dict[str, Any]]:
    import torch

    from .composition import Parallel

    model.eval()
    device = next(model.parameters()).device
    head_kw = {} if options.head is None else {"head": options.head}
    shown = _display(active)
    heads = [options.head] if options.head is not None else model.heads_for(active)
    kinds = {model.heads[h].config.head_type for h in heads if h is not None}
    tagging = "tagging" in kinds
    for start in range(0, len(rows), options.batch_size):
        chunk = rows[start:start + options.batch_size]
        if model.arch.vision:
            enc, words = _pixels(tokenizer, chunk), None
        elif "question_answering" in kinds:
            enc, words = _windows(tokenizer, chunk, options.max_length, options.allow_empty)
        else:
            enc, words = _tokenize(tokenizer, chunk, options.max_length, tagging)
        if "question_answering" in kinds and not words[0].example:  # every question fills a window: no answers
            out = _unanswered(heads, isinstance(active, Parallel))
        else:
            if "attention_mask" in enc:
                _check_not_empty(enc["attention_mask"], start)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode(), torch.autocast(device.type, dtype=options.autocast,
                                                        enabled=options.autocast is not None):
                out = model(**enc, active=active, **head_kw)
        if isinstance(active, Parallel):
            members = [_display(c) for c in active.children]
            answers = [_answers(model, [branch], words) for branch in out.branches]
            for j, row in enumerate(chunk):
                yield {**_row_fields(row, shown, model.arch.vision),
                       "members": {m: a[j] for m, a in zip(members, answers)}}
            continue
        for row, answer in zip(chunk, _answers(model, list(out.branches or [out]), words)):
            yield {**_row_fields(row, shown, model.arch.vision), **answer}


def _unanswered(heads: list[Any], parallel: bool) -> Any:
    """What the model would have returned for a batch of no windows: no logits, for each head."""
    import types

    import torch

    parts = [types.SimpleNamespace(head=h, logits=torch.zeros(0, 1, 2)) for h in heads]
    return types.SimpleNamespace(branches=parts if parallel else None, head=parts[0].head, logits=parts[0].logits)


def _pixels(processor: Any, chunk: list[Row]) -> dict[str, Any]:
    """A vision model's batch: each row's image (the file its text names), decoded and preprocessed."""
    from .images import open_image, pixel_values

    images = [open_image(r.text) if r.image is None else open_image(r.image, r.text) for r in chunk]
    return {"pixel_values": pixel_values(processor, images)}


def image_rows(rows: list[Row]) -> list[Row]:
    """A vision model's rows: each names an image file, or a folder whose every image (images.image_files)
    becomes a row of its own."""
    from .images import image_files

    out: list[Row] = []
    for row in rows:
        if row.image is None and Path(row.text).is_dir():
            out += [replace(row, text=str(path)) for path in image_files(row.text)]
        else:
            out.append(row)
    return out


def _windows(tokenizer: Any, chunk: list[Row], max_length: int, allow_empty: bool) -> tuple[dict[str, Any], Any]:
    """A question-answering batch: every (question, context) row cut into windows of the context (qa.windows);
    returned with the windows, the contexts (which the answers are read back from) and ``allow_empty``."""
    from .qa import windows

    found = windows(tokenizer, [r.text for r in chunk], [str(r.pair) for r in chunk], max_length)
    # right padding whatever the tokenizer says: each window's offsets count from its first token
    enc = tokenizer.pad(found.encoding, return_tensors="pt", padding_side="right") if found.example else {}
    return dict(enc), (found, [str(r.pair) for r in chunk], allow_empty)


def _tokenize(tokenizer: Any, chunk: list[Row], max_length: int, tagging: bool) -> tuple[dict[str, Any], Any]:
    """Padded tensors for a batch of rows; for a tagging head the rows are split into words on whitespace and
    each word's first token is found (returned as ``(words, first tokens)`` per row, else None)."""
    if not tagging:
        texts = [r.text for r in chunk]
        pairs = [r.pair for r in chunk] if chunk[0].pair is not None else None
        return tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length,
                         return_tensors="pt"), None
    from .tagging import align

    if any(r.pair is not None for r in chunk):
        raise UsageError("a tagging head labels the words of one text; give single texts, not pairs")
    sentences = [list(r.words) if r.words is not None else r.text.split() for r in chunk]
    aligned = align(tokenizer, sentences, max_length)
    enc = tokenizer.pad(aligned.encoding, return_tensors="pt", padding_side="right")  # first tokens count from 0
    return dict(enc), list(zip(sentences, aligned.first_tokens))


def _check_not_empty(mask: Any, offset: int) -> None:
    """A row the tokenizer made no token of (an empty text, for a decoder's tokenizer, which adds none) has
    nothing for a head to read: one line instead of an answer read off padding."""
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise UsageError(f"row {offset + empty[0] + 1} has no tokens (an empty text); give it some text or leave "
                         "it out")


def _answers(model: Any, parts: list[Any], words: list[Any] | None = None) -> list[dict[str, Any]]:
    """One answer per row, from the outputs of consecutive parts of a batch (each with its own head).
    ``words`` (tagging): each row's words and the first token of each."""
    answers: list[dict[str, Any]] = []
    for part in parts:
        config = model.heads[part.head].config
        if config.head_type == "question_answering":  # a part covers every window of the batch's rows
            answers += [{"head": part.head, **a} for a in _read_answers(part.logits, *words)]  # type: ignore[misc]
            continue
        for vec in part.logits.float().cpu():
            if config.head_type == "regression":
                answers.append({"head": part.head, "score": float(vec[0])})
            elif config.head_type == "multilabel_classification":
                probs = vec.sigmoid()
                names = [config.id2label.get(i, str(i)) for i in range(len(probs))]
                answers.append({"head": part.head, "labels": [n for n, p in zip(names, probs) if p > 0.5],
                                "scores": {n: round(float(p), 6) for n, p in zip(names, probs)}})
            elif config.head_type == "tagging":
                answers.append({"head": part.head, **_tags(config, vec, *(words or [])[len(answers)])})
            else:
                probs = vec.softmax(-1)
                index = int(probs.argmax())
                answers.append({"head": part.head, "label": config.id2label.get(index, str(index)),
                                "score": float(probs[index])})
    return answers


def _read_answers(logits: Any, found: Any, contexts: list[str], allow_empty: bool) -> list[dict[str, Any]]:
    """Each row's best answer over its windows, with the score an empty answer would have (``no_answer``:
    the logits of position 0, which a model trained on unanswerable questions uses to say so); ``answer``
    null for a question too long to leave room for its context."""
    from .qa import best_answers

    values = logits.float().cpu()
    starts = [values[w, :, 0] for w in range(values.shape[0])]
    ends = [values[w, :, 1] for w in range(values.shape[0])]
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    return [{"answer": a["answer"], "start": a["start"], "end": a["end"], "score": rounded(a["score"]),
             "probability": rounded(a["probability"]), "no_answer": rounded(a["no_answer"])}
            for a in best_answers(starts, ends, found, contexts, allow_empty)]


def _tags(config: Any, logits: Any, words: list[str], first: list[int | None]) -> dict[str, Any]:
    """A row's tags: a label and its probability per word (None for a word with no token, cut by the length
    or made only of characters the tokenizer removes: counted in ``cut``), and the entity spans they mark
    (word indices, end exclusive)."""
    from .tasks.metrics import entity_spans

    probs = logits.softmax(-1)
    best = probs.argmax(-1).tolist()
    tags: list[str | None] = [None if t is None else config.id2label.get(best[t], str(best[t])) for t in first]
    scores: list[float | None] = [None if t is None else round(float(probs[t, best[t]]), 6) for t in first]
    cut = sum(t is None for t in first)
    spans = sorted(entity_spans([t or "O" for t in tags]), key=lambda s: s[1])
    out: dict[str, Any] = {"words": words, "tags": tags, "scores": scores,
                           "entities": [{"type": t, "start": a, "end": b, "text": " ".join(words[a:b])}
                                        for t, a, b in spans]}
    if cut:
        out["cut"] = cut
    return out


def _row_fields(row: Row, active: str | None, image: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"image" if image else "text": row.text}
    if row.pair is not None:
        out["pair"] = row.pair
    if active is not None:
        out["active"] = active
    return out


def _display(block: Any) -> str | None:
    """A composition as the user would write it: a single adapter as its name."""
    from .composition import shown

    return shown(block)
