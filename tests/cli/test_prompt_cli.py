"""Prompt tuning from the command line: `adapt add` counts it, `adapt train --config prompt_tuning` trains it end
to end on a tiny model (a classification task and masked language modelling, whose labels get the prompt's
positions ignored), `adapt infer` uses it from the cache; a prompt of length 0 is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import FILLER, WORDS_NEG, WORDS_POS, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=2", "batch_size=16", "max_length=24", "learning_rate=5e-2", "save_every_steps=2",
        "log_every_steps=2", "patience=null"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    words = FILLER + WORDS_POS + WORDS_NEG
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "\n"
                                              for _ in range(60)))
    return {"model": str(save_tiny_model(tmp_path / "tiny")), "corpus": str(corpus), "root": tmp_path,
            "task": str(write_sentiment_task(tmp_path / "task", 48, 24))}


def test_add_reports_the_prompts_parameters(env) -> None:
    out = runner.invoke(app, ["add", "prompt_tuning", "--hidden-size", "768", "--num-layers", "12", "--json"])
    assert out.exit_code == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["method"] == "prompt_tuning" and result["parameters"] == 7680  # 10 x 768, as AdapterHub counts
    assert result["placements"] == [{"location": "embeddings", "layers": [], "prompt_length": 10,
                                     "parameters": 7680}]
    out = runner.invoke(app, ["add", "prompt_tuning", "prompt_length=4", "--model", env["model"], "--save", "pt"])
    assert out.exit_code == 0, out.stderr
    assert "prompt length" in out.stdout and "total: " in out.stdout
    inspected = runner.invoke(app, ["inspect", "pt", "--json"])
    assert inspected.exit_code == 0, inspected.stderr
    assert json.loads(inspected.stdout)["config"]["prompt_length"] == 4


@pytest.mark.parametrize("args", [["prompt_length=0"], ["prompt_length=-3"], ["combine=suffix"],
                                  ["prompt_init=from_string"]])
def test_bad_prompt_configs_are_one_line_and_write_nothing(env, args) -> None:
    before = sorted(p.name for p in Path(".").iterdir())
    line = one_line_error(runner.invoke(app, ["add", "prompt_tuning", *args, "--model", env["model"], "--save", "x"]))
    assert "prompt" in line or "combine" in line
    line = one_line_error(runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config",
                                              "prompt_tuning", *args, "--quiet", *FAST]))
    assert sorted(p.name for p in Path(".").iterdir()) == before
    assert not Path("runs").exists() and not Path("cache").exists()


def test_train_a_prompt_end_to_end_and_infer_with_it(env) -> None:
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config", "prompt_tuning",
                                 "--quiet", "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    run = Path(summary["run_dir"])
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["method"] == "prompt_tuning" and config["config"]["prompt_length"] == 10
    out = runner.invoke(app, ["infer", "-m", env["model"], "-a", summary["cache"]["id"], "good film"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["label"] in ("neg", "pos")


def test_masked_language_modelling_with_a_prompt(env) -> None:
    """The MLM labels get prompt_length ignored positions where the prompt sits (in front, for combine: prefix)."""
    result = runner.invoke(app, ["train", "--task", "mlm", "--data-dir", env["corpus"], "--config",
                                 "prompt_tuning[prompt_length=3]", "--model", env["model"], "--language", "en",
                                 "--json", "--quiet", *FAST])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["main_metric"] == "perplexity"
    assert 1.0 < summary["best"]["metrics"]["perplexity"] < 1e6
