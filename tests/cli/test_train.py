"""``adapt train`` / ``extract`` / ``cache`` / ``recipes`` on a tiny model and a generated task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=3", "batch_size=16", "learning_rate=5e-3", "save_every_steps=2", "log_every_steps=2", "patience=null"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model = save_tiny_model(tmp_path / "tiny")
    task = write_sentiment_task(tmp_path / "task")
    return {"model": str(model), "task": str(task), "root": tmp_path}


def train(env, *args: str):
    return runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--quiet", *args])




def test_train_writes_a_complete_run_and_caches_it(env) -> None:
    result = train(env, "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    run = Path(summary["run_dir"])
    assert run == Path("runs/toy_sentiment-pfeiffer-s42")
    for name in ("recipe.yaml", "run.json", "environment.json", "metrics.jsonl", "final_metrics.json",
                 "checkpoint.pt", "best/adapter_config.json", "best/head_config.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [1, 2, 3]
    assert any(r["type"] == "train" and "loss" in r for r in records)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert 0.0 <= summary["best"]["metrics"]["accuracy"] <= 1.0  # learning itself: see the full/real-data tests
    listed = json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)
    assert [e["id"] for e in listed] == ["toy_sentiment-pfeiffer-s42"]
    assert listed[0]["task"] == "toy_sentiment" and listed[0]["metrics"] == summary["best"]["metrics"]
    # the cached adapter is usable by name
    out = runner.invoke(app, ["infer", "-m", env["model"], "-a", "toy_sentiment", "good film"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["label"] in ("neg", "pos")


def test_same_seed_same_result_and_rerun_from_recipe(env) -> None:
    a = json.loads(train(env, "--json", "--run-dir", "a", *FAST).stdout)
    b = json.loads(runner.invoke(app, ["train", "--recipe", "a/recipe.yaml", "--run-dir", "b", "--quiet",
                                       "--json", "--no-cache"]).stdout)
    assert a["best"] == b["best"]
    wa = torch.load(Path("a/checkpoint.pt"), weights_only=True)["trainable"]
    wb = torch.load(Path("b/checkpoint.pt"), weights_only=True)["trainable"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert train(env, "--json", "--run-dir", "c", "seed=7", "--no-cache", *FAST).exit_code == 0
    wc = torch.load(Path("c/checkpoint.pt"), weights_only=True)["trainable"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_baselines_full_and_head(env) -> None:
    # a random tiny encoder needs ~100 steps before the sentiment word dominates
    full = json.loads(train(env, "--json", "--method", "full", "--run-dir", "full", *FAST, "epochs=25",
                            "learning_rate=3e-3").stdout)
    head = json.loads(train(env, "--json", "--method", "head", "--run-dir", "head", *FAST).stdout)
    assert "cache" not in full and (Path("full/best/model.safetensors")).is_file()
    assert head["cache"]["id"] == "head"
    assert full["best"]["metrics"]["accuracy"] >= 0.8  # the toy task is learnable when the encoder trains


def test_early_stopping(env) -> None:
    summary = json.loads(train(env, "--json", "epochs=10", "patience=2", "learning_rate=0", "--no-cache").stdout)
    assert summary["stopped_early"] and summary["epochs_run"] == 3


def test_min_steps_extends_small_training_sets_and_holds_off_early_stopping(env) -> None:
    """96 examples at batch 16: 6 steps an epoch. min_steps=20 makes 2 epochs into 4 (24 steps); with nothing
    to learn (lr 0) and patience 1, the run still reaches 20 steps before it may stop."""
    summary = json.loads(train(env, "--json", "epochs=2", "min_steps=20", "batch_size=16", "patience=null",
                               "--no-cache").stdout)
    assert summary["epochs_run"] == 4 and summary["steps"] == 24
    held = json.loads(train(env, "--json", "epochs=2", "min_steps=20", "batch_size=16", "patience=1",
                            "learning_rate=0", "--no-cache", "--run-dir", "held").stdout)
    assert held["stopped_early"] and held["steps"] == 24  # the first stop allowed: the end of the 4th epoch
    large = json.loads(train(env, "--json", "epochs=2", "min_steps=5", "batch_size=16", "patience=null",
                             "--no-cache", "--run-dir", "large").stdout)
    assert large["epochs_run"] == 2  # enough steps already
    other = write_sentiment_task(env["root"] / "other", seed=1)
    other.write_text(other.read_text().replace("toy_sentiment", "toy_two"))
    refused = runner.invoke(app, ["train", "--method", "multitask", "--tasks", f"{env['task']},{other}",
                                  "--model", env["model"], "min_steps=5"])
    assert refused.exit_code == 2 and "min_steps is not for method multitask" in one_line_error(refused)


def _final(run: Path) -> tuple[dict, dict]:
    final = json.loads((run / "final_metrics.json").read_text())
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["trainable"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"best": final["best"], "steps": final["steps"], "evals": evals}, weights


def test_resume_after_a_kill_reaches_the_same_result(env) -> None:
    """A run killed with SIGKILL between checkpoints, then resumed, ends exactly like an uninterrupted one."""
    args = ["--task", env["task"], "--model", env["model"], "--quiet", "--no-cache", *FAST, "max_length=32"]
    base = [sys.executable, "-m", "adapter_cli", "train"]
    subprocess.run(base + args + ["--run-dir", "whole"], check=True, cwd=env["root"], capture_output=True)
    killer = [sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "7", "train"]
    killed = subprocess.run(killer + args + ["--run-dir", "killed"], cwd=env["root"], capture_output=True)
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    state = torch.load(Path(env["root"]) / "killed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["epoch"] == 1  # mid-epoch checkpoint, steps after it were lost
    subprocess.run(base + ["--resume", "--run-dir", "killed", "--quiet"], check=True, cwd=env["root"],
                   capture_output=True)
    whole, w1 = _final(Path(env["root"]) / "whole")
    resumed, w2 = _final(Path(env["root"]) / "killed")
    assert whole == resumed
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("grouped", [False, True])
def test_resume_via_the_api_stop_hook(env, tmp_path, grouped) -> None:
    from adapter_cli.training.loop import train as run
    from adapter_cli.training.recipe import Recipe

    recipe = Recipe(task=env["task"], model=env["model"], epochs=2, batch_size=16, learning_rate=5e-3,
                    save_every_steps=1, patience=None, group_by_length=grouped)
    run(recipe, tmp_path / "whole")
    assert run(recipe, tmp_path / "part", stop_after_steps=5)["status"] == "stopped"
    run(recipe, tmp_path / "part", resume=True)
    assert _final(tmp_path / "whole")[0] == _final(tmp_path / "part")[0]


def test_data_parallel_with_two_processes(env) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "adapter_cli",
                             "train", "--task", env["task"], "--model", env["model"], "--quiet", "--json",
                             "--run-dir", "ddp", "--no-cache", "epochs=2", "batch_size=8", "device=cpu"],
                            cwd=env["root"], capture_output=True, text=True, timeout=300)
    # a failing rank's own words come before torchrun's long summary of the failure
    assert result.returncode == 0, result.stderr[:4000] + "\n[...]\n" + result.stderr[-1500:]
    environment = json.loads((Path(env["root"]) / "ddp" / "environment.json").read_text())
    assert environment["world_size"] == 2
    final = json.loads((Path(env["root"]) / "ddp" / "final_metrics.json").read_text())
    assert final["steps"] == 2 * 6  # 96 examples / (8 per process x 2 processes) per epoch


@pytest.mark.parametrize("group_before", [False, True])
def test_a_run_ends_the_process_group_it_started(env, tmp_path, monkeypatch, group_before) -> None:
    """Left to the interpreter's exit, gloo's threads can abort the process (SIGABRT after a good run, seen
    in CI): a run ends the group it started, and leaves alone one the caller's own code started. Two
    processes are stood in for by a one-process group under WORLD_SIZE=2 (the run trains rank 0's half)."""
    import torch.distributed as dist

    from adapter_cli.training.loop import train as run
    from adapter_cli.training.recipe import Recipe

    real_init = dist.init_process_group

    def one_process_group(backend: str) -> None:
        real_init(backend, store=dist.HashStore(), rank=0, world_size=1)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", one_process_group)
    if group_before:
        one_process_group("gloo")
    try:
        recipe = Recipe(task=env["task"], model=env["model"], epochs=1, batch_size=16, patience=None)
        assert run(recipe, tmp_path / "run")["steps"] == 3  # 96 examples / 2 processes / 16 per batch
        assert dist.is_initialized() == group_before
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("args, message", [
    (["--task", "mrpcc"], "did you mean 'mrpc'"),
    (["--config", "pfeifer"], "did you mean 'pfeiffer'"),
    (["learnig_rate=1"], "did you mean 'learning_rate'"),
    (["epochs=zero"], "epochs must be a positive integer"),
    (["--recipe", "nosuch"], "no recipe"),
    (["--name", "a.b"], "invalid adapter name"),
    (["frozen_dtype=int8"], "frozen_dtype must be one of"),
    (["precision=fp32", "frozen_dtype=bf16"], "needs precision=bf16"),
    pytest.param(["device=cuda"], "no usable CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_training_input(env, args, message) -> None:
    argv = ["train", "--model", env["model"], "--quiet", *args]
    if "--task" not in args:
        argv += ["--task", env["task"]]
    assert message in one_line_error(runner.invoke(app, argv))
    assert not Path("runs").exists() and not (env["root"] / "cache").exists()


def test_bad_data(env) -> None:
    root = env["root"]
    (root / "task" / "dev.csv").write_text("text,label\nfine,positive\n")
    assert "outside the label set" in one_line_error(train(env))
    (root / "task" / "dev.csv").write_text("")
    assert "is empty" in one_line_error(train(env))
    (root / "task" / "dev.csv").unlink()
    assert "no eval file dev.csv" in one_line_error(train(env))
    (root / "task" / "dev.csv").write_text("sentence,label\nfine,pos\n")
    assert "no column 'text'" in one_line_error(train(env))
    (root / "bad.yaml").write_text("epochs: [1\n")
    assert "not valid YAML" in one_line_error(train(env, "--recipe", str(root / "bad.yaml")))
    assert not Path("runs").exists() and not (root / "cache").exists()


def test_glue_dir_without_split(env, tmp_path) -> None:
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    result = runner.invoke(app, ["train", "--task", "rte", "--data-dir", str(tmp_path / "RTE"), "--model",
                                 env["model"], "--quiet"])
    assert "no eval file dev.tsv" in one_line_error(result)


def test_existing_run_dir_and_resume_misuse(env) -> None:
    assert train(env, "--run-dir", "r", "--no-cache", *FAST).exit_code == 0
    assert "already exists" in one_line_error(train(env, "--run-dir", "r"))
    assert "drop --task" in one_line_error(train(env, "--run-dir", "r", "--resume"))
    assert "needs --run-dir" in one_line_error(runner.invoke(app, ["train", "--resume"]))


def test_cache_lookup_errors(env) -> None:
    assert train(env, "--run-dir", "one", *FAST).exit_code == 0
    assert train(env, "--run-dir", "two", "seed=3", *FAST).exit_code == 0
    # a task name matching two runs means the newest one (ids in `adapt cache ls`), not an error
    from adapter_cli import cache
    from adapter_cli.defaults import model_id

    assert cache.find("toy_sentiment", model_id(env["model"])).id == "two"
    assert runner.invoke(app, ["infer", "-m", env["model"], "-a", "toy_sentiment", "x"]).exit_code == 0
    assert "no cached adapter 'nope'" in one_line_error(runner.invoke(app, ["infer", "-m", env["model"], "-a",
                                                                            "nope", "x"]))
    other = save_tiny_model(env["root"] / "other", seed=5)
    (other / "config.json").write_text((other / "config.json").read_text().replace('"hidden_act"', '"foo": 1, "hidden_act"'))
    wrong = runner.invoke(app, ["infer", "-m", str(other), "-a", "one", "x"])
    assert "trained on another base model" in one_line_error(wrong)


def test_cache_path_rm_and_recipes(env) -> None:
    assert train(env, "--run-dir", "one", *FAST).exit_code == 0
    path = runner.invoke(app, ["cache", "path", "one", "--model", env["model"]]).stdout.strip()
    assert Path(path).is_dir()
    assert "would remove one" in runner.invoke(app, ["cache", "rm", "one", "--dry-run"]).stdout
    assert "without --yes" in one_line_error(runner.invoke(app, ["cache", "rm", "one"]))
    assert runner.invoke(app, ["cache", "rm", "one", "--yes"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) == []
    kinds = {i["kind"] for i in json.loads(runner.invoke(app, ["recipes", "ls", "--json"]).stdout)}
    assert kinds == {"adapter", "train", "task"}
    assert "learning_rate" in runner.invoke(app, ["recipes", "show", "adapter"]).stdout
    assert runner.invoke(app, ["recipes", "cp", "adapter", "mine.yaml"]).exit_code == 0
    assert "exists" in one_line_error(runner.invoke(app, ["recipes", "cp", "adapter", "mine.yaml"]))


def test_offline_hub_task_says_what_was_needed(env, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = one_line_error(runner.invoke(app, ["train", "--task", "rte", "--model", env["model"], "--quiet"]))
    assert "nyu-mll/glue (rte)" in message and "HF_HUB_OFFLINE" in message and "--data-dir" in message
    assert not Path("runs").exists()


def test_gradient_checkpointing_trains_the_same_adapter(env) -> None:
    """Recomputing layers in the backward (less activation memory) changes nothing in what is learned."""
    a = json.loads(train(env, "--json", "--run-dir", "plain", "--no-cache", *FAST).stdout)
    b = json.loads(train(env, "--json", "--run-dir", "ckpt", "--no-cache", "gradient_checkpointing=true", *FAST).stdout)
    assert a["best"]["metrics"] == b["best"]["metrics"]
    wa = torch.load(Path("plain/checkpoint.pt"), weights_only=True)["trainable"]
    wb = torch.load(Path("ckpt/checkpoint.pt"), weights_only=True)["trainable"]
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_frozen_layers_in_bf16_learn_the_same_adapter(env) -> None:
    """Under bf16 autocast the frozen linear layers are stored in bf16 by default (frozen_dtype=auto):
    half their memory, and bit for bit the same training as keeping them in fp32."""
    a = json.loads(train(env, "--json", "--run-dir", "fp32", "--no-cache", "precision=bf16", "frozen_dtype=fp32",
                         *FAST).stdout)
    b = json.loads(train(env, "--json", "--run-dir", "bf16", "--no-cache", "precision=bf16", *FAST).stdout)
    assert a["best"]["metrics"] == b["best"]["metrics"]
    wa = torch.load(Path("fp32/checkpoint.pt"), weights_only=True)["trainable"]
    wb = torch.load(Path("bf16/checkpoint.pt"), weights_only=True)["trainable"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(v.dtype == torch.float32 for v in wb.values())  # what is trained stays fp32
