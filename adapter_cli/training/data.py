"""The examples a run reads (seeded subsets, recorded in the run), tokenised examples, padded batches,
and a batch order that depends only on (seed, epoch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..tasks import TaskSpec
from ..tasks.loading import Example, load_split
from ..tasks.subsets import draw, from_record

SUBSET_FILE = "subset.json"


def load_examples(task: TaskSpec, data_dir: str | None, seed: int, max_train: int | None, max_eval: int | None,
                  resume_from: Path | None = None, part: str | None = None
                  ) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train, eval, record): both splits, each cut to a seeded random subset when a maximum is set.

    ``resume_from`` is the run directory of a resumed run: the subsets recorded there are reused (and checked
    against the data), so the run keeps training on the rows it started with. ``record`` is what
    :func:`write_subsets` stores in the run directory. ``part``: the record is one task's of several (an
    MT-A run records ``{task: record}``).
    """
    recorded = _recorded(resume_from)
    if part is not None and recorded:
        recorded = recorded.get(part)
        if not isinstance(recorded, dict) or not all(isinstance(v, dict) for v in recorded.values()):
            raise UsageError(f"cannot resume: {Path(resume_from or '.') / SUBSET_FILE} has no subset record for "
                             f"task {part}")
    out: list[list[Example]] = []
    record: dict[str, Any] = {}
    for split, size in (("train", max_train), ("eval", max_eval)):
        examples = _mlm_lines(task, split, data_dir) if task.plain_text else load_split(task, split, data_dir)
        if split in recorded:
            subset = from_record(split, recorded[split], len(examples), size, seed,
                                 str(Path(resume_from or ".") / SUBSET_FILE))
        else:
            # classification (and multiple choice: the answer position) keeps each label's share
            subset = draw(split, [e.label for e in examples], size, seed,
                          stratify=task.kind in ("single", "pair", "multiple_choice", "image"))
        out.append([examples[i] for i in subset.indices])
        record[split] = subset.to_dict()
    return out[0], out[1], record


def _mlm_lines(task: TaskSpec, split: str, data_dir: str | None) -> list[Example]:
    """An mlm task's text lines as examples (one line each), so that subsets and their records apply."""
    from ..tasks.text import load_text

    return [Example(texts=line if isinstance(line, tuple) else (line,)) for line in load_text(task, split, data_dir)[0]]


def _recorded(run_dir: Path | None) -> dict[str, Any]:
    path = None if run_dir is None else Path(run_dir) / SUBSET_FILE
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot resume: {path} is unreadable ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"cannot resume: {path} is not a subset record (a mapping of split to subset)")
    return data


def write_subsets(run_dir: Path, record: dict[str, Any]) -> None:
    """Record which rows the run reads (``subset.json``): how many of how many, seed, strategy, indices."""
    from ..fsutil import dump_json

    tmp = Path(run_dir) / f".{SUBSET_FILE}.tmp"
    tmp.write_text(dump_json(record), encoding="utf-8")
    tmp.replace(Path(run_dir) / SUBSET_FILE)


@dataclass
class Answers:
    """What reading answers back needs: the windows (qa.Windows), each example's context and gold answer
    texts, and whether an empty answer may win (the split has unanswerable questions, as SQuAD 2.0)."""

    windows: Any
    contexts: list[str]
    golds: list[list[str]]
    allow_empty: bool

    @property
    def lost(self) -> int:
        return int(self.windows.lost)


@dataclass
class Encoded:
    features: list[dict[str, Any]]  # per example: input_ids / attention_mask / token_type_ids (lists)
    labels: list[Any]  # per example: a class id, a score, a multi-hot row, or (tagging) a label id per word
    multiple_choice: bool = False
    # tagging: each example's features hold ``labels`` per token, and this the first token of each word
    first_tokens: list[list[int | None]] | None = None
    # qa: features and labels are per window (labels: the answer's first and last token, 0 0 when the window
    # does not hold it); this holds the windows, each question's context and gold answer texts
    answers: Answers | None = None
    # image: the split's images (images.Images), read as pixel values batch by batch; features are empty
    images: Any = None

    def __len__(self) -> int:
        return len(self.labels)


def encode(task: TaskSpec, examples: list[Example], tokenizer: Any, max_length: int) -> Encoded:
    """A split as the model reads it; ``tokenizer`` is an image task's image processor."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    if task.kind == "image":  # every image decoded once now, so that a broken file is named before training
        from ..images import Images

        images = Images(tokenizer, [e.image for e in examples])
        images.check([e.texts[0] for e in examples])
        return Encoded([{} for _ in examples], [e.label for e in examples], images=images)
    if task.kind == "multiple_choice":
        firsts = [c[0] for e in examples for c in e.choices]
        seconds = [c[1] for e in examples for c in e.choices]
        enc = tokenizer(firsts, seconds if all(s is not None for s in seconds) else None, truncation=True,
                        max_length=max_length)
        features, start = [], 0
        for e in examples:
            n = len(e.choices)
            features.append({k: enc[k][start:start + n] for k in keys if k in enc})
            start += n
        return Encoded(features, [e.label for e in examples], multiple_choice=True)
    if task.kind == "qa":
        from ..qa import windows

        spans = [(e.label[0][0], e.label[0][0] + len(e.label[0][1])) if e.label else None for e in examples]
        contexts = [e.texts[1] for e in examples]
        found = windows(tokenizer, [e.texts[0] for e in examples], contexts, max_length, spans)
        if not found.example:
            raise UsageError(f"every question is too long for max_length {max_length}: a window must hold the "
                             "question and some of its context; raise max_length")
        features = [{k: v[w] for k, v in found.encoding.items()} for w in range(len(found.example))]
        golds = [[text for _, text in e.label] for e in examples]
        return Encoded(features, [list(p) for p in found.positions],
                       answers=Answers(found, contexts, golds, any(not e.label for e in examples)))
    if task.kind == "tagging":
        from ..tagging import align, token_labels

        aligned = align(tokenizer, [e.words for e in examples], max_length)
        features = []
        for i, e in enumerate(examples):
            feature = {k: v[i] for k, v in aligned.encoding.items()}
            feature["labels"] = token_labels(e.label, aligned.first_tokens[i], len(feature["input_ids"]))
            features.append(feature)
        return Encoded(features, [list(e.label) for e in examples], first_tokens=aligned.first_tokens)
    firsts = [e.texts[0] for e in examples]
    seconds = [e.texts[1] for e in examples] if len(examples[0].texts) > 1 else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    features = [{k: enc[k][i] for k in keys if k in enc} for i in range(len(examples))]
    return Encoded(features, [e.label for e in examples])


def collate(data: Encoded, indices: list[int], pad_id: int, float_labels: bool) -> dict[str, torch.Tensor]:
    """Padded tensors of the examples at ``indices``; labels as floats for regression and multi-label
    (``float_labels``), per token (padded with -100) for tagging."""
    items = [data.features[i] for i in indices]
    if data.images is not None:
        return {"pixel_values": data.images.pixels(indices),
                "labels": torch.tensor([data.labels[i] for i in indices], dtype=torch.float32 if float_labels
                                       else torch.long)}
    if data.multiple_choice:
        width = max(len(ids) for it in items for ids in it["input_ids"])
        choices = max(len(it["input_ids"]) for it in items)
        batch = {}
        for key in items[0]:
            fill = pad_id if key == "input_ids" else 0
            tensor = torch.full((len(items), choices, width), fill, dtype=torch.long)
            for b, it in enumerate(items):
                for c, seq in enumerate(it[key]):
                    tensor[b, c, :len(seq)] = torch.tensor(seq)
            batch[key] = tensor
    else:
        width = max(len(it["input_ids"]) for it in items)
        batch = {}
        for key in items[0]:
            fill = pad_id if key == "input_ids" else -100 if key == "labels" else 0
            tensor = torch.full((len(items), width), fill, dtype=torch.long)
            for b, it in enumerate(items):
                tensor[b, :len(it[key])] = torch.tensor(it[key])
            batch[key] = tensor
    if data.first_tokens is None:
        labels = [data.labels[i] for i in indices]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if float_labels else torch.long)
    return batch


GROUP = 50  # length grouping sorts windows of this many steps' examples


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """The batches of one epoch for one process: a permutation seeded by (seed, epoch), split across ranks.

    Depending only on (seed, epoch) is what lets a resumed run see exactly the batches it would have seen.
    With ``lengths`` (recipe key ``group_by_length``) the permutation is cut into windows of ``GROUP`` steps,
    each window sorted by length, and the steps of the epoch shuffled again: every batch holds examples of
    similar length (little padding), and the order still depends only on (seed, epoch).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    if lengths is not None:
        window = per_step * GROUP
        order = [i for start in range(0, n, window)
                 for i in sorted(order[start:start + window], key=lambda i: -lengths[i])]
    steps = []
    for start in range(0, n, per_step):
        chunk = order[start:start + per_step]
        if len(chunk) < world:  # every process must take the same number of steps
            break
        steps.append(chunk)
    if lengths is not None:
        steps = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
    return [chunk[rank::world] for chunk in steps]


def lengths_of(data: Encoded) -> list[int]:
    """Each example's length in tokens (multiple choice: its longest option), what padding follows."""
    out = []
    for feature in data.features:
        ids = feature.get("input_ids", ())  # an image has no tokens: all the same length
        out.append(max(len(s) for s in ids) if ids and isinstance(ids[0], list) else len(ids))
    return out
