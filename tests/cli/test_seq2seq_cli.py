"""``adapt add`` and ``adapt infer`` on a tiny random BART saved with a tokenizer: a seq2seq-LM head's
``--generate`` with ``--json``, a classification head's scores, and bad input in one line (exit 2, nothing
written)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, save_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    """A BART directory with adapter ``G`` (cross-attention too, seq2seq-LM head) and ``C`` (classification)."""
    root = tmp_path_factory.mktemp("bart")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    try:
        model = save_tiny_model(root / "model", "bart", seed=1)
        for name, extra in (("G", ["cross_adapter=true", "--head", "seq2seq_lm"]),
                            ("C", ["--head", "classification:3"])):
            result = runner.invoke(app, ["add", "houlsby", *extra, "-m", str(model), "--name", name,
                                         "--save", str(root / name)])
            assert result.exit_code == 0, result.stderr
        yield root
    finally:
        mp.undo()


def test_generate_with_a_seq2seq_head(bart, tmp_path) -> None:
    args = ["infer", "-m", str(bart / "model"), "-a", str(bart / "G"), "--generate", "good film", "bad",
            "--max-new-tokens", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["good film", "bad"]
    assert all(r["head"] == "G" and r["new_tokens"] == 4 and r["finish"] == "length" for r in rows)
    again = runner.invoke(app, args + ["--batch-size", "1"])  # right padding: a row answers alone as in a batch
    assert again.exit_code == 0 and again.stdout == result.stdout


def test_classification_with_a_bart_adapter(bart) -> None:
    result = runner.invoke(app, ["infer", "-m", str(bart / "model"), "-a", str(bart / "C"), "good film", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["label"] in ("LABEL_0", "LABEL_1", "LABEL_2")


def test_generate_with_a_classification_head_is_refused(bart, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["infer", "-m", str(bart / "model"), "-a", str(bart / "C"), "--generate", "good",
                                 "--output", str(out)])
    assert result.exit_code == 2
    assert one_line_error(result).startswith("error: head 'C' is a classification head; generation needs a "
                                             "seq2seq_lm head")
    assert not out.exists()


def test_a_head_bart_cannot_carry_is_refused(bart, tmp_path) -> None:
    result = runner.invoke(app, ["add", "pfeiffer", "-m", str(bart / "model"), "--head", "tagging:3",
                                 "--save", str(tmp_path / "T")])
    assert result.exit_code == 2
    assert "which BART models cannot carry" in one_line_error(result)
    assert not (tmp_path / "T").exists()


@pytest.mark.parametrize("family", ["t5", "mt5"])
def test_t5_adapter_with_its_own_head_generates(family, tmp_path) -> None:
    """T5 (its tied head reads the decoder's states scaled) and mT5 (untied: the checkpoint has no lm_head, so
    `--head seq2seq_lm` is refused in one line, and a seq2seq head of its own is made by `add_head` instead)."""
    model = save_tiny_model(tmp_path / "model", family, seed=2)
    result = runner.invoke(app, ["add", "pfeiffer", "cross_adapter=true", "-m", str(model), "--head", "seq2seq_lm",
                                 "--name", "G", "--save", str(tmp_path / "G")])
    if family == "mt5":
        assert "has no language-model head of its own" in one_line_error(result)
        assert not (tmp_path / "G").exists()
        return
    assert result.exit_code == 0, result.stderr
    generated = runner.invoke(app, ["infer", "-m", str(model), "-a", str(tmp_path / "G"), "--generate", "good film",
                                    "--max-new-tokens", "3"])
    assert generated.exit_code == 0, generated.stderr
    row = json.loads(generated.stdout)
    assert row["head"] == "G" and row["new_tokens"] == 3


def test_a_long_input_is_cut_to_the_models_positions(bart) -> None:
    """The tiny BART takes 64 positions; the default max_length (128) is cut to them, from the input's end."""
    long = " ".join(["film"] * 100)
    result = runner.invoke(app, ["infer", "-m", str(bart / "model"), "-a", str(bart / "G"), "--generate", long,
                                 "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["new_tokens"] == 2 and row["prompt_tokens_cut"] == 102 - 64
    too_many = runner.invoke(app, ["infer", "-m", str(bart / "model"), "-a", str(bart / "G"), "--generate", "good",
                                   "--max-new-tokens", "65"])
    assert "max_new_tokens 65 is more than the 64 positions this model's decoder takes" in one_line_error(too_many)
    assert runner.invoke(app, ["infer", "-m", str(bart / "model"), "-a", str(bart / "G"), "--generate", "good",
                               "--max-new-tokens", "64"]).exit_code == 0


@pytest.mark.parametrize("head,family", [("causal_lm", "bart"), ("seq2seq_lm", "gpt2")])
def test_the_other_kind_of_lm_head_is_refused(bart, tmp_path, head, family) -> None:
    from conftest import save_tiny_decoder

    model = bart / "model" if family == "bart" else save_tiny_decoder(tmp_path / "gpt2", "gpt2", seed=1)
    result = runner.invoke(app, ["add", "pfeiffer", "-m", str(model), "--head", head, "--save", str(tmp_path / "x")])
    own = "seq2seq_lm" if family == "bart" else "causal_lm"
    assert f"own language-model head is a {own} head, not {head}" in one_line_error(result)
    assert not (tmp_path / "x").exists()


def test_a_cross_attention_adapter_is_not_counted_without_a_model(tmp_path) -> None:
    result = runner.invoke(app, ["add", "pfeiffer", "cross_adapter=true", "--hidden-size", "768", "--num-layers", "12"])
    assert "a cross-attention adapter sits in an encoder-decoder's decoder layers only" in one_line_error(result)


def test_a_lora_is_counted_and_saved_for_bart(bart, tmp_path) -> None:
    """`adapt add lora --json` on BART counts the decoder's cross-attention matrices (checked against the built
    modules), and saves AdapterHub's weight names; a gated T5 refuses intermediate_lora in one line."""
    result = runner.invoke(app, ["add", "lora", "attn_matrices=[q,v]", "-m", str(bart / "model"), "--json",
                                 "--format", "adapterhub", "--save", str(tmp_path / "L")])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    placed = {p["location"]: p["layers"] for p in out["placements"]}
    assert placed == {"q": [0, 1, 2, 3], "v": [0, 1, 2, 3], "cross_q": [2, 3], "cross_v": [2, 3]}
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "L" / "adapter.safetensors"))
    assert "model.decoder.layers.1.encoder_attn.q_proj.loras.lora.lora_A" in keys
    gated = save_tiny_model(tmp_path / "t5", "t5")
    config = json.loads((gated / "config.json").read_text())
    (gated / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-gelu", "is_gated_act": True,
                                                   "dense_act_fn": "gelu"}))
    result = runner.invoke(app, ["add", "ia3", "-m", str(gated), "--format", "adapterhub", "--save",
                                 str(tmp_path / "I")])
    assert result.exit_code == 0, result.stderr
    keys = load_file(str(tmp_path / "I" / "adapter.safetensors"))
    assert "transformer.encoder.block.0.layer.1.DenseReluDense.wi_1.loras.ia3.lora_B" in keys


def test_merge_counts_the_cross_attention_layers(bart, tmp_path) -> None:
    """q and v in 4 layers, and the cross-attention's q and v in the 2 decoder layers: 12 linear layers."""
    result = runner.invoke(app, ["add", "lora", "-m", str(bart / "model"), "--name", "L", "--save", str(tmp_path / "L")])
    assert result.exit_code == 0, result.stderr
    merged = runner.invoke(app, ["merge", str(tmp_path / "L"), "-m", str(bart / "model"), "--out", str(tmp_path / "M"),
                                 "--json"])
    assert merged.exit_code == 0, merged.stderr
    assert json.loads(merged.stdout)["linear_layers"] == 12
