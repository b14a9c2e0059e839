"""``adapt fuse``: AdapterFusion training over cached or directory adapters, and its bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import (assert_resume_after_sigkill_is_exact, one_line_error, sandbox, save_tiny_model, tiny_model,
                      write_sentiment_task)

runner = CliRunner()
FAST = ["epochs=2", "batch_size=16", "learning_rate=5e-3", "patience=null", "min_steps=null"]




@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a task, and three cached adapters: two Pfeiffer (a, b) and one Houlsby (h)."""
    with sandbox(tmp_path_factory, "fuse") as root:
        model = str(save_tiny_model(root / "tiny"))
        task = str(write_sentiment_task(root / "task"))
        for name, config in (("a", "pfeiffer"), ("b", "pfeiffer"), ("h", "houlsby")):
            result = runner.invoke(app, ["train", "--task", task, "--model", model, "--name", name, "--config", config,
                                         "--run-dir", f"r-{name}", "--quiet", *FAST])
            assert result.exit_code == 0, result.stderr
        yield {"root": root, "model": model, "task": task}


@pytest.fixture(scope="module")
def fused(world):
    """A fusion of a and b trained on the task: run fz, cached as fz, exported to fz-ah."""
    result = runner.invoke(app, ["fuse", "a", "b", "--target", world["task"], "--model", world["model"], "--quiet",
                                 "--json", "--run-dir", "fz", "--export-adapterhub", "fz-ah", *FAST])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_fuse_trains_caches_and_infers(world, fused) -> None:
    summary = fused
    assert summary["method"] == "fusion"
    recorded = summary["fusion_member_runs"]  # for adapt results: where each member was trained
    assert [(r["run_dir"], r["name"]) for r in recorded] == [(str(Path(f"r-{m}").resolve()), f"r-{m}") for m in "ab"]
    assert [r["started"] for r in recorded] == [json.loads(Path(f"r-{m}/run.json").read_text())["started"]
                                                for m in "ab"]
    assert (Path("fz/best/fusion_config.json")).is_file() and (Path("fz/best/head_config.json")).is_file()
    entry = next(e for e in json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) if e["id"] == "fz")
    assert entry["kind"] == "fusion" and entry["task"] == "toy_sentiment"
    cached = json.loads((Path(entry["path"]) / "entry.json").read_text())
    assert cached["adapters"] == ["a", "b"]
    # value matrices are trained but regularised towards the identity
    state = torch.load("fz/checkpoint.pt", weights_only=True)["trainable"]
    values = [v for k, v in state.items() if k.endswith("value.weight")]
    assert values and all(float((torch.eye(v.shape[0]) - v).abs().max()) < 0.5 for v in values)
    assert not any(k.startswith("adapters.") for k in state)  # members stay frozen
    out = runner.invoke(app, ["infer", "-m", world["model"], "-a", "a", "-a", "b", "-f", "fz", "--active",
                              "fuse(a,b)", "good film"])
    assert out.exit_code == 0, out.stderr
    info = json.loads(runner.invoke(app, ["inspect", "fz-ah", "--json"]).stdout)
    assert info["format"] == "adapterhub" and info["adapters"] == ["a", "b"]


def test_a_killed_fusion_resumes_to_the_same_result(world, tmp_path) -> None:
    """What docs/paper-experiment.sh does with a fusion cut short: `adapt train --resume` finishes it."""
    args = ["a", "b", "--target", world["task"], "--model", world["model"], "--no-cache", "--quiet", *FAST]
    assert_resume_after_sigkill_is_exact(runner, app, args, tmp_path, step=8, command="fuse")


def test_fusion_numerics_survive_the_round_trip(world, fused) -> None:
    from adapter_cli import AdapterModel
    from adapter_cli.resolve import locate
    outs = []
    for fusion_dir in ("fz/best", "fz-ah"):
        m = AdapterModel.from_pretrained(world["model"])
        for name in ("a", "b"):
            m.load_adapter(locate(name, m.name_or_path), with_head=False)
        m.load_fusion(fusion_dir)
        m.eval()
        with torch.no_grad():
            outs.append(m(input_ids=torch.tensor([[2, 5, 6, 3]]), active="fuse(a,b)").logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("args, message", [
    (["a", "nosuch"], "no cached adapter 'nosuch'"),
    (["a", "a"], "named twice"),
    (["a"], "at least two adapters"),
    (["a", "h"], "different placements"),
])
def test_bad_fusion_input(world, args, message) -> None:
    result = runner.invoke(app, ["fuse", *args, "--target", world["task"], "--model", world["model"], "--quiet",
                                 "--run-dir", "bad", *FAST])
    assert message in one_line_error(result)
    assert not Path("bad").exists()


def test_target_must_be_a_task(world) -> None:
    result = runner.invoke(app, ["fuse", "a", "b", "--target", "nottask", "--model", world["model"], "--quiet"])
    assert "unknown task 'nottask'" in one_line_error(result)


def test_adapters_from_another_base_model(world, tmp_path) -> None:
    other = tiny_model(hidden_size=48)
    other.add_adapter("z")
    other.save_adapter(tmp_path / "z", "z")
    result = runner.invoke(app, ["fuse", "a", str(tmp_path / "z"), "--target", world["task"], "--model",
                                 world["model"], "--quiet", "--run-dir", "bad2", *FAST])
    assert "hidden size 48" in one_line_error(result)
    assert not Path("bad2").exists()


def test_fusion_without_its_members(world, fused) -> None:
    result = runner.invoke(app, ["infer", "-m", world["model"], "-a", "a", "-f", "fz", "--active", "fuse(a,b)", "x"])
    assert "missing: b" in one_line_error(result)


def test_inspect_activations_rows_sum_to_one(world, fused) -> None:
    assert runner.invoke(app, ["fuse", "a", "b", "--target", world["task"], "--model", world["model"], "--quiet",
                               "--run-dir", "fz2", "seed=3", *FAST]).exit_code == 0
    result = runner.invoke(app, ["inspect-activations", "fz", "fz2", "--model", world["model"], "--out", "act",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["fusion"] for r in data["results"]] == ["fz", "fz2"]
    for r in data["results"]:
        assert r["adapters"] == ["a", "b"] and len(r["layers"]) == 2
        for layer in r["layers"]:
            assert sum(layer["weights"]) == pytest.approx(1.0, abs=1e-6)
            assert all(0.0 <= w <= 1.0 for w in layer["weights"])
    assert {p.name for p in Path("act").iterdir()} == {"activations.png", "activations.csv", "activations.json"}
    assert Path("act/activations.png").stat().st_size > 5000
    table = runner.invoke(app, ["inspect-activations", "fz", "--model", world["model"]])
    assert table.exit_code == 0 and "each row sums to 1" in table.stdout


def test_results_table(world, fused) -> None:
    runs = [str(p) for p in sorted(Path(".").glob("r-*"))] + ["fz"]
    md = runner.invoke(app, ["results", *runs])
    assert md.exit_code == 0, md.stderr
    header = md.stdout.splitlines()[0]
    assert header.startswith("| task | metric | adapter") and "fusion" in header and "adapter (houlsby)" in header
    # a and b are the same pfeiffer run (task, config and seed): counted once, the most recent, with a note
    assert "(n=2)" not in md.stdout and "(n=1)" in md.stdout
    assert "seed 42 was run 2 times" in md.stderr
    # the fusion is compared with the column its members were trained in, not the Houlsby one
    assert "| task | fusion vs adapter |" in md.stdout
    data = json.loads(runner.invoke(app, ["results", *runs, "--json"]).stdout)
    cell = data["cells"]["toy_sentiment"]["adapter"]
    counted = [r for r in data["runs"] if r["method"] == "adapter" and r["counted"]]
    assert cell["n"] == 1 and len(counted) == 1 and cell["mean"] == pytest.approx(counted[0]["value"])
    assert "holds no finished adapt runs" in one_line_error(runner.invoke(app, ["results", "fz/best"]))
    assert "does not exist" in one_line_error(runner.invoke(app, ["results", "r-nosuch"]))
