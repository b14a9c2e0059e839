"""Extractive question answering: windows over long contexts, answers read back from the logits, SQuAD's
metrics, and SQuAD files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapter_cli.errors import AdaptError, UsageError
from adapter_cli.head_config import HeadConfig
from adapter_cli.qa import best_answers, windows
from adapter_cli.tasks import get_task, task_from_dict
from adapter_cli.tasks.loading import load_split
from adapter_cli.tasks.metrics import compute, exact_match, normalize, token_f1
from tests.conftest import save_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from adapter_cli.tokenizer import load_tokenizer

    return load_tokenizer(str(save_tiny_model(tmp_path_factory.mktemp("qa") / "m")), None, "tiny")


def test_a_long_context_is_cut_into_overlapping_windows_that_find_the_answer(tokenizer) -> None:
    context = " ".join(["film was the plot"] * 10 + ["good"])  # 41 words: far more than one window of 16
    start = context.index("good")
    found = windows(tokenizer, ["which"], [context], 16, [(start, start + 4)])
    assert len(found.example) > 3 and set(found.example) == {0} and found.lost == 0
    labelled = [(w, p) for w, p in enumerate(found.positions) if p != (0, 0)]
    assert len(labelled) == 1  # only the last window holds the answer
    w, (first, last) = labelled[0]
    ids = found.encoding["input_ids"][w]
    assert tokenizer.convert_ids_to_tokens(ids[first:last + 1]) == ["good"]
    assert found.offsets[w][first] == (start, start + 4)
    assert found.offsets[w][0] is None and found.offsets[w][1] is None  # [CLS] and the question: not context


def test_an_answer_in_no_window_is_lost_and_a_question_too_long_has_no_window(tokenizer) -> None:
    context = "the film was good and the plot was fun"
    long_question = " ".join(["which"] * 20)
    start = context.index("good")
    found = windows(tokenizer, ["which", long_question], [context, context], 16,
                    [(start, start + 4), (start, start + 4)])
    assert found.unfit == [1] and set(found.example) == {0} and found.lost == 1
    answers = best_answers([torch.zeros(len(ids)) for ids in found.encoding["input_ids"]],
                           [torch.zeros(len(ids)) for ids in found.encoding["input_ids"]], found,
                           [context, context])
    assert answers[1]["answer"] is None and answers[0]["answer"] is not None


def test_the_best_span_over_windows_and_the_empty_answer(tokenizer) -> None:
    context = "the film was good and the plot was fun"
    found = windows(tokenizer, ["which"], [context], 64)
    n = len(found.encoding["input_ids"][0])
    start, end = torch.zeros(n), torch.zeros(n)
    first = next(t for t, o in enumerate(found.offsets[0]) if o is not None)
    start[first + 3], end[first + 3] = 5.0, 5.0  # "good"
    last = max(t for t, o in enumerate(found.offsets[0]) if o is not None)
    start[last], end[first] = 9.0, 9.0  # the end before the start: never an answer (9 + 0 < 5 + 5 elsewhere)
    answer = best_answers([start], [end], found, [context])[0]
    assert answer["answer"] == "good" and (answer["start"], answer["end"]) == (13, 17)
    start[0], end[0] = 20.0, 20.0  # position 0 wins: an empty answer, where the task allows one
    assert best_answers([start], [end], found, [context], allow_empty=True)[0]["answer"] == ""
    assert best_answers([start], [end], found, [context])[0]["answer"] == "good"


def test_squad_metrics() -> None:
    assert normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Eiffel Tower", ["Eiffel Tower", "tower"]) == 1.0
    assert token_f1("Eiffel Tower in Paris", ["the Eiffel Tower"]) == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert exact_match("", []) == 1.0 and token_f1("Paris", []) == 0.0  # unanswerable
    out = compute(["token_f1", "exact_match"], ["Paris", "a dog"], [["Paris"], ["the cat"]], "qa")
    assert out == {"token_f1": 0.5, "exact_match": 0.5}


def _rows_task(root: Path, row: dict) -> Path:
    """A qa task of one JSONL row (train and eval alike)."""
    (root / "rows.jsonl").write_text(json.dumps(row) + "\n")
    (root / "t.yaml").write_text("name: q\nkind: qa\nmetrics: [exact_match]\nlocal: {train: rows.jsonl, "
                                 "eval: rows.jsonl}\n")
    return root / "t.yaml"


def _squad(root: Path, version2: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    qas = [{"id": "1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 10}]},
           {"id": "2", "question": "Who?", "answers": [{"text": "Paris", "answer_start": 3}]}]  # start is off
    if version2:
        qas.append({"id": "3", "question": "When?", "answers": [], "is_impossible": True})
    data = {"version": "2.0" if version2 else "1.1",
            "data": [{"title": "t", "paragraphs": [{"context": "It is in Paris.", "qas": qas}]}]}
    (root / "train.json").write_text(json.dumps(data))
    (root / "task.yaml").write_text("name: my_qa\nkind: qa\nmetrics: [token_f1, exact_match]\n"
                                    "local: {train: train.json, eval: train.json}\n")
    return root / "task.yaml"


def test_squad_json_files_and_unanswerable_questions(tmp_path: Path) -> None:
    examples = load_split(get_task(str(_squad(tmp_path, version2=True))), "train")
    assert [e.texts for e in examples][0] == ("Where?", "It is in Paris.")
    assert [e.label for e in examples] == [((9, "Paris"),), ((9, "Paris"),), ()]


def test_the_builtin_squad_reads_the_original_file_and_the_hub_layout(tmp_path: Path) -> None:
    _squad(tmp_path)
    (tmp_path / "train.json").rename(tmp_path / "dev-v1.1.json")
    assert load_split(get_task("squad"), "eval", tmp_path)[0].label == ((9, "Paris"),)
    row = {"question": "Where?", "context": "It is in Paris.", "answers": {"text": ["Paris"], "answer_start": [9]}}
    _rows_task(tmp_path, row)
    assert load_split(get_task(str(tmp_path / "t.yaml")), "train")[0].label == ((9, "Paris"),)


@pytest.mark.parametrize("answers, message", [
    ([{"text": "Rome", "answer_start": 0}], "answer 'Rome' is not in the context"),
    ([{"text": "Paris"}], "an answer needs a text and an integer answer_start"),
])
def test_answers_that_are_not_in_their_context(tmp_path: Path, answers: list, message: str) -> None:
    row = {"question": "Where?", "context": "It is in Paris.", "answers": answers}
    _rows_task(tmp_path, row)
    with pytest.raises(UsageError, match=message):
        load_split(get_task(str(tmp_path / "t.yaml")), "train")


@pytest.mark.parametrize("data, message", [
    ({"kind": "qa", "metrics": ["accuracy"]}, "a qa task's metrics are token_f1, exact_match"),
    ({"kind": "qa", "metrics": ["exact_match"], "local": {"train": "a", "eval": "b", "format": "csv"}},
     "a qa task reads squad"),
    ({"kind": "single", "labels": ["a", "b"], "metrics": ["accuracy"], "columns": {"text": "t"},
      "local": {"train": "a", "eval": "b", "format": "squad"}}, "format squad is for qa tasks"),
])
def test_qa_task_files_that_do_not_fit(data: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        task_from_dict({"name": "t", **data}, "t.yaml")


def test_a_qa_head_has_two_outputs_and_its_loss_ignores_positions_beyond_the_window() -> None:
    from tests.conftest import tiny_inputs, tiny_model

    with pytest.raises(AdaptError, match="2 outputs"):
        HeadConfig(head_type="question_answering", num_labels=3)
    model = tiny_model()
    model.add_head("qa", "question_answering", num_labels=2, layers=1)
    ids, mask = tiny_inputs()
    out = model(input_ids=ids, attention_mask=mask, head="qa", labels=torch.tensor([[1, 2], [0, 0], [3, 99]]))
    start, end = out.logits.unbind(-1)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(start, torch.tensor([1, 0, 3])) + ce(end, torch.tensor([2, 0, 7]), ignore_index=7)) / 2
    assert out.logits.shape == (3, 7, 2) and torch.allclose(out.loss, expected)


def test_squad_metric_edge_cases_follow_the_official_script() -> None:
    assert exact_match("", ["The", "cat"]) == 0.0  # "The" normalises to nothing: dropped, as SQuAD 2.0's script does
    assert exact_match("", ["the"]) == 1.0  # nothing left: the question has no answer
    assert exact_match(None, []) == 0.0 and token_f1(None, ["Paris"]) == 0.0  # no window, no answer: a miss


def test_an_offset_answer_goes_to_the_nearest_occurrence(tmp_path: Path) -> None:
    row = {"question": "Which?", "context": "good and good", "answers": [{"text": "good", "answer_start": 8}]}
    _rows_task(tmp_path, row)
    assert load_split(get_task(str(tmp_path / "t.yaml")), "train")[0].label == ((9, "good"),)


@pytest.mark.parametrize("content, message", [
    ({"data": ["x"]}, "an entry holding paragraphs must be an object"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": ["q"]}]}]}, "qas must be a list of objects"),
])
def test_malformed_squad_files_are_one_line(tmp_path: Path, content: dict, message: str) -> None:
    (tmp_path / "train.json").write_text(json.dumps(content))
    (tmp_path / "t.yaml").write_text("name: q\nkind: qa\nmetrics: [exact_match]\nlocal: {train: train.json, "
                                     "eval: train.json}\n")
    with pytest.raises(UsageError, match=message):
        load_split(get_task(str(tmp_path / "t.yaml")), "train")


@pytest.mark.parametrize("answers, message", [
    ({"text": "good", "answer_start": [3]}, "need two lists of the same length"),
    ({"text": "good", "answer_start": 3}, "need two lists of the same length"),
    (["good"], "answers must be a list of"),
])
def test_malformed_answers_are_one_line(tmp_path: Path, answers: object, message: str) -> None:
    row = {"question": "which", "context": "so good", "answers": answers}
    _rows_task(tmp_path, row)
    with pytest.raises(UsageError, match=message):
        load_split(get_task(str(tmp_path / "t.yaml")), "train")


@pytest.mark.parametrize("label, texts", [
    ("Paris", ["Paris"]), (["Paris", "France"], ["Paris", "France"]), (None, []), ("", []), ([], []),
    ([{"text": "Paris", "answer_start": 3}], ["Paris"]), ({"text": ["Paris"], "answer_start": [3]}, ["Paris"]),
])
def test_gold_answers_in_every_form_a_label_column_holds(label: object, texts: list) -> None:
    from adapter_cli.inference import answer_texts

    assert answer_texts(label, 1) == texts
