"""Run directories tell the truth about their state: a killed run says so, a run in use is not entered
twice, and `--no-cache` given at the start still holds on `--resume`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=2", "batch_size=16", "learning_rate=5e-3", "save_every_steps=2", "patience=null", "max_length=32"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return {"model": str(save_tiny_model(tmp_path / "tiny")), "task": str(write_sentiment_task(tmp_path / "task")),
            "root": tmp_path}


def _status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


def test_a_killed_run_is_marked_killed_and_resume_keeps_no_cache(env) -> None:
    args = ["--task", env["task"], "--model", env["model"], "--quiet", "--no-cache", "--run-dir", "killed", *FAST]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "3", "train", *args],
                            cwd=env["root"], capture_output=True)
    assert killed.returncode == -9
    run = env["root"] / "killed"
    assert _status(run) == "running"  # nothing could write otherwise
    line = one_line_error(runner.invoke(app, ["extract", str(run)]))
    assert "status: killed" in line and _status(run) == "killed"
    result = runner.invoke(app, ["train", "--resume", "--run-dir", "killed", "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "cache" not in json.loads(result.stdout)  # --no-cache from the start still holds
    assert _status(run) == "completed"
    assert json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) == []


def test_a_run_directory_in_use_is_not_entered_twice(env) -> None:
    from adapter_cli.runs import lock_run

    args = ["--task", env["task"], "--model", env["model"], "--quiet", *FAST]
    assert runner.invoke(app, ["train", *args, "--run-dir", "busy", "--no-cache"]).exit_code == 0
    run = env["root"] / "busy"
    before = sorted(p.name for p in run.iterdir())
    held = lock_run(run)  # another process training in it, as far as adapt can tell
    try:
        assert "in use" in one_line_error(runner.invoke(app, ["train", "--resume", "--run-dir", "busy", "--quiet"]))
        assert "in use" in one_line_error(runner.invoke(app, ["train", *args, "--run-dir", "busy", "--overwrite"]))
    finally:
        held.close()
    assert sorted(p.name for p in run.iterdir()) == before and _status(run) == "completed"


def test_run_dir_naming_a_file_is_one_line(env) -> None:
    Path("afile").write_text("x")
    line = one_line_error(runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"],
                                              "--run-dir", "afile", *FAST]))
    assert "is a file" in line and Path("afile").read_text() == "x"


def test_epoch_lines_name_their_task(env) -> None:
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--no-cache", *FAST])
    assert result.exit_code == 0, result.stderr
    epochs = [line for line in result.stderr.splitlines() if "epoch" in line]
    assert epochs and all(line.startswith("toy_sentiment adapter: epoch ") for line in epochs), epochs


def test_resuming_a_finished_run_trains_nothing(env) -> None:
    args = ["--task", env["task"], "--model", env["model"], "--quiet", "--run-dir", "done", *FAST]
    first = runner.invoke(app, ["train", *args, "--json"])
    assert first.exit_code == 0, first.stderr
    before = (env["root"] / "done" / "final_metrics.json").read_text()
    again = runner.invoke(app, ["train", "--resume", "--run-dir", "done", "--json"])
    assert again.exit_code == 0, again.stderr
    assert "already complete" in again.stderr
    assert (env["root"] / "done" / "final_metrics.json").read_text() == before  # no epoch was added
    assert json.loads(again.stdout)["cache"]["id"] == json.loads(first.stdout)["cache"]["id"]
