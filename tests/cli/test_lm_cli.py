"""A decoder's adapter trained on plain text (`adapt train --task lm`) on a tiny GPT-2 and an untied tiny
Llama: the run's metrics, what is saved and cached (the adapter without the model's own head), perplexity from
`adapt infer --task lm` equal to the run's, generation with the trained adapter, resume after SIGKILL equal to
the uninterrupted run, and bad input in one line with nothing written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import assert_resume_after_sigkill_is_exact, one_line_error, save_tiny_decoder, save_tiny_model

runner = CliRunner()
FAST = ["epochs=2", "batch_size=4", "max_length=32", "learning_rate=1e-2", "save_every_steps=2",
        "log_every_steps=2", "patience=null"]


def _text(root: Path, lines: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = "the cat sat on a mat and a dog ran to the park".split()
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("".join(" ".join(rng.choice(words) for _ in range(8)) + "\n"
                                            for _ in range(lines)))
    (root / "dev.txt").write_text("".join(" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(12)))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    mp.chdir(root)
    env = {"root": root, "text": str(_text(root / "text")),
           "gpt2": str(save_tiny_decoder(root / "gpt2", "gpt2", seed=1)),
           "llama": str(save_tiny_decoder(root / "llama", "llama", seed=1, tie_word_embeddings=False))}
    for family in ("gpt2", "llama"):
        result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", env["text"], "--model", env[family],
                                     "--run-dir", str(root / "runs" / family), "--json", *FAST])
        assert result.exit_code == 0, result.stderr
        env[f"{family}_run"] = json.loads(result.stdout)
    yield env
    mp.undo()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lm_run_learns_and_saves_the_adapter_without_the_models_head(world, family) -> None:
    summary = world[f"{family}_run"]
    assert summary["main_metric"] == "perplexity"
    assert set(summary["best"]["metrics"]) == {"perplexity", "next_token_accuracy"}
    records = [json.loads(line) for line in (world["root"] / "runs" / family / "metrics.jsonl").read_text()
               .splitlines()]
    perplexities = [r["perplexity"] for r in records if r["type"] == "eval"]
    assert len(perplexities) == 2 and perplexities[-1] < perplexities[0]  # the adapter learned something
    best = world["root"] / "runs" / family / "best"
    assert (best / "adapter_config.json").is_file()
    assert not (best / "head_config.json").exists()  # the base model's own head is not copied into the adapter


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_infer_task_lm_scores_what_the_run_scored(world, family) -> None:
    best = world["root"] / "runs" / family / "best"
    result = runner.invoke(app, ["infer", "-m", world[family], "-a", str(best), "--task", "lm", "--data-dir",
                                 world["text"], "--max-length", "32"])
    assert result.exit_code == 0, result.stderr
    scored = json.loads(result.stdout)
    run = world[f"{family}_run"]["best"]["metrics"]
    assert scored["head"] == "lm" and scored["active"] == "lm"
    assert scored["perplexity"] == pytest.approx(run["perplexity"], rel=1e-5)
    assert scored["next_token_accuracy"] == pytest.approx(run["next_token_accuracy"], abs=1e-9)
    base = runner.invoke(app, ["infer", "-m", world[family], "--task", "lm", "--data-dir", world["text"],
                               "--max-length", "32"])
    assert base.exit_code == 0, base.stderr
    assert json.loads(base.stdout)["perplexity"] > scored["perplexity"]  # the adapter helps on this text


def test_generate_with_the_trained_adapter(world) -> None:
    best = world["root"] / "runs" / "gpt2" / "best"
    args = ["infer", "-m", world["gpt2"], "-a", str(best), "--generate", "the cat", "--max-new-tokens", "6"]
    first, again = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.stderr
    row = json.loads(first.stdout)
    assert row["head"] == "lm" and row["active"] == "lm" and row["new_tokens"] == 6 and row["finish"] == "length"
    assert first.stdout == again.stdout
    plain = runner.invoke(app, ["infer", "-m", world["gpt2"], "--generate", "the cat", "--max-new-tokens", "6"])
    assert plain.exit_code == 0 and "active" not in json.loads(plain.stdout)


def test_the_run_is_cached_under_the_decoder(world) -> None:
    result = runner.invoke(app, ["cache", "ls", "--json"])
    assert result.exit_code == 0, result.stderr
    listed = json.dumps(json.loads(result.stdout))
    assert '"task": "lm"' in listed


def test_resume_after_a_kill_reaches_the_same_result(world, tmp_path) -> None:
    args = ["--task", "lm", "--data-dir", world["text"], "--model", world["gpt2"], "--quiet", "--no-cache", *FAST]
    assert_resume_after_sigkill_is_exact(runner, app, args, tmp_path)


@pytest.mark.parametrize("model, args, message", [
    ("encoder", ["--task", "lm"], "task lm is language modelling, for decoders"),
    ("gpt2", ["--task", "mlm"], "task mlm is masked language modelling, for encoders"),
    ("gpt2", ["--task", "lm", "--method", "head"], "--method head is not supported for it yet"),
    ("gpt2", ["--task", "lm", "--config", "prompt_tuning"], "adapt stitches only bottleneck, lora, prefix tuning, "
     "invertible and reft adapters into GPT-2 models"),
])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, model, args, message) -> None:
    path = str(save_tiny_model(tmp_path / "bert")) if model == "encoder" else world[model]
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", path, "--data-dir", world["text"], *args, "--run-dir",
                                 str(run_dir), *FAST])
    assert message in one_line_error(result, 2)
    assert not run_dir.exists()


def test_results_show_perplexity_as_it_is(world) -> None:
    """Perplexity is not a proportion: `adapt results` shows it unscaled (accuracy and F1 are in points)."""
    result = runner.invoke(app, ["results", str(world["root"] / "runs")])
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| lm |"))
    shown = float(row.split("|")[3].split()[0])
    runs = [world[f"{f}_run"]["best"]["metrics"]["perplexity"] for f in ("gpt2", "llama")]
    assert any(abs(shown - p) < 0.06 for p in runs), (row, runs)


def _pairs(root: Path, n: int = 40) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            f.write(json.dumps({"prompt": f"{a} and {b} is ", "completion": f"{a + b}."}) + "\n")
    return root


def test_prompt_completion_pairs_train_on_the_completion_only(world, tmp_path) -> None:
    data = _pairs(tmp_path / "pairs")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", str(data), "--model", world["gpt2"],
                                 "--run-dir", str(run), "--no-cache", "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    assert "36 prompt/completion pairs of up to 32 tokens, the loss on the completions; dev 4 pairs" in result.stderr
    scored = runner.invoke(app, ["infer", "-m", world["gpt2"], "-a", str(run / "best"), "--task", "lm",
                                 "--data-dir", str(data), "--max-length", "32"])
    assert scored.exit_code == 0, scored.stderr
    best = json.loads(result.stdout)["best"]["metrics"]
    assert json.loads(scored.stdout)["perplexity"] == pytest.approx(best["perplexity"], rel=1e-5)


def test_encode_lm_labels_only_the_completion_and_cuts_the_prompt_first() -> None:
    from adapter_cli.training.clm import encode_lm, lm_batch
    from conftest import EOS_ID, char_tokenizer

    tokenizer = char_tokenizer()
    data = encode_lm([("abcdef", "xy"), ("a", "z")], tokenizer, 6)
    ids = [f["input_ids"] for f in data.features]
    y, x, z = (tokenizer.convert_tokens_to_ids(c) for c in "yxz")
    assert ids[0][-3:] == [x, y, EOS_ID] and len(ids[0]) == 6  # "def" kept of the prompt, then "xy" + eos
    assert [f["prompt_length"] for f in data.features] == [3, 1]
    batch = lm_batch(data, [0, 1], pad_id=0)
    assert batch["labels"][0].tolist() == [-100, -100, -100, x, y, EOS_ID]
    assert batch["labels"][1].tolist() == [-100, z, EOS_ID, -100, -100, -100]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"prompt": "b", "completion": "c"}\n', "line 1 needs string fields"),
    ("not json\n", "line 1 is not JSON"),
    ('{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": "c"}\n', "line 1 has an empty completion"),
])
def test_bad_pairs_are_one_line(world, tmp_path, content, message) -> None:
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text(content)
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", str(tmp_path / "pairs"), "--model",
                                 world["gpt2"], "--run-dir", str(tmp_path / "run"), *FAST])
    assert message in one_line_error(result, 2)
    assert not (tmp_path / "run").exists()


def test_text_and_pairs_together_are_refused(world, tmp_path) -> None:
    data = _pairs(tmp_path / "both")
    (data / "train.txt").write_text("some text\nmore text\n")
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", str(data), "--model", world["gpt2"],
                                 "--run-dir", str(tmp_path / "run"), *FAST])
    assert "holds both train.txt (text) and train.jsonl" in one_line_error(result, 2)
