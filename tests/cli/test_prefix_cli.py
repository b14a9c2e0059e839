"""Prefix tuning and config unions from the command line: `adapt add` counts them as AdapterHub does,
`adapt train` trains a prefix end to end on a tiny model and `adapt infer` answers with it; `--flat` runs of
`adapt extract` cache the prefix without its MLP; a prefix of length 0 or a broken union is one line, exit 2,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=2", "batch_size=16", "max_length=24", "learning_rate=5e-2", "save_every_steps=2",
        "log_every_steps=2", "patience=null"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return {"model": str(save_tiny_model(tmp_path / "tiny")), "root": tmp_path,
            "task": str(write_sentiment_task(tmp_path / "task", 48, 24))}


@pytest.mark.parametrize("preset,total", [("prefix_tuning", 9_872_384), ("prefix_tuning_flat", 552_960),
                                          ("mam", 22_493_984)])
def test_add_counts_as_adapterhub(env, preset, total) -> None:
    out = runner.invoke(app, ["add", preset, "--hidden-size", "768", "--num-layers", "12", "--json"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["parameters"] == total  # adapters 1.3.0's adapter_summary (fixtures)


def test_train_a_prefix_then_infer_with_it(env) -> None:
    out = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config", "prefix_tuning",
                              "prefix_length=4", "bottleneck_size=16", "--run-dir", "run", "--json", "--quiet", *FAST])
    assert out.exit_code == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["best"]["metrics"]
    cfg = json.loads((Path("run") / "best" / "adapter_config.json").read_text())
    assert cfg["method"] == "prefix_tuning" and cfg["config"]["flat"] is False
    flat = runner.invoke(app, ["extract", "run", "--flat", "--json"])
    assert flat.exit_code == 0, flat.stderr
    entry = json.loads(flat.stdout)
    cached = json.loads((Path(entry["path"]) / "adapter_config.json").read_text())
    assert cached["config"]["flat"] is True and cached["method"] == "prefix_tuning"
    infer = runner.invoke(app, ["infer", "good movie", "--model", env["model"], "-a", entry["path"]])
    assert infer.exit_code == 0, infer.stderr
    inspected = runner.invoke(app, ["inspect", entry["path"], "--json"])
    assert inspected.exit_code == 0, inspected.stderr


@pytest.mark.parametrize("preset,args,says", [
    ("prefix_tuning", ["prefix_length=0"], "prefix_length"),
    ("prefix_tuning", ["bottleneck_size=0"], "bottleneck_size"),
    ("prefix_tuning", ["non_linearity=wobble"], "non_linearity"),
    ("mam", ["wobble=3"], "wobble"),
])
def test_bad_configs_are_one_line_and_write_nothing(env, preset, args, says) -> None:
    before = sorted(p.name for p in Path(".").iterdir())
    line = one_line_error(runner.invoke(app, ["add", preset, *args, "--model", env["model"], "--save", "x"]))
    assert says in line
    line = one_line_error(runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config",
                                              preset, *args, "--quiet", *FAST]))
    assert says in line
    assert sorted(p.name for p in Path(".").iterdir()) == before


def test_a_union_run_extracts_flat_and_a_bottleneck_run_is_refused(env) -> None:
    out = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config", "mam",
                              "prefix_length=3", "--run-dir", "mam", "--quiet", "--no-cache", *FAST])
    assert out.exit_code == 0, out.stderr
    flat = runner.invoke(app, ["extract", "mam", "--flat", "--json"])
    assert flat.exit_code == 0, flat.stderr
    cached = json.loads((Path(json.loads(flat.stdout)["path"]) / "adapter_config.json").read_text())
    prefix = next(c for c in cached["config"]["configs"] if c["architecture"] == "prefix_tuning")
    assert prefix["flat"] is True
    out = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--config", "pfeiffer",
                              "--run-dir", "pf", "--quiet", "--no-cache", *FAST])
    assert out.exit_code == 0, out.stderr
    assert "only an adapter with a prefix" in one_line_error(runner.invoke(app, ["extract", "pf", "--flat"]))
