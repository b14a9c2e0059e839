"""Run directories under concurrent trainings, kills, and a full disk (issue 12, item 2): one training at
a time per run directory (the other stops before writing anything), run.json never says "completed"
before the cache entry is whole, no temporaries survive a kill, a resume logs no step twice, and a full
disk is one line (exit 1) after which `--resume` finishes the run."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from adapter_cli import cache
from adapter_cli.cli import app
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task

DRIVER = Path(__file__).with_name("fault_driver.py")
FAST = ["epochs=2", "batch_size=16", "learning_rate=5e-3", "save_every_steps=2", "log_every_steps=1",
        "patience=null", "max_length=32"]
runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model, task = save_tiny_model(tmp_path / "tiny"), write_sentiment_task(tmp_path / "task")
    return {"root": tmp_path, "train": ["train", "--task", str(task), "--model", str(model), "--quiet", *FAST]}


def driver(args: list[str]) -> list[str]:
    return [sys.executable, str(DRIVER), "cli", *args]


def sub_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file()}


def as_result(proc: subprocess.Popen | subprocess.CompletedProcess, out: str, err: str) -> SimpleNamespace:
    return SimpleNamespace(exit_code=proc.returncode, stdout=out, stderr=err)


def status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


def logged_steps(run: Path) -> list[tuple[str, int]]:
    return [(r["type"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def assert_one_history(run: Path) -> None:
    """metrics.jsonl as one uninterrupted training writes it: every step once, in order."""
    steps = logged_steps(run)
    train_steps = [s for kind, s in steps if kind == "train"]
    assert train_steps == list(range(1, len(train_steps) + 1)), steps
    assert [s for kind, s in steps if kind == "eval"] == sorted({s for kind, s in steps if kind == "eval"}), steps


@pytest.mark.parametrize("first", ["training", "finished"])
def test_two_trainings_into_one_run_directory(env, first) -> None:
    """Both pass the start checks while the directory is still empty; then one trains and the other stops
    with one line, exit 2, having written nothing -- whether it reaches the run while the first one
    trains in it, or after the first one has finished."""
    root, run = env["root"], env["root"] / "shared"
    args = [*env["train"], "--no-cache", "--run-dir", str(run)]
    go_b, go_a = root / "go-b", root / "go-a"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    checked = f"adapter_cli.cli.train:_fresh_run_dir:after:{go_b}"
    second = subprocess.Popen(driver(args), env=sub_env(FAULT_PAUSE=checked), **pipes)
    wait_for(Path(f"{go_b}.reached"), second)  # past its checks, the directory still absent
    if first == "training":  # the first one holds the run, paused before its first evaluation
        pause = f"adapter_cli.training.loop:evaluate:before:{go_a}"
        winner = subprocess.Popen(driver(args), env=sub_env(FAULT_PAUSE=pause), **pipes)
        wait_for(Path(f"{go_a}.reached"), winner)
    else:
        done = subprocess.run(driver(args), env=sub_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    before = snapshot(run)
    go_b.touch()
    out, err = second.communicate(timeout=300)
    line = one_line_error(as_result(second, out, err), 2)
    assert "another adapt process" in line, line
    assert snapshot(run) == before  # the second one wrote nothing into the run
    if first == "training":
        go_a.touch()
        out, err = winner.communicate(timeout=300)
        assert winner.returncode == 0, err
    assert status(run) == "completed"
    assert_one_history(run)


def test_resume_of_a_run_killed_before_its_first_checkpoint_logs_each_step_once(env) -> None:
    args = [*env["train"], "--no-cache", "--run-dir", "early", "save_every_steps=1000"]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "3", *args],
                            capture_output=True, env=sub_env())
    assert killed.returncode == -9
    run = env["root"] / "early"
    assert not (run / "checkpoint.pt").exists() and logged_steps(run) == [("train", 1), ("train", 2), ("train", 3)]
    result = runner.invoke(app, ["train", "--resume", "--run-dir", "early", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert_one_history(run)
    assert status(run) == "completed"


def test_a_kill_while_saving_best_leaves_no_temporary_after_resume(env) -> None:
    args = [*env["train"], "--no-cache", "--run-dir", "r"]
    killed = subprocess.run(driver(args), capture_output=True, text=True,
                            env=sub_env(FAULT_SCOPE="adapter_cli.training.loop:_save_best",
                                        FAULT_KILL_MATCH="replace:.best.tmp-"))  # complete, not yet in place
    assert killed.returncode == -9, killed.stderr
    run = env["root"] / "r"
    assert [p.name for p in run.glob(".best.tmp-*")], sorted(p.name for p in run.iterdir())  # what the kill left
    result = runner.invoke(app, ["train", "--resume", "--run-dir", "r", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in run.glob(".best*")) == [] and (run / "best" / "adapter_config.json").is_file()
    assert status(run) == "completed"


def test_a_kill_during_the_cache_write_at_the_end_of_training(env) -> None:
    """run.json says "completed" only once the cache entry is whole; a kill before leaves it "running"
    (then "killed"), no ghost in `adapt cache ls`, and `--resume` finishes both."""
    args = [*env["train"], "--run-dir", "end"]
    killed = subprocess.run(driver(args), capture_output=True, text=True,
                            env=sub_env(FAULT_KILL_MATCH="replace:"))  # the new version written, not yet in place
    assert killed.returncode == -9, killed.stderr
    run = env["root"] / "end"
    assert json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) == []
    from adapter_cli.runs import settle_status

    assert status(run) == "running" and settle_status(run) == "killed"  # as the next command finds it
    result = runner.invoke(app, ["train", "--resume", "--run-dir", "end", "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cache"]["id"] == "end" and status(run) == "completed"
    [entry] = cache.entries()
    cache.verify(entry)
    assert entry.id == "end" and sorted(p.name for p in entry.path.parent.iterdir()) == [".store", "end"]
    store = entry.path.parent / ".store" / "end"
    assert sorted(p.name for p in store.iterdir()) == [".lock", entry.path.resolve().name]


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))  # the run's small files fit, a checkpoint not


def test_a_full_disk_is_one_line_and_resume_finishes(env) -> None:
    full = subprocess.run([sys.executable, "-m", "adapter_cli", *env["train"], "--run-dir", "tight"],
                          capture_output=True, text=True, env=sub_env(), preexec_fn=_file_size_limit)
    line = one_line_error(as_result(full, full.stdout, full.stderr), 1)
    assert "File too large" in line and "--resume" in line, line
    run = env["root"] / "tight"
    assert status(run) == "failed"
    result = runner.invoke(app, ["train", "--resume", "--run-dir", "tight", "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    assert status(run) == "completed" and json.loads(result.stdout)["cache"]["id"] == "tight"
    assert_one_history(run)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]
