"""Tasks: what to train and evaluate on. Built-in tasks are the YAML files in ``recipes/tasks`` (the single
registry); a user task is a YAML file of the same schema whose ``local`` files are paths.

Schema (see docs/tasks.md)::

    name, aliases, description
    catalog: category/dataset     # where its adapters sit in the hub hierarchy (AdapterHub style, e.g. sentiment/sst-2)
    kind: single | pair | regression | multiple_choice | multilabel | tagging | qa | mlm | lm | image
                                  # mlm, lm: plain text, sentences a line; multilabel: a set of labels per
                                  # text; tagging: a label per word (CoNLL-style column files); qa: extractive
                                  # question answering (SQuAD JSON); image: a label per image (a folder of
                                  # images per label, for vision encoders)
    labels: [...]                 # label names in id order (not for regression / multiple choice)
    metrics: [accuracy, f1, macro_f1, micro_f1, mcc, pearson, spearman, entity_f1, exact_match, token_f1]
                                  # the first is the one early stopping uses
                                  # (mlm: [perplexity, masked_accuracy]; lm: [perplexity,
                                  # next_token_accuracy]; perplexity: lower is better)
    hub: {path, name, train, eval} | null
    columns: {text, pair, label}  # Hub column names
    choices: {context: [...], options: [...] | options_field: f, fill_blank: f, label, label_map}
    local: {train, eval, file, header, columns, format, delimiter, split_column, splits, label_map}
                                  # original distribution files inside --data-dir (see _check_local)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UsageError, check_keys, suggest

KINDS = ("single", "pair", "regression", "multiple_choice", "multilabel", "tagging", "qa", "mlm", "lm", "image")
TEXT_KINDS = ("mlm", "lm")  # language modelling on plain text: masked (encoders) or causal (decoders)
LABELLED_KINDS = ("single", "pair", "multilabel", "tagging", "image")  # tasks whose `labels` name the head's outputs
METRICS = ("accuracy", "f1", "macro_f1", "micro_f1", "mcc", "pearson", "spearman", "entity_f1", "exact_match",
           "token_f1", "perplexity", "masked_accuracy", "next_token_accuracy")
MLM_METRICS = ("perplexity", "masked_accuracy")  # the only metrics of an mlm task, and only of one
LM_METRICS = ("perplexity", "next_token_accuracy")  # the same for an lm task
# multilabel: accuracy is exact match of the whole label set; F1 over every (text, label) decision (micro) or
# averaged over labels (macro). tagging: entity_f1 over the spans a BIO/IOB/BIOES scheme marks (as conlleval
# counts them), accuracy over words.
MULTILABEL_METRICS = ("micro_f1", "macro_f1", "accuracy")
TAGGING_METRICS = ("entity_f1", "accuracy", "macro_f1")
# qa: SQuAD's exact match and word-overlap F1 of the answer text, the best over each question's gold answers
QA_METRICS = ("token_f1", "exact_match")
KIND_METRICS = {"mlm": MLM_METRICS, "lm": LM_METRICS, "multilabel": MULTILABEL_METRICS, "tagging": TAGGING_METRICS,
                "qa": QA_METRICS}
LOWER_IS_BETTER = frozenset({"perplexity"})  # early stopping and the best checkpoint: smaller wins
LOCAL_KEYS = ("train", "eval", "file", "header", "columns", "format", "delimiter", "split_column", "splits",
              "label_map")
# conll: a tagging task's files; squad: a qa task's; folders: an image task's (a sub-folder of images per label)
FORMATS = ("csv", "tsv", "jsonl", "parquet", "conll", "squad", "folders")
SPLITS = ("train", "eval", "test")  # test rows are named so they are known to be left out, never read


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    metrics: tuple[str, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    hub: dict[str, Any] | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] | None = None
    local: dict[str, Any] | None = None
    catalog: str = ""
    source: str = ""  # the YAML file it came from

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def lower_is_better(self) -> bool:
        """Whether a smaller main metric is better (perplexity)."""
        return self.main_metric in LOWER_IS_BETTER

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.kind in LABELLED_KINDS else 1

    @property
    def float_labels(self) -> bool:
        """Whether labels are numbers to fit (regression) or multi-hot vectors (multilabel), not class ids."""
        return self.kind in ("regression", "multilabel")

    @property
    def plain_text(self) -> bool:
        """Language modelling on plain text (mlm, lm): lines, not labelled examples."""
        return self.kind in TEXT_KINDS

    @property
    def text_pair(self) -> bool:
        """Whether each example is a pair of texts (MRPC, RTE, STS-B, ...)."""
        return "pair" in self.columns or "pair" in ((self.local or {}).get("columns") or {})

    @property
    def head_type(self) -> str:
        return {"single": "classification", "pair": "classification", "regression": "regression",
                "multiple_choice": "multiple_choice", "multilabel": "multilabel_classification",
                "tagging": "tagging", "qa": "question_answering", "mlm": "masked_lm", "lm": "causal_lm",
                "image": "classification"}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "source"}
        out.update(aliases=list(self.aliases), labels=list(self.labels), metrics=list(self.metrics))
        return out


def task_from_dict(data: dict[str, Any], source: str) -> TaskSpec:
    known = {"name", "kind", "metrics", "description", "aliases", "labels", "hub", "columns", "choices", "local",
             "catalog"}
    if not isinstance(data, dict):
        raise UsageError(f"task file {source} must hold a mapping")
    check_keys(data, known, f"task {source}", UsageError)
    for key in ("name", "kind", "metrics"):
        if key not in data:
            raise UsageError(f"task {source} has no {key!r}")
    kind = data["kind"]
    if kind not in KINDS:
        raise UsageError(f"task {source}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    metrics = tuple(data["metrics"] if isinstance(data["metrics"], list) else [data["metrics"]])
    for m in metrics:
        if m not in METRICS:
            raise UsageError(f"task {source}: unknown metric {m!r}{suggest(str(m), METRICS)}; known: {', '.join(METRICS)}")
    _check_metrics(kind, metrics, source)
    labels = tuple(str(x) for x in data.get("labels") or ())
    if kind in LABELLED_KINDS and len(labels) < 2:
        raise UsageError(f"task {source}: a {kind} task needs 'labels' (at least two)")
    if "f1" in metrics and kind in ("single", "pair", "image") and len(labels) != 2:
        raise UsageError(f"task {source}: f1 is the F1 of the second label against the first, for two labels; "
                         f"with {len(labels)} use macro_f1")
    if len(set(labels)) < len(labels):
        raise UsageError(f"task {source}: 'labels' names a label twice")
    catalog = data.get("catalog")
    if catalog is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*/[a-z0-9][a-z0-9_.\-]*", str(catalog)):
        raise UsageError(f"task {source}: catalog must look like category/dataset (lower case), got {catalog!r}")
    if kind == "multiple_choice" and not data.get("choices"):
        raise UsageError(f"task {source}: a multiple_choice task needs 'choices'")
    if kind not in ("multiple_choice", "tagging", "qa", "image", *TEXT_KINDS) and \
            "text" not in (data.get("columns") or {}) and \
            "text" not in ((data.get("local") or {}).get("columns") or {}):
        raise UsageError(f"task {source}: 'columns' must name the text column")
    if data.get("local") is not None:
        _check_local(data["local"], source, labels, kind)
    return TaskSpec(name=str(data["name"]), kind=kind, metrics=metrics, description=data.get("description", ""),
                    aliases=tuple(data.get("aliases") or ()), labels=labels, hub=data.get("hub"),
                    columns=dict(data.get("columns") or {}), choices=data.get("choices"),
                    local=data.get("local"), catalog=str(data.get("catalog") or ""), source=source)


def _check_metrics(kind: str, metrics: tuple[str, ...], source: str) -> None:
    """Each kind of task has the metrics that mean something for it (KIND_METRICS); the others take none
    of those that only make sense elsewhere."""
    allowed = KIND_METRICS.get(kind)
    if kind in ("single", "pair", "image", "multiple_choice"):
        wrong = next((m for m in metrics if m in ("pearson", "spearman")), None)
        if wrong is not None:
            raise UsageError(f"task {source}: {wrong} correlates scores, for regression tasks; a {kind} task "
                             "predicts labels (accuracy, f1, macro_f1, mcc)")
    if allowed is not None and not all(m in allowed for m in metrics):
        raise UsageError(f"task {source}: a {kind} task's metrics are {', '.join(allowed)}; got {', '.join(metrics)}")
    special: dict[str, list[str]] = {}
    for owner, names in KIND_METRICS.items():
        for name in names:
            if name not in ("accuracy", "macro_f1"):
                special.setdefault(name, []).append(owner)
    foreign = next((m for m in metrics if m in special), None)
    if allowed is None and foreign is not None:
        raise UsageError(f"task {source}: {foreign} is a metric of {' or '.join(special[foreign])} tasks, not of a "
                         f"{kind} task")


def _check_local(local: Any, source: str, labels: tuple[str, ...], kind: str = "single") -> None:
    """The ``local`` section: which files, how they are read, and which rows belong to which split."""
    if not isinstance(local, dict):
        raise UsageError(f"task {source}: 'local' must be a mapping (train, eval, columns, ...)")
    check_keys(local, LOCAL_KEYS, f"task {source}'s 'local' section", UsageError, f"; known: {', '.join(LOCAL_KEYS)}")
    for key in ("train", "eval", "file"):
        if key in local:
            _check_file_name(local[key], key, source)
    fmt, delimiter = local.get("format"), local.get("delimiter")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"task {source}: local format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "conll" and kind != "tagging":
        raise UsageError(f"task {source}: local format conll is for tagging tasks (a word a line); a {kind} task "
                         "reads csv, tsv, jsonl or parquet")
    if fmt == "squad" and kind != "qa":
        raise UsageError(f"task {source}: local format squad is for qa tasks (SQuAD JSON); a {kind} task reads csv, "
                         "tsv, jsonl or parquet")
    if kind == "qa" and fmt in ("csv", "tsv", "conll"):
        raise UsageError(f"task {source}: a qa task reads squad (SQuAD's JSON), jsonl or parquet files, not {fmt}")
    if kind == "tagging" and fmt in ("csv", "tsv"):
        raise UsageError(f"task {source}: a tagging task reads conll (a word a line), jsonl or parquet files, not "
                         f"{fmt}")
    if kind == "image" and fmt not in (None, "folders"):
        raise UsageError(f"task {source}: an image task's splits are folders with a sub-folder of images per label "
                         f"(format folders), not {fmt} files")
    if fmt == "folders" and kind != "image":
        raise UsageError(f"task {source}: local format folders is for image tasks; a {kind} task reads files")
    if kind == "image" and ("split_column" in local or "file" in local or delimiter is not None or
                            "columns" in local or "header" in local):
        raise UsageError(f"task {source}: an image task's train and eval are folders of label folders; leave out "
                         "file, split_column, columns, header and delimiter")
    if kind == "tagging" and ("split_column" in local or delimiter is not None):
        raise UsageError(f"task {source}: a tagging task's files are one per split (train, eval), their fields "
                         "split on whitespace; leave out split_column and delimiter")
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
            raise UsageError(f"task {source}: local delimiter must be one character, e.g. \"\\t\" (in double "
                             f"quotes) or \";\", got {delimiter!r}")
        if fmt in ("jsonl", "parquet") or (fmt == "tsv" and delimiter != "\t"):
            raise UsageError(f"task {source}: a local delimiter {delimiter!r} does not go with format {fmt}")
    if ("split_column" in local) != ("splits" in local):
        raise UsageError(f"task {source}: local 'split_column' and 'splits' go together (e.g. split_column: "
                         "SemEval_set, splits: {train: TRAIN, eval: TRIAL, test: TEST})")
    if "splits" in local:
        _check_splits(local["splits"], source)
    label_map = local.get("label_map")
    if label_map is not None and (not isinstance(label_map, dict) or not all(
            v in labels or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (len(labels) or v + 1))
            for v in label_map.values())):
        raise UsageError(f"task {source}: local label_map must map each value in the file to a label "
                         f"({', '.join(labels) or 'an index'})")
    if "file" in local and "split_column" not in local:  # else train and eval would read the same rows
        raise UsageError(f"task {source}: local 'file' holds every split, so it needs 'split_column' and 'splits' "
                         "saying which rows are which; or name the files with 'train' and 'eval'")
    for split in ("train", "eval") if kind not in TEXT_KINDS else ("train",):  # text: dev drawn from train
        if split not in local and "file" not in local:
            raise UsageError(f"task {source}: local names no {split} file: give 'train' and 'eval' (or 'file' "
                             "with 'split_column')")


def _check_file_name(name: Any, key: str, source: str) -> None:
    """A ``local`` file is named relative to the task's directory (or --data-dir) and stays inside it: a task
    file from elsewhere cannot make adapt read (and echo parts of) any other file."""
    text = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    if not text.strip():
        raise UsageError(f"task {source}: local {key} must be a file name, got {name!r}")
    path = Path(text)
    if path.is_absolute() or ".." in path.parts or text.startswith("~"):
        raise UsageError(f"task {source}: local {key} {text!r} is outside the task's directory; name a file in "
                         "the task YAML's folder (no '..', no absolute path), or give the folder as `data_dir` "
                         "that holds it")


def _check_splits(splits: Any, source: str) -> None:
    if not isinstance(splits, dict) or not {"train", "eval"} <= set(splits):
        raise UsageError(f"task {source}: local 'splits' must map train and eval (and optionally test) to the "
                         "split column's value(s), e.g. {train: TRAIN, eval: TRIAL, test: TEST}")
    owner: dict[str, str] = {}
    for split, values in splits.items():
        if split not in SPLITS:
            raise UsageError(f"task {source}: unknown split {split!r} under local 'splits'{suggest(str(split), SPLITS)}"
                             f"; known: {', '.join(SPLITS)}")
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise UsageError(f"task {source}: local splits.{split} must be a value or a list of values, "
                             f"got {values!r}")
        for value in map(str, values):
            if value in owner:  # one row in two splits would leak evaluation data into training
                raise UsageError(f"task {source}: value {value!r} is given for both {owner[value]} and {split} "
                                 "under local 'splits'")
            owner[value] = split


@lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, TaskSpec]:
    from ..builtins import yaml_registry

    return yaml_registry("tasks", task_from_dict)


def get_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name or alias (case-insensitive), or a user task YAML file."""
    table = builtin_tasks()
    key = name_or_path.lower()
    if key in table:
        return table[key]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UsageError(f"task file {path} does not exist")
        from ..jsonio import load_yaml

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read task file {path}: {exc}".splitlines()[0]) from None
        data = load_yaml(text, f"task file {path}")  # bad YAML or nesting too deep: one line
        spec = task_from_dict(data, str(path))
        if spec.local is None:
            raise UsageError(f"task file {path} needs a 'local' section naming its train and eval files")
        return spec
    names = sorted({t.name for t in table.values()})
    import difflib

    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise UsageError(f"unknown task {name_or_path!r}{hint}; built-in tasks: {', '.join(names)} "
                     "(or a task YAML file)")
