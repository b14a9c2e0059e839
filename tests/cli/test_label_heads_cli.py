"""adapt train / infer / add with tagging and multi-label heads, on tiny models that can learn the toy tasks:
the tag of a word is its sentiment; the labels of a text are the sentiments of its words."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from tests.conftest import FILLER, WORDS_NEG, WORDS_POS, one_line_error, save_tiny_model

runner = CliRunner()


def _sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(FILLER, 4) + [rng.choice(WORDS_POS)] * rng.randint(0, 1) + \
            [rng.choice(WORDS_NEG)] * rng.randint(0, 1)
        rng.shuffle(words)
        out.append(words)
    return out


def _tag(word: str) -> str:
    return "B-POS" if word in WORDS_POS else "B-NEG" if word in WORDS_NEG else "O"


def write_tagging_task(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 160, 0), ("dev", 40, 1)):
        lines = ["-DOCSTART- -X- O", ""]
        for words in _sentences(n, seed):
            lines += [f"{w} X {_tag(w)}" for w in words] + [""]
        (root / f"{split}.txt").write_text("\n".join(lines))
    (root / "task.yaml").write_text("name: toy_ner\nkind: tagging\nlabels: [O, B-POS, I-POS, B-NEG, I-NEG]\n"
                                    "metrics: [entity_f1, accuracy]\nlocal: {train: train.txt, eval: dev.txt}\n")
    return root / "task.yaml"


def write_multilabel_task(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 240, 0), ("dev", 40, 1)):
        rows = []
        for words in _sentences(n, seed):
            labels = [name for name, group in (("pos", WORDS_POS), ("neg", WORDS_NEG)) if set(words) & set(group)]
            rows.append(json.dumps({"text": " ".join(words), "labels": labels}))
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "task.yaml").write_text("name: toy_ml\nkind: multilabel\nlabels: [pos, neg]\n"
                                    "metrics: [micro_f1, macro_f1, accuracy]\ncolumns: {text: text, label: labels}\n"
                                    "local: {train: train.jsonl, eval: dev.jsonl}\n")
    return root / "task.yaml"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return {"model": str(save_tiny_model(root / "tiny")), "root": root,
            "tag": str(write_tagging_task(root / "tag")), "ml": str(write_multilabel_task(root / "ml"))}


@pytest.fixture(scope="module")
def tagger(env):
    """A tagging adapter trained on the toy task (a word's tag is in the word: a tiny frozen model learns it)."""
    run_dir = env["root"] / "runs" / "tag"
    result = runner.invoke(app, ["train", "--task", env["tag"], "--model", env["model"], "--run-dir", str(run_dir),
                                 "--no-cache", "--json", "--quiet", "epochs=8", "batch_size=16",
                                 "learning_rate=1e-1"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), run_dir / "best"


def test_a_tagging_adapter_learns_and_infer_answers_per_word(env, tagger) -> None:
    summary, best = tagger
    assert summary["main_metric"] == "entity_f1" and summary["best"]["metric"] > 0.8
    head = json.loads((best / "head_config.json").read_text())["config"]
    assert head["head_type"] == "tagging" and head["layers"] == 1
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(best), "--json",
                                 "the good film was bad", "so boring"])
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["words"] == ["the", "good", "film", "was", "bad"]
    assert first["tags"] == ["O", "B-POS", "O", "O", "B-NEG"] and len(first["scores"]) == 5
    assert first["entities"] == [{"type": "POS", "start": 1, "end": 2, "text": "good"},
                                 {"type": "NEG", "start": 4, "end": 5, "text": "bad"}]
    assert second["tags"] == ["O", "B-NEG"]


def test_infer_scores_the_dev_set_as_training_did(env, tagger, tmp_path: Path) -> None:
    summary, best = tagger
    metrics = tmp_path / "m.json"
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(best), "--task", env["tag"],
                                 "--metrics", str(metrics), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.stderr
    scored = json.loads(metrics.read_text())
    assert scored["rows"] == 40
    for name, value in summary["best"]["metrics"].items():
        assert scored[name] == pytest.approx(value, abs=1e-9)
    import csv

    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(json.loads(rows[0]["tags"])) == len(rows[0]["text"].split())  # lists are one JSON cell each


def test_words_cut_by_the_length_are_counted_not_guessed(env, tagger) -> None:
    _, best = tagger
    text = " ".join(["good"] * 12)
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(best), "--max-length", "8", text])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["cut"] == 6 and answer["tags"][6:] == [None] * 6 and answer["tags"][0] == "B-POS"


def test_a_tagging_head_refuses_text_pairs(env, tagger) -> None:
    _, best = tagger
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(best), "--pair", "--allow-single",
                                 "a good film", "it was bad"])
    assert "labels the words of one text" in one_line_error(result)


def test_a_multilabel_model_learns_and_answers_label_sets(env, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", env["ml"], "--model", env["model"], "--method", "full",
                                 "--run-dir", str(run_dir), "--no-cache", "--json", "--quiet", "epochs=15",
                                 "batch_size=16", "learning_rate=5e-3", "patience=null"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["main_metric"] == "micro_f1" and summary["best"]["metric"] > 0.9
    best = str(run_dir / "best")  # a full fine-tuning run's model and head, answered with that head
    result = runner.invoke(app, ["infer", "--model", best, "the good film was bad", "the film was"])
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        answer = json.loads(line)
        assert set(answer["scores"]) == {"pos", "neg"}
        assert answer["labels"] == [name for name in ("pos", "neg") if answer["scores"][name] > 0.5]
    result = runner.invoke(app, ["infer", "--model", best, "--input", str(Path(env["ml"]).parent / "dev.jsonl"),
                                 "--label-column", "labels", "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.stderr
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["micro_f1"] == pytest.approx(summary["best"]["metrics"]["micro_f1"], abs=1e-9)


def test_a_model_without_any_head_is_one_line(env) -> None:
    result = runner.invoke(app, ["infer", "--model", env["model"], "a good film"])
    assert "no prediction head is loaded" in one_line_error(result)


@pytest.mark.parametrize("spec, head_type, layers", [("tagging:5", "tagging", 1),
                                                     ("multilabel:3", "multilabel_classification", 2)])
def test_add_saves_the_new_heads_in_adapterhub_format(env, tmp_path: Path, spec: str, head_type: str,
                                                      layers: int) -> None:
    out = tmp_path / "saved"
    result = runner.invoke(app, ["add", "pfeiffer", "--model", env["model"], "--head", spec, "--save", str(out),
                                 "--format", "adapterhub"])
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "head_config.json").read_text())["config"]
    assert (config["head_type"], config["layers"], config["num_labels"]) == (head_type, layers, int(spec[-1]))


@pytest.mark.parametrize("spec, message", [("tagging:1", "number of labels must be from 2"),
                                           ("multilabel:0", "number of labels must be from 1"),
                                           ("tagging", "")])
def test_add_refuses_label_heads_without_a_count(env, tmp_path: Path, spec: str, message: str) -> None:
    result = runner.invoke(app, ["add", "pfeiffer", "--model", env["model"], "--head", spec, "--save",
                                 str(tmp_path / "x")])
    if not message:  # tagging alone: two labels, like classification
        assert result.exit_code == 0, result.stderr
        return
    assert message in one_line_error(result)
    assert not (tmp_path / "x").exists()


def test_a_conll_file_with_an_unknown_tag_is_one_line_and_leaves_no_run(env, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.txt").write_text("good X B-POS\nfilm X B-MOVIE\n")
    (root / "dev.txt").write_text("good X B-POS\n")
    (root / "task.yaml").write_text(Path(env["tag"]).read_text())
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", str(root / "task.yaml"), "--model", env["model"], "--run-dir",
                                 str(run_dir), "--no-cache"])
    assert "train.txt:2 row 1: label 'B-MOVIE' is outside the label set" in one_line_error(result)
    assert not run_dir.exists()


def test_a_word_the_tokenizer_removes_is_null_and_the_rest_are_tagged(env, tagger) -> None:
    _, best = tagger
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(best), "good \u200b film bad"])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["tags"] == ["B-POS", None, "O", "B-NEG"] and answer["cut"] == 1


def test_infer_scores_a_task_whose_words_hold_spaces_as_training_did(env, tmp_path: Path) -> None:
    """JSONL tokens may hold spaces ('good film'): infer --task keeps the task's own words, as training does."""
    root = tmp_path / "tj"
    root.mkdir()
    rows = [{"tokens": ["the", "good film", "was", "bad"], "tags": ["O", "B-POS", "O", "B-NEG"]},
            {"tokens": ["so", "dull"], "tags": ["O", "B-NEG"]}] * 8
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "task.yaml").write_text("name: tj\nkind: tagging\nlabels: [O, B-POS, I-POS, B-NEG, I-NEG]\n"
                                    "metrics: [entity_f1, accuracy]\nlocal: {train: t.jsonl, eval: t.jsonl}\n")
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", str(root / "task.yaml"), "--model", env["model"], "--run-dir",
                                 str(run_dir), "--no-cache", "--json", "--quiet", "epochs=2", "learning_rate=1e-1"])
    assert result.exit_code == 0, result.stderr
    trained = json.loads(result.stdout)["best"]["metrics"]
    metrics = tmp_path / "m.json"
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(run_dir / "best"), "--task",
                                 str(root / "task.yaml"), "--metrics", str(metrics)])
    assert result.exit_code == 0, result.stderr
    scored = json.loads(metrics.read_text())
    assert {k: scored[k] for k in trained} == pytest.approx(trained, abs=1e-9)


def test_a_gold_label_that_only_looks_like_a_number_is_one_line(env, tmp_path: Path) -> None:
    ml_best = tmp_path / "ml"
    result = runner.invoke(app, ["add", "pfeiffer", "--model", env["model"], "--head", "multilabel:2", "--save",
                                 str(ml_best), "--name", "ml"])
    assert result.exit_code == 0, result.stderr
    (tmp_path / "in.csv").write_text("text,gold\ngood film,0\nbad movie,\u00b2\n")
    result = runner.invoke(app, ["infer", "--model", env["model"], "--adapter", str(ml_best), "--input",
                                 str(tmp_path / "in.csv"), "--label-column", "gold"])
    assert "row 2: label '\u00b2' is not one of" in one_line_error(result)
