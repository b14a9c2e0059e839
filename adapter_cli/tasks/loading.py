"""Examples of a task: from a local directory in the task's original distribution format, or from the Hub."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import TaskSpec


@dataclass(frozen=True)
class Example:
    """``texts`` is (text,) or (text, pair); for multiple choice, ``choices`` holds one (first, second) per option."""

    texts: tuple[str, ...] = ()
    label: int | float = 0
    choices: tuple[tuple[str, str | None], ...] = ()


def load_split(task: TaskSpec, split: str, data_dir: str | Path | None = None,
               max_samples: int | None = None) -> list[Example]:
    """``split`` is 'train' or 'eval'. A user task reads its own files; a built-in task reads ``data_dir``
    when given, else the Hugging Face Hub."""
    if data_dir is not None or _is_user_task(task):
        rows, columns, where = _read_local(task, split, data_dir)
    else:
        rows, columns, where = _read_hub(task, split)
    examples = [_example(task, row, columns, where, n) for n, row in enumerate(rows, 1)]
    if not examples:
        raise UsageError(f"{where} holds no examples")
    return examples[:max_samples] if max_samples else examples


def _is_user_task(task: TaskSpec) -> bool:
    from ..presets import recipes_root

    return not task.source.startswith(str(recipes_root()))


# ----------------------------------------------------------------------------- local files


def _read_local(task: TaskSpec, split: str, data_dir: str | Path | None) -> tuple[list[Any], dict, str]:
    local = task.local or {}
    if split not in local:
        raise UsageError(f"task {task.name} has no local {split} file configured")
    base = Path(data_dir) if data_dir is not None else Path(task.source).parent
    if not base.is_dir():
        raise UsageError(f"data directory {base} does not exist")
    path = base / str(local[split])
    if not path.is_file():
        expected = ", ".join(str(local[s]) for s in ("train", "eval") if s in local)
        raise UsageError(f"{base} has no {split} file {local[split]} (task {task.name} expects {expected})")
    columns = dict(local.get("columns") or task.columns)
    return read_table(path, header=bool(local.get("header", True))), columns, str(path)


def read_table(path: Path, header: bool = True) -> list[Any]:
    """Rows of a CSV/TSV (dicts, or lists without a header), JSONL or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    try:
        text = path.read_text(encoding="utf-8-sig")  # MRPC's files start with a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        raise UsageError(f"{path} is empty")
    if suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{n} is not valid JSON") from None
        return rows
    if suffix == ".tsv":
        # GLUE's TSV files contain literal quotes, so they are split on tabs, not parsed as CSV.
        lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    else:
        lines = [r for r in csv.reader(io.StringIO(text)) if r]
    if not header:
        return lines
    names, body = lines[0], lines[1:]
    if not body:
        raise UsageError(f"{path} has a header ({', '.join(names[:6])}) but no rows")
    return [dict(zip(names, r)) for r in body if len(r) >= len(names)]


# ----------------------------------------------------------------------------- the Hub


def _read_hub(task: TaskSpec, split: str) -> tuple[list[Any], dict, str]:
    hub = task.hub
    if not hub:
        raise UsageError(f"task {task.name} is not on the Hugging Face Hub; pass --data-dir with its original files"
                         f" ({', '.join(str(v) for k, v in (task.local or {}).items() if k in ('train', 'eval'))})")
    where = f"{hub['path']}" + (f" ({hub['name']})" if hub.get("name") else "") + f" split {hub[split]}"
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")
    local_hint = ", ".join(str(v) for k, v in (task.local or {}).items() if k in ("train", "eval"))
    hint = f"; or pass --data-dir with the original files ({local_hint})" if local_hint else ""
    try:
        import datasets

        data = datasets.load_dataset(hub["path"], hub.get("name"), split=hub[split])
    except Exception as exc:  # network, offline mode, missing dataset: all mean "cannot get it here"
        why = "HF_HUB_OFFLINE is set" if offline else str(exc).splitlines()[0][:160]
        raise UsageError(f"task {task.name} needs the Hub dataset {where}, which cannot be loaded ({why})"
                         f"{hint}") from None
    return list(data), dict(task.columns), where


# ----------------------------------------------------------------------------- rows -> examples


def _field(row: Any, key: Any, where: str, n: int) -> Any:
    if isinstance(row, dict):
        value: Any = row
        for part in str(key).split("."):
            if not isinstance(value, dict) or part not in value:
                raise UsageError(f"{where} has no column {key!r}; columns: {', '.join(map(str, row))}")
            value = value[part]
        return value
    index = int(key)
    if index >= len(row):
        raise UsageError(f"{where} row {n} has {len(row)} fields; column {index} is missing")
    return row[index]


def _label(task: TaskSpec, raw: Any, where: str, n: int, label_map: dict | None = None) -> int | float:
    if task.kind == "regression":
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{where} row {n}: label {raw!r} is not a number") from None
    if label_map:
        key = str(raw)
        if key not in {str(k) for k in label_map}:
            raise UsageError(f"{where} row {n}: label {raw!r} is not one of {', '.join(map(str, label_map))}")
        return int({str(k): v for k, v in label_map.items()}[key])
    text = str(raw).strip()
    if text in task.labels:
        return task.labels.index(text)
    size = task.num_labels if task.kind != "multiple_choice" else None
    try:
        number = float(text)
        value = int(number) if number.is_integer() else -1
    except ValueError:
        value = -1
    if value < 0 or (size is not None and value >= size):
        allowed = (", ".join(task.labels) + f" (or 0..{size - 1})") if task.labels else "an option index"
        raise UsageError(f"{where} row {n}: label {raw!r} is outside the label set: {allowed}")
    return value


def _example(task: TaskSpec, row: Any, columns: dict, where: str, n: int) -> Example:
    if task.kind == "multiple_choice":
        spec = task.choices or {}
        if "options_field" in spec:
            options = [str(o) for o in _field(row, spec["options_field"], where, n)]
        else:
            options = [str(_field(row, f, where, n)) for f in spec["options"]]
        if "fill_blank" in spec:
            sentence = str(_field(row, spec["fill_blank"], where, n))
            pairs = tuple((sentence.replace("_", o, 1), None) for o in options)
        else:
            context = " ".join(str(_field(row, f, where, n)) for f in spec.get("context", []))
            pairs = tuple((context, o) for o in options)
        label = _label(task, _field(row, spec["label"], where, n), where, n, spec.get("label_map"))
        if not 0 <= int(label) < len(options):
            raise UsageError(f"{where} row {n}: answer {label} is outside the {len(options)} options")
        return Example(label=label, choices=pairs)
    text = _field(row, columns["text"], where, n)
    texts = (str(text),)
    if task.kind == "pair" or (task.kind == "regression" and "pair" in columns):
        texts += (str(_field(row, columns["pair"], where, n)),)
    return Example(texts=texts, label=_label(task, _field(row, columns["label"], where, n), where, n))
