"""``adapt train --method head`` on features encoded once: the run directory, the summary, the cache entry,
progress on stderr, and resume after SIGKILL (the features are recomputed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import ROOT, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=3", "batch_size=16", "learning_rate=5e-3", "save_every_steps=2", "log_every_steps=2", "patience=null"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return {"model": str(save_tiny_model(tmp_path / "tiny")), "task": str(write_sentiment_task(tmp_path / "task")),
            "root": tmp_path}


def _run(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    final = json.loads((run / "final_metrics.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["trainable"]
    return {"best": final["best"], "steps": final["steps"], "records": records}, weights


def test_head_only_run_writes_everything_and_reports_progress(env) -> None:
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--method", "head",
                                 "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["head_features"]["train"] == 96 and summary["head_features"]["eval"] == 48
    run = Path(summary["run_dir"])
    assert run == Path("runs/toy_sentiment-head-s42")
    for name in ("recipe.yaml", "run.json", "environment.json", "subset.json", "metrics.jsonl",
                 "final_metrics.json", "checkpoint.pt", "best/head_config.json"):
        assert (run / name).is_file(), name
    records, _ = _run(run)
    assert [r["epoch"] for r in records["records"] if r["type"] == "eval"] == [1, 2, 3]
    assert any(r["type"] == "train" and "loss" in r for r in records["records"])
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert summary["cache"]["id"] == "toy_sentiment-head-s42"
    assert "encoding 96 training and 48 dev examples once" in result.stderr
    assert result.stderr.count("toy_sentiment head: epoch") == 3
    listed = json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)
    assert [(e["id"], e["metrics"]) for e in listed] == [("toy_sentiment-head-s42", summary["best"]["metrics"])]


def test_head_only_resume_after_a_kill_reaches_the_same_result(env) -> None:
    args = ["--task", env["task"], "--model", env["model"], "--method", "head", "--quiet", "--no-cache", *FAST]
    base = [sys.executable, "-m", "adapter_cli", "train"]
    subprocess.run(base + args + ["--run-dir", "whole"], check=True, cwd=env["root"], capture_output=True)
    killer = [sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "9", "train"]
    killed = subprocess.run(killer + args + ["--run-dir", "killed"], cwd=env["root"], capture_output=True)
    assert killed.returncode == -9
    state = torch.load(Path(env["root"]) / "killed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 8 and state["epoch"] == 1  # mid-epoch 2: the steps after it were lost
    resumed = subprocess.run(base + ["--resume", "--run-dir", "killed", "--json", "--quiet"], cwd=env["root"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["head_features"]["train"] == 96  # recomputed by the resumed process
    whole, w1 = _run(Path(env["root"]) / "whole")
    again, w2 = _run(Path(env["root"]) / "killed")
    assert whole == again
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
