"""adapt add / train / merge with a LoRA on a tiny GPT-2 (Conv1D projections, q, k, v fused in c_attn)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, save_tiny_decoder, write_sentiment_task

runner = CliRunner()


def test_train_a_gpt2_lora_and_merge_it(tmp_path) -> None:
    model = str(save_tiny_decoder(tmp_path / "gpt2", "gpt2"))
    task = str(write_sentiment_task(tmp_path / "task", n_train=32, n_eval=16))
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", task, "--model", model, "--config", "lora", "--run-dir",
                                 str(run_dir), "--no-cache", "epochs=1", "batch_size=8", "--json"])
    assert result.exit_code == 0, result.stderr
    saved = json.loads((run_dir / "best" / "adapter_config.json").read_text())
    assert saved["config"]["attn_matrices"] == ["q", "v"] and saved["config"]["composition_mode"] == "add"
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(run_dir / "best"), "--model", model, "--out", str(merged)])
    assert result.exit_code == 0, result.stderr
    texts = ["the film was good", "a dull plot"]
    with_adapter = runner.invoke(app, ["infer", "-m", model, "-a", str(run_dir / "best"), *texts])
    folded = runner.invoke(app, ["infer", "-m", str(merged), "--head", str(run_dir / "best"), *texts])
    assert with_adapter.exit_code == 0 and folded.exit_code == 0, (with_adapter.stderr, folded.stderr)
    for a, b in zip(with_adapter.stdout.splitlines(), folded.stdout.splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-4


def test_dora_on_gpt2_is_one_line(tmp_path) -> None:
    model = str(save_tiny_decoder(tmp_path / "gpt2", "gpt2"))
    line = one_line_error(runner.invoke(app, ["add", "dora", "--model", model, "--save", str(tmp_path / "d")]))
    assert "DoRA adapter, which GPT-2's fused Conv1D layers do not take" in line
    assert not (tmp_path / "d").exists()
