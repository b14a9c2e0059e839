"""Plain-text corpora for language-model tasks (``kind: mlm`` and ``lm``): ``train.txt`` and ``dev.txt`` in the
data directory, one or more sentences a line, blank lines skipped; for ``lm`` instead ``train.jsonl`` and
``dev.jsonl`` of prompt/completion pairs. Without a dev file a seeded tenth of the
training lines (at most 2,000, at least one) is held out as the dev split, the same for every run seed, so
runs with different seeds are scored on the same text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import TaskSpec
from .subsets import sample_indices

DEV_SHARE = 0.1
MAX_DEV_LINES = 2000
DEV_SEED = 0  # the held-out dev lines do not depend on the run's seed
MAX_LINE_CHARS = 1_000_000  # a "line" longer than this is not text a tokenizer should see whole


def corpus_dir(task: TaskSpec, data_dir: str | Path | None) -> Path:
    from ..builtins import recipes_root

    if data_dir is None and task.source.startswith(str(recipes_root())):
        raise UsageError(f"task {task.name} reads your own plain text: set `data_dir`, a folder with "
                         f"{_names(task)} (one or more sentences a line)")
    base = Path(data_dir) if data_dir is not None else Path(task.source).parent
    if not base.is_dir():
        raise UsageError(f"data directory {base} is a file, not a directory (a task file names the task, not its "
                         "data)" if base.is_file() else f"data directory {base} does not exist")
    return base


def _names(task: TaskSpec) -> str:
    local = task.local or {}
    return " and ".join(str(local.get(k)) for k in ("train", "eval") if local.get(k))


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    long = next((i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS), None)
    if long is not None:
        raise UsageError(f"{path} line {long} has more than {MAX_LINE_CHARS} characters; split the text into lines")
    return [line for line in lines if line]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(prompt, completion) from a JSONL file of objects with string fields ``prompt`` and ``completion``."""
    import json

    pairs = []
    for number, line in enumerate(read_lines(path), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {number} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) \
                or not isinstance(record.get("completion"), str):
            raise UsageError(f"{path} line {number} needs string fields \"prompt\" and \"completion\"")
        if not record["completion"]:
            raise UsageError(f"{path} line {number} has an empty completion: there is nothing to learn from it")
        pairs.append((record["prompt"], record["completion"]))
    return pairs


def held_out(n: int) -> list[int]:
    """The training line indices held out as the dev split when there is no dev file."""
    size = min(MAX_DEV_LINES, max(1, round(n * DEV_SHARE)))
    return sample_indices([0] * n, size, DEV_SEED, stratify=False, salt="dev")[1]


PAIRS = {"train": "train.jsonl", "eval": "dev.jsonl"}  # an lm task's prompt/completion files


def load_text(task: TaskSpec, split: str, data_dir: str | Path | None) -> tuple[list[Any], str]:
    """(lines, where) of ``split`` ('train' or 'eval'); ``where`` says where they came from (for notes). An lm
    task whose directory holds ``train.jsonl`` reads (prompt, completion) pairs from it instead of lines."""
    local = task.local or {}
    base = corpus_dir(task, data_dir)
    train_path = base / str(local.get("train", "train.txt"))
    eval_name = local.get("eval")
    reader: Any = read_lines
    if task.kind == "lm" and (base / PAIRS["train"]).is_file():
        if train_path.is_file():
            raise UsageError(f"{base} holds both {train_path.name} (text) and {PAIRS['train']} (prompt/completion "
                             "pairs); keep the one to train on")
        train_path, eval_name, reader = base / PAIRS["train"], PAIRS["eval"], read_pairs
    eval_path = base / str(eval_name) if eval_name else None
    if split == "eval" and eval_path is not None and eval_path.is_file():
        lines, where = reader(eval_path), str(eval_path)
    else:
        if not train_path.is_file():
            raise UsageError(f"{base} has no training text {train_path.name} (task {task.name} reads "
                             f"{_names(task)}: plain text, one or more sentences a line)")
        lines = reader(train_path)
        if not lines:
            raise UsageError(f"{train_path} holds no text (every line is blank)")
        if eval_path is None or not eval_path.is_file():  # a seeded tenth of train is the dev split
            if len(lines) < 2:
                raise UsageError(f"{train_path} has one line and there is no {eval_name or 'dev file'}: a dev "
                                 "split needs a second line")
            dev = set(held_out(len(lines)))
            keep = [i in dev for i in range(len(lines))] if split == "eval" else \
                [i not in dev for i in range(len(lines))]
            lines = [line for line, k in zip(lines, keep) if k]
            where = f"{train_path} ({'held-out' if split == 'eval' else 'without the held-out'} dev lines)"
        else:
            where = str(train_path)
    if not lines:
        raise UsageError(f"{where} holds no text (every line is blank)")
    return lines, where


def held_out_dev(task: TaskSpec, data_dir: str | Path | None) -> bool:
    """Whether the dev split is held out of the training text (there is no dev file)."""
    eval_name = (task.local or {}).get("eval")
    return not eval_name or not (corpus_dir(task, data_dir) / str(eval_name)).is_file()
