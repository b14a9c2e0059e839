"""Examples of a task: from a local directory in the task's original distribution format, or from the Hub."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import TaskSpec


@dataclass(frozen=True)
class Example:
    """``texts`` is (text,) or (text, pair); for multiple choice, ``choices`` holds one (first, second) per
    option; for tagging, ``words`` holds the words and ``label`` a label id per word. A multi-label
    example's ``label`` is a multi-hot tuple (1 for each label it has). A question-answering example's
    ``texts`` are (question, context) and its ``label`` the gold answers as (first character, text) pairs
    (none: the context does not answer the question). An image example's ``image`` is its file (or, from the
    Hub, the image itself) and ``texts`` is (where it came from,)."""

    texts: tuple[str, ...] = ()
    label: Any = 0
    choices: tuple[tuple[str, str | None], ...] = ()
    words: tuple[str, ...] = ()
    image: Any = None


def load_split(task: TaskSpec, split: str, data_dir: str | Path | None = None,
               max_samples: int | None = None) -> list[Example]:
    """``split`` is 'train' or 'eval'. A user task reads its own files; a built-in task reads ``data_dir``
    when given, else the Hugging Face Hub.

    ``max_samples`` keeps the first N examples in file order, for a quick look only: original files are
    often ordered by genre or label, so training draws a seeded random subset instead (tasks/subsets.py).
    """
    label_map = None
    if data_dir is not None or _is_user_task(task):
        rows, columns, where, numbers = _read_local(task, split, data_dir)
        label_map = (task.local or {}).get("label_map")
    else:
        rows, columns, where = _read_hub(task, split)
        numbers = list(range(1, len(rows) + 1))
    examples = [_example(task, row, columns, where, n, label_map) for n, row in zip(numbers, rows)]
    if not examples:
        raise UsageError(f"{where} holds no examples")
    return examples[:max_samples] if max_samples else examples


def _is_user_task(task: TaskSpec) -> bool:
    from ..builtins import recipes_root

    return not task.source.startswith(str(recipes_root()))


# ----------------------------------------------------------------------------- local files


@dataclass(frozen=True)
class TableFormat:
    """How a file is read, and why: named in the error when its columns do not come out as expected."""

    kind: str  # csv | tsv | jsonl | parquet | conll | squad
    delimiter: str = ","
    why: str = ""  # "from its .txt extension", "set by `delimiter:` in the task YAML"
    certain: bool = True  # False when guessed from an extension that does not say (.txt, .dat, none)

    def describe(self) -> str:
        if self.kind in ("jsonl", "parquet", "conll", "squad"):
            return {"jsonl": "JSON lines", "parquet": "Parquet", "conll": "CoNLL columns", "squad": "SQuAD JSON"}[
                self.kind]
        return DELIMITER_NAMES.get(self.delimiter, f"{self.delimiter!r}-separated")


DELIMITER_NAMES = {",": "comma-separated", "\t": "tab-separated", ";": "semicolon-separated",
                   "|": "pipe-separated", " ": "space-separated"}
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def table_format(path: Path, fmt: str | None = None, delimiter: str | None = None) -> TableFormat:
    """The format of a data file: ``format:`` / ``delimiter:`` from the task YAML, else its extension
    (anything that is not .tsv, .jsonl, .json or .parquet is read as comma-separated)."""
    if fmt is None and delimiter is not None:
        fmt = "tsv" if delimiter == "\t" else "csv"
        return TableFormat(fmt, delimiter, "set by `delimiter:` in the task YAML")
    if fmt is not None:
        default = "\t" if fmt == "tsv" else ","
        keys = "`format:` and `delimiter:`" if delimiter is not None else "`format:`"
        return TableFormat(fmt, delimiter or default, f"set by {keys} in the task YAML")
    suffix = path.suffix.lower()
    kind = EXTENSIONS.get(suffix, "csv")
    why = f"from its {suffix} extension" if suffix else "it has no extension"
    return TableFormat(kind, "\t" if kind == "tsv" else ",", why, certain=suffix in EXTENSIONS)


def _local_path(task: TaskSpec, split: str, data_dir: str | Path | None) -> Path:
    local = task.local or {}
    name = local.get(split, local.get("file"))
    if name is None:
        raise UsageError(f"task {task.name} has no local {split} file configured")
    base = Path(data_dir) if data_dir is not None else Path(task.source).parent
    if not base.is_dir():
        raise UsageError(f"data directory {base} is a file, not a directory (a task file names the task, not its "
                         "data)" if base.is_file() else f"data directory {base} does not exist")
    path = base / str(name)
    if data_dir is None and not path.resolve().is_relative_to(base.resolve()):
        # names are checked when the task is read; this is a link out of the task's folder
        raise UsageError(f"task {task.name}: local {split} file {name} leads outside {base} (a link); copy the "
                         "file into the task's folder, or give the folder that holds it as `data_dir`")
    if task.kind == "image" and not path.is_dir():
        raise UsageError(f"{base} has no {split} folder {name} (task {task.name} expects folders "
                         f"{local_files(task)}, each with a sub-folder of images per label)")
    if task.kind != "image" and not path.is_file():
        raise UsageError(f"{base} has no {split} file {name} (task {task.name} expects {local_files(task)})")
    return path


def local_files(task: TaskSpec) -> str:
    """The files a task reads from --data-dir, for messages: 'train.tsv, dev.tsv' or 'SICK.txt'."""
    local = task.local or {}
    names = (local.get(s, local.get("file")) for s in ("train", "eval"))
    return ", ".join(dict.fromkeys(str(n) for n in names if n is not None))


def _read_local(task: TaskSpec, split: str,
                data_dir: str | Path | None) -> tuple[list[Any], dict, str, list[int]]:
    """(rows, columns, where, row numbers): the split's rows of its file, numbered as in the file."""
    local = task.local or {}
    path = _local_path(task, split, data_dir)
    if task.kind == "image":  # (image file, label folder) pairs
        from ..images import read_image_folder

        rows = read_image_folder(path, inside=Path(task.source).parent if data_dir is None else None)
        return rows, {"image": 0, "label": 1}, str(path), list(range(1, len(rows) + 1))
    columns = dict(local.get("columns") or task.columns)
    fmt = table_format(path, local.get("format"), local.get("delimiter"))
    if not _is_user_task(task) and "task YAML" in fmt.why:  # the user did not write this YAML: do not say so
        fmt = replace(fmt, why=f"as task {task.name}'s original files are")
    if task.kind == "tagging" and local.get("format") is None and fmt.kind in ("csv", "tsv"):
        fmt = TableFormat("conll", " ", "a tagging task's words, one a line")
    if task.kind == "qa" and local.get("format") is None and path.suffix.lower() == ".json":
        fmt = TableFormat("squad", "", "a qa task's .json file")
    if fmt.kind == "conll":  # field numbers: `local` columns, else the task's when they are numbers (not Hub names)
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in task.columns.values())
        columns = dict(local.get("columns") or (task.columns if numbers else {}))
    if fmt.kind in ("conll", "squad"):
        rows = read_conll(path) if fmt.kind == "conll" else read_squad(path)
    else:
        rows = read_table(path, header=bool(local.get("header", True)), fmt=fmt)
    if fmt.kind in ("csv", "tsv"):
        _check_columns(task, rows, _needed_columns(task, columns), path, fmt)
    numbers = list(range(1, len(rows) + 1))  # data rows, as in every error that names a row
    if "split_column" not in local:
        return rows, columns, str(path), numbers
    rows, numbers = _rows_of_split(rows, numbers, local, split, path)
    wanted = local["splits"][split]
    return rows, columns, f"{path} ({local['split_column']} = {' or '.join(map(str, _as_list(wanted)))})", numbers


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _rows_of_split(rows: list[Any], numbers: list[int], local: dict, split: str,
                   path: Path) -> tuple[list[Any], list[int]]:
    """The rows whose ``split_column`` holds one of the values ``splits`` gives for ``split``."""
    key = local["split_column"]
    values = {str(v) for v in _as_list(local["splits"][split])}  # validated: splits names train and eval
    seen: dict[str, None] = {}
    kept_rows, kept_numbers = [], []
    for n, row in zip(numbers, rows):
        value = str(_field(row, key, str(path), n)).strip()
        seen.setdefault(value, None)
        if value in values:
            kept_rows.append(row)
            kept_numbers.append(n)
    if not kept_rows:
        shown = ", ".join(list(seen)[:8])
        raise UsageError(f"{path} has no {split} rows: no {key} value is {' or '.join(sorted(values))} "
                         f"(values found: {shown})")
    return kept_rows, kept_numbers


def _needed_columns(task: TaskSpec, columns: dict) -> list[Any]:
    """The columns :func:`_example` reads, so a misread file fails once, naming its format."""
    local = task.local or {}
    if task.kind == "multiple_choice":
        spec = task.choices or {}
        needed = [*spec.get("context", []), *spec.get("options", []), spec.get("label")]
        needed += [spec[k] for k in ("options_field", "fill_blank") if k in spec]
    else:
        needed = [columns["text"], columns.get("pair") if task.kind in ("pair", "regression") else None,
                  columns["label"]]
    needed.append(local.get("split_column"))
    return [k for k in needed if k is not None]


def _check_columns(task: TaskSpec, rows: list[Any], needed: list[Any], path: Path, fmt: TableFormat) -> None:
    """A delimited file split on the wrong character still parses, into one wide column: fail here, once,
    naming the format that was assumed and where the assumption came from."""
    hint = "set `delimiter:` or `format:` in the task YAML" if _is_user_task(task) else \
        f"`data_dir` must hold task {task.name}'s files as distributed ({local_files(task)}; docs/tasks.md)"
    read_as = f"read {path} as {fmt.describe()} ({fmt.why})"
    if not rows:  # read_table drops rows shorter than the header: all of them were
        raise UsageError(f"{read_as}, but no row has as many fields as its header; {hint}")
    first = rows[0]
    if isinstance(first, dict):
        names = list(first)
        missing = [k for k in needed if str(k) not in first]
    else:
        names = [str(i) for i in range(len(first))]
        missing = [k for k in needed if not str(k).isdigit() or int(k) >= len(first)]
    if not missing:
        return
    shown = repr(names[0]) if len(names) == 1 else ", ".join(names)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    what = f"no column {missing[0]!r}; columns: {shown}" if isinstance(first, dict) else \
        f"{len(first)} fields in row 1; column {missing[0]} is missing"
    if len(names) > 1 and fmt.certain:  # the file was split as it says: the column name is what is wrong
        raise UsageError(f"{path} has {what}")
    raise UsageError(f"{read_as}, but found {what}; {hint}")


def read_table(path: Path, header: bool = True, fmt: TableFormat | None = None) -> list[Any]:
    """Rows of a CSV/TSV (dicts, or lists without a header), JSONL or Parquet file.

    ``fmt`` (see :func:`table_format`) defaults to what the file's extension says.
    """
    fmt = fmt or table_format(path)
    if fmt.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    try:
        text = path.read_text(encoding="utf-8-sig")  # MRPC's files start with a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path} as {fmt.describe()} text ({fmt.why}): {exc}") from None
    if not text.strip():
        raise UsageError(f"{path} is empty")
    if fmt.kind == "jsonl":
        return _json_lines(path, text)
    if fmt.kind == "tsv":
        # GLUE's TSV files contain literal quotes, so they are split on tabs, not parsed as CSV.
        lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    else:
        lines = [r for r in csv.reader(io.StringIO(text), delimiter=fmt.delimiter) if r]
    if not header:
        return lines
    names, body = lines[0], lines[1:]
    if not body:
        raise UsageError(f"{path} has a header ({', '.join(names[:6])}) but no rows")
    return [dict(zip(names, r)) for r in body if len(r) >= len(names)]


def read_conll(path: Path) -> list[list[tuple[int, list[str]]]]:
    """Sentences of a CoNLL-style column file: a word a line, its fields split on whitespace, sentences
    separated by blank lines; ``-DOCSTART-`` lines and, before a sentence, ``# ...`` comments (CoNLL-U's
    ``# text = ...``; a '#' word inside a sentence, or one like ``#Berlin``, is a word) are skipped. Each
    sentence is a list of (line number, fields)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path} as CoNLL columns: {exc}") from None
    sentences: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not current and line.startswith("# "):
            continue
        if not fields or fields[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                current = []
            continue
        current.append((n, fields))
    if current:
        sentences.append(current)
    if not sentences:
        raise UsageError(f"{path} holds no sentences (CoNLL columns: a word a line, a blank line between sentences)")
    return sentences


def read_squad(path: Path) -> list[dict[str, Any]]:
    """The questions of a SQuAD JSON file (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``, versions
    1.1 and 2.0) as rows ``{id, question, context, answers}``; an ``is_impossible`` question has no answers."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path} as SQuAD JSON: {str(exc).splitlines()[0][:160]}") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise UsageError(f"{path} is not SQuAD JSON: it needs a top-level \"data\" list of articles with paragraphs")
    rows = []
    for article in articles:
        for paragraph in _objects(article, "paragraphs", path):
            context = paragraph.get("context")
            for qa in _objects(paragraph, "qas", path):
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                rows.append({"id": qa.get("id"), "question": qa.get("question"), "context": context,
                             "answers": answers})
    if not rows:
        raise UsageError(f"{path} holds no questions (SQuAD JSON: data[].paragraphs[].qas[])")
    return rows


def _objects(parent: Any, key: str, path: Path) -> list[dict[str, Any]]:
    """``parent[key]``, a list of objects (SQuAD's articles hold paragraphs, paragraphs hold qas)."""
    if not isinstance(parent, dict):
        raise UsageError(f"{path} is not SQuAD JSON: an entry holding {key} must be an object, got {parent!r}"[:300])
    items = parent.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UsageError(f"{path} is not SQuAD JSON: {key} must be a list of objects"[:300])
    return items


def _json_lines(path: Path, text: str) -> list[Any]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{path}:{n} is not valid JSON") from None
    return rows


# ----------------------------------------------------------------------------- the Hub


def _read_hub(task: TaskSpec, split: str) -> tuple[list[Any], dict, str]:
    hub = task.hub
    if not hub:
        raise UsageError(f"task {task.name} is not on the Hugging Face Hub; pass `data_dir` with its original files"
                         f" ({local_files(task)})")
    where = f"{hub['path']}" + (f" ({hub['name']})" if hub.get("name") else "") + f" split {hub[split]}"
    from ..defaults import hub_offline

    offline = hub_offline()
    local_hint = local_files(task)
    hint = f"; or pass `data_dir` with the original files ({local_hint})" if local_hint else ""
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
        key = str(raw).strip()
        if key not in {str(k) for k in label_map}:
            raise UsageError(f"{where} row {n}: label {raw!r} is not one of {', '.join(map(str, label_map))}")
        value = {str(k): v for k, v in label_map.items()}[key]
        # a task's label_map may name the label (SICK's ENTAILMENT -> entailment) or give its index
        return task.labels.index(value) if isinstance(value, str) and value in task.labels else int(value)
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


def _label_set(task: TaskSpec, raw: Any, where: str, n: int, label_map: dict | None) -> tuple[int, ...]:
    """A multi-label example's labels as a multi-hot tuple: a list of label names (or ids), or one string of
    them separated by commas ('' for none)."""
    items = raw if isinstance(raw, (list, tuple)) else [p for p in str(raw).split(",") if p.strip()]
    hot = [0] * len(task.labels)
    for item in items:
        hot[int(_label(task, item, where, n, label_map))] = 1
    return tuple(hot)


def _tagged(task: TaskSpec, row: Any, columns: dict, where: str, n: int, label_map: dict | None) -> Example:
    """A tagging example: a CoNLL sentence ((line, fields) pairs; ``columns`` text and label are field
    indices, by default the first and the last), or a record whose text and label columns (by default
    ``tokens`` and ``tags``) hold lists."""
    if isinstance(row, list) and row and isinstance(row[0], tuple):
        text_at, label_at = columns.get("text", 0), columns.get("label", -1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (text_at, label_at)):
            raise UsageError(f"{where}: CoNLL columns are field numbers (0 = the first, -1 = the last), got text "
                             f"{text_at!r} and label {label_at!r} in `columns`")
        words, tags = [], []
        for line, fields in row:
            for at in (text_at, label_at):
                if not -len(fields) <= at < len(fields):
                    raise UsageError(f"{where}:{line} has {len(fields)} fields; column {at} is missing")
            words.append(fields[text_at])
            tags.append(_label(task, fields[label_at], f"{where}:{line}", n, label_map))
        return Example(words=tuple(words), label=tuple(tags))
    text_key, label_key = columns.get("text", "tokens"), columns.get("label", "tags")
    words, tags = _field(row, text_key, where, n), _field(row, label_key, where, n)
    if not isinstance(words, (list, tuple)) or not isinstance(tags, (list, tuple)):
        raise UsageError(f"{where} row {n}: a tagging example's {text_key!r} and {label_key!r} must be lists (one "
                         "word, one tag each)")
    if len(words) != len(tags):
        raise UsageError(f"{where} row {n}: {len(words)} words but {len(tags)} tags")
    return Example(words=tuple(map(str, words)),
                   label=tuple(_label(task, t, where, n, label_map) for t in tags))


def _question(row: Any, columns: dict, where: str, n: int) -> Example:
    """A question-answering example: question, context and answers (a list of {text, answer_start}, or the
    Hub's {text: [...], answer_start: [...]}); each answer must be the context's text at its start (an answer
    whose start is off is placed at the occurrence of its text nearest that start)."""
    question = _field(row, columns.get("text", "question"), where, n)
    context = _field(row, columns.get("pair", "context"), where, n)
    raw = _field(row, columns.get("label", "answers"), where, n)
    if not isinstance(question, str) or not isinstance(context, str) or not question.strip() or not context.strip():
        raise UsageError(f"{where} row {n}: a question and a context (non-empty texts) are needed")
    if isinstance(raw, dict):  # the Hub's columns: two lists of the same length
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise UsageError(f"{where} row {n}: answers as {{text: [...], answer_start: [...]}} need two lists of "
                             f"the same length, got {raw!r}"[:300])
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise UsageError(f"{where} row {n}: answers must be a list of {{text, answer_start}} objects, got {raw!r}"[:300])
    return Example(texts=(question, context), label=tuple(_answer(a, context, where, n) for a in raw))


def _answer(answer: dict, context: str, where: str, n: int) -> tuple[int, str]:
    text, start = answer.get("text"), answer.get("answer_start")
    if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
        raise UsageError(f"{where} row {n}: an answer needs a text and an integer answer_start, got {answer!r}"[:300])
    if context[start:start + len(text)] == text:
        return start, text
    found = [i for i in range(len(context)) if context.startswith(text, i)]
    if not found:
        raise UsageError(f"{where} row {n}: answer {text[:40]!r} is not in the context")
    return min(found, key=lambda i: abs(i - start)), text


def _image(task: TaskSpec, row: Any, columns: dict, where: str, n: int, label_map: dict | None) -> Example:
    """A local row is (file, label folder); a Hub row has the decoded image in its ``image`` column."""
    image = _field(row, columns.get("image", "image"), where, n)
    raw = _field(row, columns.get("label", "label"), where, n)
    if isinstance(image, Path):
        if label_map is None and str(raw) not in task.labels and not str(raw).isdigit():
            raise UsageError(f"{where}: folder {raw!r} is not a label of task {task.name} ({', '.join(task.labels)});"
                             " rename it, or map it with local label_map")
        return Example(texts=(str(image),), label=_label(task, raw, f"{where}/{raw}", n, label_map), image=image)
    if isinstance(image, dict):  # datasets' undecoded Image feature: the file's bytes, or a path to it
        image = image.get("bytes") or image.get("path")
    if not image:
        raise UsageError(f"{where} row {n} has no image")
    return Example(texts=(f"{where} row {n}",), label=_label(task, raw, where, n, label_map), image=image)


def _example(task: TaskSpec, row: Any, columns: dict, where: str, n: int,
             label_map: dict | None = None) -> Example:
    if task.kind == "tagging":
        return _tagged(task, row, columns, where, n, label_map)
    if task.kind == "qa":
        return _question(row, columns, where, n)
    if task.kind == "image":
        return _image(task, row, columns, where, n, label_map)
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
    raw = _field(row, columns["label"], where, n)
    if task.kind == "multilabel":
        return Example(texts=texts, label=_label_set(task, raw, where, n, label_map))
    return Example(texts=texts, label=_label(task, raw, where, n, label_map))
