"""The compiled mode from the command line: ``adapt infer --compile`` answers as the eager run, a training
run with ``compile=true`` completes and says so, and where inductor cannot build the user gets one line
(``--compile``, ``compile=true``) or a warning and eager (``--compile-auto``, ``compile=auto``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from adapter_cli.compiled import blocker
from conftest import one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
TEXTS = ["good fine day", "bad awful day", "the film was good", "awful"]
FAST = ["epochs=1", "batch_size=16", "save_every_steps=100", "log_every_steps=100", "max_train_samples=32",
        "max_eval_samples=16"]
compiler = pytest.mark.skipif(blocker(torch.device("cpu")) is not None, reason="inductor cannot build here")


@pytest.fixture
def env(tmp_path, monkeypatch):
    from adapter_cli import AdapterModel

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model_dir = save_tiny_model(tmp_path / "tiny")
    m = AdapterModel.from_pretrained(model_dir)
    m.add_adapter("s", "pfeiffer")
    m.add_head("s", num_labels=2, label2id={"neg": 0, "pos": 1})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(m.adapters.parameters()) + list(m.heads.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    m.save_adapter(tmp_path / "s", "s")
    return {"model": str(model_dir), "adapter": str(tmp_path / "s"), "root": tmp_path,
            "task": str(write_sentiment_task(tmp_path / "task"))}


def _infer(env, *flags: str) -> list[dict]:
    result = runner.invoke(app, ["infer", "-m", env["model"], "-a", env["adapter"], *flags, *TEXTS])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _scores(rows: list[dict]) -> list[float]:
    return [row["score"] for row in rows]


@compiler
def test_infer_compiled_answers_as_eager(env) -> None:
    eager, compiled = _infer(env), _infer(env, "--compile")
    assert [r["label"] for r in compiled] == [r["label"] for r in eager]
    assert _scores(compiled) == pytest.approx(_scores(eager), abs=1e-5)
    assert len(set(_scores(eager))) > 1  # the adapter and head make the rows differ


def test_infer_compile_without_a_compiler_is_one_line(env, no_compiler) -> None:
    result = runner.invoke(app, ["infer", "-m", env["model"], "-a", env["adapter"], "--compile", *TEXTS])
    line = one_line_error(result)
    assert "needs a C++ compiler" in line and "--compile-auto" in line


def test_infer_compile_auto_without_a_compiler_runs_eagerly(env, no_compiler) -> None:
    eager = _infer(env)
    result = runner.invoke(app, ["infer", "-m", env["model"], "-a", env["adapter"], "--compile-auto", *TEXTS])
    assert result.exit_code == 0, result.stderr
    assert "--compile-auto: torch.compile needs a C++ compiler" in result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == eager


def _train(env, *overrides: str):
    return runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--json", "--quiet",
                               *FAST, *overrides])


@pytest.mark.parametrize("value, fixture", [("maybe", None), ("true", "no_compiler")])
def test_bad_compile_setting_leaves_nothing_behind(env, value, fixture, request) -> None:
    if fixture:
        request.getfixturevalue(fixture)
    line = one_line_error(_train(env, f"compile={value}"))
    assert "compile" in line
    assert not Path("runs").exists() and not (Path(env["root"]) / "cache").exists()


@compiler
def test_training_compiled_completes_and_says_so(env) -> None:
    result = _train(env, "compile=true")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["compiled"] is True
    assert 0.0 <= summary["best"]["metrics"]["accuracy"] <= 1.0
    recipe = (Path(summary["run_dir"]) / "recipe.yaml").read_text()
    assert "compile: true" in recipe
