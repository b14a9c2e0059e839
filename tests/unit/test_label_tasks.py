"""Task kinds multilabel and tagging: their files, their labels, and the task YAML that declares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter_cli.errors import UsageError
from adapter_cli.tasks import get_task, task_from_dict
from adapter_cli.tasks.loading import load_split

NER = "name: ner\nkind: tagging\nlabels: [O, B-PER, I-PER, B-LOC]\nmetrics: [entity_f1, accuracy]\n"
CONLL = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Smith NNP I-NP I-PER
lives VBZ B-VP O

# a comment line
in IN B-PP O
Paris NNP B-NP B-LOC
"""


def _task(root: Path, yaml: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "task.yaml").write_text(yaml)
    return root / "task.yaml"


def test_conll_sentences_with_the_label_in_the_last_column(tmp_path: Path) -> None:
    path = _task(tmp_path, NER + "local: {train: train.txt, eval: train.txt}\n", {"train.txt": CONLL})
    examples = load_split(get_task(str(path)), "train")
    assert [e.words for e in examples] == [("John", "Smith", "lives"), ("in", "Paris")]
    assert [e.label for e in examples] == [(1, 2, 0), (0, 3)]


def test_conll_columns_and_jsonl_records(tmp_path: Path) -> None:
    text = "John\tPER\nSmith\tPER\n\nParis\tLOC\n"
    yaml = ("name: ner\nkind: tagging\nlabels: [O, PER, LOC]\nmetrics: [entity_f1]\n"
            "local: {train: t.tsv, eval: d.jsonl, columns: {text: 0, label: 1}, format: conll}\n")
    path = _task(tmp_path, yaml, {"t.tsv": text, "d.jsonl": ""})
    assert [e.label for e in load_split(get_task(str(path)), "train")] == [(1, 1), (2,)]
    records = json.dumps({"tokens": ["in", "Paris"], "tags": ["O", 2]}) + "\n"
    yaml = ("name: ner\nkind: tagging\nlabels: [O, PER, LOC]\nmetrics: [entity_f1]\n"
            "local: {train: t.jsonl, eval: t.jsonl}\n")
    path = _task(tmp_path / "j", yaml, {"t.jsonl": records})
    assert load_split(get_task(str(path)), "eval")[0].label == (0, 2)


@pytest.mark.parametrize("text, message", [
    ("John B-PER\nSmith B-XYZ\n", "train.txt:2 row 1: label 'B-XYZ' is outside the label set"),
    ("John\n", "train.txt:1 has 1 fields; column 3 is missing"),
    ("\n\n-DOCSTART- O\n", "holds no sentences"),
])
def test_bad_conll_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    yaml = NER + "local: {train: train.txt, eval: train.txt, columns: {text: 0, label: 3}}\n"
    if "B-XYZ" in text:
        yaml = NER + "local: {train: train.txt, eval: train.txt}\n"
    path = _task(tmp_path, yaml, {"train.txt": text})
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        load_split(get_task(str(path)), "train")


def test_hash_words_are_words_and_comments_come_before_a_sentence(tmp_path: Path) -> None:
    text = "# text = I love # 1 #Berlin\nI O\nlove O\n# O\n1 O\n#Berlin B-LOC\n\n#Paris B-LOC\n"
    path = _task(tmp_path, NER + "local: {train: t.txt, eval: t.txt}\n", {"t.txt": text})
    examples = load_split(get_task(str(path)), "train")
    assert [e.words for e in examples] == [("I", "love", "#", "1", "#Berlin"), ("#Paris",)]


def test_conll_columns_are_field_numbers(tmp_path: Path) -> None:
    yaml = NER + "columns: {text: 0, label: 1}\nlocal: {train: t.txt, eval: t.txt}\n"  # the task's own columns
    path = _task(tmp_path, yaml, {"t.txt": "John B-PER x\n"})
    assert load_split(get_task(str(path)), "train")[0].label == (1,)
    yaml = NER + "local: {train: t.txt, eval: t.txt, columns: {text: word, label: tag}}\n"
    path = _task(tmp_path / "names", yaml, {"t.txt": "John B-PER\n"})
    with pytest.raises(UsageError, match="CoNLL columns are field numbers"):
        load_split(get_task(str(path)), "train")


def test_a_jsonl_tagging_row_with_more_words_than_tags(tmp_path: Path) -> None:
    yaml = NER + "local: {train: t.jsonl, eval: t.jsonl}\n"
    path = _task(tmp_path, yaml, {"t.jsonl": json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n"})
    with pytest.raises(UsageError, match="2 words but 1 tags"):
        load_split(get_task(str(path)), "train")


def test_multilabel_rows_take_lists_or_comma_separated_labels(tmp_path: Path) -> None:
    rows = [{"text": "a", "labels": ["pos", "neg"]}, {"text": "b", "labels": "neg"}, {"text": "c", "labels": ""},
            {"text": "d", "labels": [0]}]
    yaml = ("name: ml\nkind: multilabel\nlabels: [pos, neg]\nmetrics: [micro_f1]\n"
            "columns: {text: text, label: labels}\nlocal: {train: t.jsonl, eval: t.jsonl}\n")
    path = _task(tmp_path, yaml, {"t.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
    assert [e.label for e in load_split(get_task(str(path)), "train")] == [(1, 1), (0, 1), (0, 0), (1, 0)]
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "e", "labels": ["pos", "meh"]}) + "\n")
    with pytest.raises(UsageError, match="label 'meh' is outside the label set"):
        load_split(get_task(str(path)), "train")


@pytest.mark.parametrize("data, message", [
    ({"kind": "multilabel", "labels": ["a", "b"], "metrics": ["f1"], "columns": {"text": "t"}},
     "a multilabel task's metrics are micro_f1, macro_f1, accuracy"),
    ({"kind": "single", "labels": ["a", "b"], "metrics": ["entity_f1"], "columns": {"text": "t"}},
     "entity_f1 is a metric of tagging tasks, not of a single task"),
    ({"kind": "tagging", "labels": ["O"], "metrics": ["entity_f1"]}, r"needs 'labels' \(at least two\)"),
    ({"kind": "tagging", "labels": ["O", "O"], "metrics": ["entity_f1"]}, "names a label twice"),
    ({"kind": "single", "labels": ["a", "b"], "metrics": ["accuracy"], "columns": {"text": "t"},
      "local": {"train": "a", "eval": "b", "format": "conll"}}, "format conll is for tagging tasks"),
    ({"kind": "tagging", "labels": ["O", "X"], "metrics": ["entity_f1"],
      "local": {"train": "a", "eval": "b", "format": "csv"}}, "a tagging task reads conll"),
])
def test_task_files_that_do_not_fit_their_kind(data: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        task_from_dict({"name": "t", **data}, "t.yaml")


def test_the_builtin_tasks_read_their_original_files(tmp_path: Path) -> None:
    conll = tmp_path / "conll"
    conll.mkdir()
    for name in ("train.txt", "valid.txt"):
        (conll / name).write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
                                  "German JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    examples = load_split(get_task("conll2003"), "eval", conll)
    assert [e.label for e in examples] == [(3, 0, 7), (1, 2)]
    emotions = tmp_path / "goemotions"
    emotions.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (emotions / name).write_text("My favourite food is anything I didn't have to cook myself.\t27\teebbqej\n"
                                     "WHY THE FUCK IS BAYLESS ISOING\t2,3\ted00q6i\n")
    examples = load_split(get_task("go_emotions"), "train", emotions)
    assert [[i for i, on in enumerate(e.label) if on] for e in examples] == [[27], [2, 3]]
