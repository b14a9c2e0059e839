"""`adapt infer` never answers wrongly in silence: heads follow the composition, tokenizers travel with
models, pairs are pairs, a loaded fusion is used, short names resolve to one predictable entry."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import FILLER, WORDS_NEG, WORDS_POS, one_line_error, sandbox, save_tiny_model, write_sentiment_task

runner = CliRunner()
QUICK = ["epochs=1", "batch_size=16", "learning_rate=5e-3", "patience=null", "min_steps=null", "--quiet"]
SENTIMENT = {"neg", "pos"}
MOOD = {"downbeat", "upbeat"}
MATCH = {"different", "same"}


def _write_task(root: Path, name: str, labels: list[str], pair: bool, seed: int) -> Path:
    """A generated task the tiny tokenizer can read: single texts labelled by their sentiment word, or
    pairs labelled by whether both texts share a sentiment."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def text(positive: bool) -> str:
        words = rng.sample(FILLER, 3) + [rng.choice(WORDS_POS if positive else WORDS_NEG)]
        rng.shuffle(words)
        return " ".join(words)

    for split, n in (("train", 64), ("dev", 32)):
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "pair", "label"] if pair else ["text", "label"])
            for _ in range(n):
                a, b = rng.random() < 0.5, rng.random() < 0.5
                if pair:
                    writer.writerow([text(a), text(b), labels[int(a == b)]])
                else:
                    writer.writerow([text(a), labels[int(a)]])
    columns = "{text: text, pair: pair, label: label}" if pair else "{text: text, label: label}"
    (root / "task.yaml").write_text(
        f"name: {name}\nkind: {'pair' if pair else 'single'}\nlabels: [{', '.join(labels)}]\n"
        f"metrics: [accuracy]\ncolumns: {columns}\nlocal: {{train: train.csv, eval: dev.csv}}\n")
    return root / "task.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three adapters with different label sets (one of them on pairs) and a fusion, on a tiny model."""
    with sandbox(tmp_path_factory, "truth") as root:
        model = str(save_tiny_model(root / "tiny"))
        tasks = {"toy_sentiment": str(write_sentiment_task(root / "sentiment")),
                 "toy_mood": str(_write_task(root / "mood", "toy_mood", ["downbeat", "upbeat"], False, 1)),
                 "toy_match": str(_write_task(root / "match", "toy_match", ["different", "same"], True, 2))}
        for task in tasks.values():
            result = runner.invoke(app, ["train", "--task", task, "--model", model, *QUICK])
            assert result.exit_code == 0, result.stderr
        result = runner.invoke(app, ["fuse", "toy_sentiment", "toy_mood", "--target", tasks["toy_sentiment"],
                                     "--model", model, *QUICK])
        assert result.exit_code == 0, result.stderr
        yield {"root": root, "model": model, "tasks": tasks}


def infer(env, *args: str):
    return runner.invoke(app, ["infer", "-m", env["model"], *args])


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_active_adapter_is_answered_by_its_own_head(trained) -> None:
    loads = ["-a", "toy_sentiment", "-a", "toy_mood"]
    for active, labels in (("toy_sentiment", SENTIMENT), ("toy_mood", MOOD)):
        out = rows(infer(trained, *loads, "--active", active, "good film", "the plot was awful"))
        assert {r["label"] for r in out} <= labels and {r["head"] for r in out} == {active}
    # a stack is answered by its last member's head
    out = rows(infer(trained, *loads, "--active", "stack(toy_mood,toy_sentiment)", "good film"))
    assert out[0]["label"] in SENTIMENT and out[0]["head"] == "toy_sentiment"


def test_routed_rows_are_answered_by_their_own_heads(trained, tmp_path) -> None:
    data = tmp_path / "mixed.csv"
    data.write_text("text,task\ngood film,toy_mood\nbad film,toy_sentiment\nfun movie,toy_mood\n"
                    "dull plot,toy_sentiment\n")
    out = rows(infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "--input", str(data),
                     "--route-column", "task"))
    assert [r["head"] for r in out] == ["toy_mood", "toy_sentiment", "toy_mood", "toy_sentiment"]
    for r in out:
        assert r["label"] in (MOOD if r["head"] == "toy_mood" else SENTIMENT)
    # routes that are compositions take the grouped path; heads still follow each route
    data.write_text('text,task\ngood film,"stack(toy_sentiment,toy_mood)"\nbad film,toy_sentiment\n')
    out = rows(infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "--input", str(data),
                     "--route-column", "task"))
    assert [r["head"] for r in out] == ["toy_mood", "toy_sentiment"]


def test_parallel_gives_one_answer_per_member(trained, tmp_path) -> None:
    out = rows(infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "--active",
                     "parallel(toy_sentiment,toy_mood)", "good film", "awful plot"))
    assert len(out) == 2
    for r in out:
        assert set(r["members"]) == {"toy_sentiment", "toy_mood"}
        assert r["members"]["toy_sentiment"]["label"] in SENTIMENT
        assert r["members"]["toy_mood"]["label"] in MOOD
    target = tmp_path / "p.csv"
    result = infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "--active", "parallel(toy_sentiment,toy_mood)",
                   "good film", "--output", str(target))
    assert result.exit_code == 0, result.stderr
    header = target.read_text().splitlines()[0].split(",")
    assert {"toy_sentiment.label", "toy_mood.label", "toy_sentiment.score"} <= set(header)


def test_no_fitting_head_is_one_line(trained, tmp_path) -> None:
    bare = tmp_path / "bare"
    result = runner.invoke(app, ["add", "pfeiffer", "--model", trained["model"], "--save", str(bare), "--name", "x"])
    assert result.exit_code == 0, result.stderr
    line = one_line_error(infer(trained, "-a", "toy_sentiment", "-a", str(bare), "--active", "x", "good"))
    assert "no head fits x" in line and "toy_sentiment" in line


def test_a_loaded_fusion_is_the_default_composition(trained) -> None:
    out = rows(infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "-f", "toy_sentiment-fusion", "good film"))
    assert out[0]["active"] == "fuse(toy_sentiment,toy_mood)"
    assert out[0]["head"] == "toy_sentiment-fusion" and out[0]["label"] in SENTIMENT
    # the fusion's head did not replace the target adapter's own head
    out = rows(infer(trained, "-a", "toy_sentiment", "-a", "toy_mood", "-f", "toy_sentiment-fusion",
                     "--active", "toy_sentiment", "good film"))
    assert out[0]["head"] == "toy_sentiment"


def test_pair_heads_take_pairs(trained) -> None:
    out = rows(infer(trained, "-a", "toy_match", "--pair", "good film", "great plot", "bad film", "fun movie"))
    assert [(r["text"], r["pair"]) for r in out] == [("good film", "great plot"), ("bad film", "fun movie")]
    assert {r["label"] for r in out} <= MATCH
    line = one_line_error(infer(trained, "-a", "toy_match", "good film", "great plot"))
    assert "trained on text pairs" in line and "--pair" in line
    assert len(rows(infer(trained, "-a", "toy_match", "--allow-single", "good film"))) == 1
    assert "even number" in one_line_error(infer(trained, "-a", "toy_match", "--pair", "a", "b", "c"))


def test_the_next_hint_uses_the_input_form_of_the_task(trained) -> None:
    result = runner.invoke(app, ["train", "--task", trained["tasks"]["toy_match"], "--model", trained["model"],
                                 "seed=7", *QUICK])
    assert result.exit_code == 0, result.stderr
    assert "--pair" in result.stdout.splitlines()[-1]


def test_short_names_resolve_to_the_newest_adapter(trained) -> None:
    """A head baseline and a rerun of the same task no longer make the bare task name ambiguous."""
    task, model = trained["tasks"]["toy_mood"], trained["model"]
    for extra in (["--method", "head"], ["seed=3"]):
        result = runner.invoke(app, ["train", "--task", task, "--model", model, *extra, *QUICK])
        assert result.exit_code == 0, result.stderr
    ids = {e["id"] for e in json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)}
    assert {"toy_mood-pfeiffer-s42", "toy_mood-pfeiffer-s3", "toy_mood-head-s42", "toy_sentiment-fusion-s42"} <= ids
    assert Path("runs/toy_sentiment-fusion-s42").is_dir()  # run directory and cache id are the same name
    from adapter_cli import cache
    from adapter_cli.defaults import model_id

    mid = model_id(model)
    assert cache.find("toy_mood", mid, "adapter").id == "toy_mood-pfeiffer-s3"  # the newest adapter
    assert cache.find("toy_mood-pfeiffer", mid).id == "toy_mood-pfeiffer-s3"
    assert cache.find("toy_mood-head", mid).id == "toy_mood-head-s42"
    assert cache.find("toy_sentiment-fusion", mid).id == "toy_sentiment-fusion-s42"
    assert rows(infer(trained, "-a", "toy_mood", "good"))[0]["label"] in MOOD


def test_full_runs_keep_their_tokenizer(trained) -> None:
    task, model = trained["tasks"]["toy_sentiment"], trained["model"]
    result = runner.invoke(app, ["train", "--task", task, "--model", model, "--method", "full", "--json", *QUICK])
    assert result.exit_code == 0, result.stderr
    best = Path(json.loads(result.stdout)["run_dir"]) / "best"
    out = rows(runner.invoke(app, ["infer", "-m", str(best), "--head", str(best), "good great fun", "bad awful sad"]))
    assert out[0]["score"] != out[1]["score"]  # words are read, not all mapped to [UNK]


def test_a_model_without_its_tokenizer_is_refused(trained, tmp_path) -> None:
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(Path(trained["model"]) / f, bare / f)
    line = one_line_error(infer({"model": str(bare)}, "-a", "toy_sentiment", "good"))
    assert "tokenizer" in line
    result = runner.invoke(app, ["train", "--task", trained["tasks"]["toy_sentiment"], "--model", str(bare),
                                 "--run-dir", str(tmp_path / "run"), *QUICK])
    assert "tokenizer" in one_line_error(result)
    assert not (tmp_path / "run").exists()
