"""An encoder-decoder's adapter trained on prompt/completion pairs (`adapt train --task lm`) on a tiny random
BART: the prompt is the encoder's input, the completion the decoder's target. The run learns (dev perplexity
falls), saves the adapter without the model's own seq2seq head, `adapt infer --task lm` scores what the run
scored, `--generate` continues with it, and plain text is refused in one line with nothing written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import FILLER, WORDS_NEG, WORDS_POS, one_line_error, save_tiny_model

runner = CliRunner()
FAST = ["epochs=3", "batch_size=8", "max_length=16", "learning_rate=1e-2", "patience=null"]


def _pairs(root: Path, seed: int = 0) -> Path:
    """The completion repeats the prompt's sentiment word: a decoder must read the encoder to write it."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 96), ("dev", 16)):
        rows = []
        for _ in range(n):
            word = rng.choice(WORDS_POS + WORDS_NEG)
            rows.append({"prompt": " ".join(rng.sample(FILLER, 3) + [word]), "completion": word})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2s")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    env = {"root": root, "pairs": str(_pairs(root / "pairs")), "bart": str(save_tiny_model(root / "bart", "bart"))}
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", env["pairs"], "--model", env["bart"],
                                 "--config", "pfeiffer", "cross_adapter=true", "--run-dir", str(root / "run"),
                                 "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    env["run"] = json.loads(result.stdout)
    yield env
    mp.undo()


def test_the_run_learns_and_saves_the_adapter_without_the_models_head(world) -> None:
    assert world["run"]["main_metric"] == "perplexity"
    records = [json.loads(line) for line in (world["root"] / "run" / "metrics.jsonl").read_text().splitlines()]
    perplexities = [r["perplexity"] for r in records if r["type"] == "eval"]
    assert len(perplexities) == 3 and perplexities[-1] < perplexities[0]
    best = world["root"] / "run" / "best"
    config = json.loads((best / "adapter_config.json").read_text())
    assert config["config"]["cross_adapter"] is True and config["base_model"]["encoder_layers"] == 2
    assert not (best / "head_config.json").exists()


def test_infer_task_lm_scores_what_the_run_scored(world) -> None:
    best = world["root"] / "run" / "best"
    result = runner.invoke(app, ["infer", "-m", world["bart"], "-a", str(best), "--task", "lm", "--data-dir",
                                 world["pairs"], "--max-length", "16"])
    assert result.exit_code == 0, result.stderr
    scored, run = json.loads(result.stdout), world["run"]["best"]["metrics"]
    assert scored["perplexity"] == pytest.approx(run["perplexity"], rel=1e-5)
    base = runner.invoke(app, ["infer", "-m", world["bart"], "--task", "lm", "--data-dir", world["pairs"],
                               "--max-length", "16"])
    assert base.exit_code == 0, base.stderr
    assert json.loads(base.stdout)["perplexity"] > scored["perplexity"]


def test_generate_writes_the_prompts_word(world) -> None:
    best = world["root"] / "run" / "best"
    word = WORDS_POS[0]
    result = runner.invoke(app, ["infer", "-m", world["bart"], "-a", str(best), "--generate",
                                 f"{FILLER[0]} {FILLER[1]} {word}", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["head"] == "lm" and row["new_tokens"] == 4


def test_plain_text_is_refused_for_an_encoder_decoder(world, tmp_path) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "train.txt").write_text("a line\nanother line\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", str(tmp_path / "text"), "--model",
                                 world["bart"], "--run-dir", str(run), *FAST])
    assert one_line_error(result).startswith("error: an encoder-decoder learns from prompt/completion pairs")
    assert not run.exists()


def test_a_classification_task_trains_on_bart(world, tmp_path) -> None:
    """Fine-tuned whole (--method full): the saved model, whose word embeddings are tied across encoder and
    decoder, loads and scores the dev split as the run did (the head reads the last end-of-sequence token)."""
    from conftest import write_sentiment_task

    task = write_sentiment_task(tmp_path / "task")
    result = runner.invoke(app, ["train", "--task", str(task), "--model", world["bart"], "--method", "full",
                                 "--run-dir", str(tmp_path / "run"), "--json", "epochs=2", "batch_size=8",
                                 "learning_rate=3e-3", "max_length=16", "patience=null"])
    assert result.exit_code == 0, result.stderr
    best = json.loads(result.stdout)["best"]["metrics"]
    scored = runner.invoke(app, ["infer", "-m", str(tmp_path / "run" / "best"), "--task", str(task),
                                 "--max-length", "16", "--json", "--metrics", str(tmp_path / "metrics.json")])
    assert scored.exit_code == 0, scored.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == best["accuracy"] and metrics["f1"] == best["f1"]
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    saved = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    assert "shared.weight" in saved and "encoder.embed_tokens.weight" not in saved  # one copy of the tied matrix
    loaded = AutoModel.from_pretrained(tmp_path / "run" / "best")
    trained = saved["shared.weight"]
    assert not torch.equal(trained, AutoModel.from_pretrained(world["bart"]).shared.weight)  # it was fine-tuned
    assert torch.equal(loaded.encoder.embed_tokens.weight, trained)
    assert torch.equal(loaded.decoder.embed_tokens.weight, trained)


def test_a_lora_trains_on_pairs_and_is_shared_in_adapterhubs_format(world, tmp_path) -> None:
    """LoRA on q, k, v and the feed-forward of a tiny T5 (the decoder's cross-attention too): the run learns,
    `adapt infer --task lm` scores what it scored, and the AdapterHub copy of the adapter scores the same."""
    t5 = save_tiny_model(tmp_path / "t5", "t5")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", world["pairs"], "--model", str(t5),
                                 "--config", "lora", "attn_matrices=[q,k,v]", "intermediate_lora=true",
                                 "--run-dir", str(run), "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    perplexities = [r["perplexity"] for r in records if r["type"] == "eval"]
    assert perplexities[-1] < perplexities[0]
    from safetensors.torch import load_file

    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(t5)
    name = model.load_adapter(run / "best", with_head=False)
    hub = model.save_adapter(tmp_path / "hub", name, with_head=False, format="adapterhub", safetensors=True)

    (weights,) = [f for f in hub.iterdir() if f.suffix == ".safetensors"]
    assert any(".decoder.block.1.layer.1.EncDecAttention.k.loras." in k for k in load_file(str(weights)))
    best = json.loads(result.stdout)["best"]["metrics"]["perplexity"]
    for adapter in (run / "best", hub):
        scored = runner.invoke(app, ["infer", "-m", str(t5), "-a", str(adapter), "--task", "lm", "--data-dir",
                                     world["pairs"], "--max-length", "16"])
        assert scored.exit_code == 0, scored.stderr
        assert json.loads(scored.stdout)["perplexity"] == pytest.approx(best, rel=1e-5)


def test_a_prefix_trains_on_t5_and_its_flat_export_scores_the_same(world, tmp_path) -> None:
    """Prefix tuning on a tiny T5 (encoder, decoder and cross-attention prefixes, with the relative position
    bias over the prefixed keys): the run learns, `adapt extract --flat` caches the keys and values alone, and
    `adapt infer --task lm` scores the same with either; `--generate` continues with the prefix."""
    t5 = save_tiny_model(tmp_path / "t5", "t5")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", "lm", "--data-dir", world["pairs"], "--model", str(t5),
                                 "--config", "prefix_tuning", "prefix_length=4", "bottleneck_size=16",
                                 "--run-dir", str(run), "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    perplexities = [r["perplexity"] for r in records if r["type"] == "eval"]
    assert perplexities[-1] < perplexities[0]
    extracted = runner.invoke(app, ["extract", str(run), "--flat", "--json"])
    assert extracted.exit_code == 0, extracted.stderr
    flat = Path(json.loads(extracted.stdout)["path"])
    best = json.loads(result.stdout)["best"]["metrics"]["perplexity"]
    for adapter in (run / "best", flat):
        scored = runner.invoke(app, ["infer", "-m", str(t5), "-a", str(adapter), "--task", "lm", "--data-dir",
                                     world["pairs"], "--max-length", "16"])
        assert scored.exit_code == 0, scored.stderr
        assert json.loads(scored.stdout)["perplexity"] == pytest.approx(best, rel=1e-4)
    generated = runner.invoke(app, ["infer", "-m", str(t5), "-a", str(flat), "--generate", "good nice",
                                    "--max-new-tokens", "3", "--json"])
    assert generated.exit_code == 0, generated.stderr
