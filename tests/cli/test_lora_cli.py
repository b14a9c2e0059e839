"""The LoRA family (lora, ia3, dora, vera) through the whole command line: `adapt add` counts equal to
AdapterHub's, `adapt train` / `infer` / `inspect`, the cache and the hub (pack, publish, search, pull),
`adapt merge` into a plain transformers model, and every refusal as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import FIXTURES, one_line_error, sandbox, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAMILY = ("lora", "ia3", "dora", "vera")
FAST = ["epochs=1", "batch_size=16", "learning_rate=5e-3", "save_every_steps=100", "patience=null"]
COUNTS = json.loads((FIXTURES / "lora_param_counts.json").read_text())
BERT = FIXTURES / "lora_bert"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a toy task, and one trained adapter of each family member (cached)."""
    with sandbox(tmp_path_factory, "lora-cli") as root:
        model = save_tiny_model(root / "tiny")
        task = write_sentiment_task(root / "task")
        runs = {}
        for preset in FAMILY:
            out = ok("train", "--task", task, "--model", model, "--config", preset, "--quiet", "--json", *FAST)
            runs[preset] = json.loads(out.stdout)
        yield {"root": root, "model": model, "task": task, "runs": runs}


@pytest.fixture
def here(world, monkeypatch):
    """The world's directory and cache, for tests that use its trained adapters."""
    monkeypatch.chdir(world["root"])
    monkeypatch.setenv("ADAPT_CACHE", str(world["root"] / "cache"))
    return world


def _hidden(model: Path, adapter: Path | None) -> torch.Tensor:
    """The final hidden states of the base model, with ``adapter`` active when given."""
    from adapter_cli import AdapterModel

    m = AdapterModel.from_pretrained(model).eval()
    ids = torch.arange(5, 5 + 3 * 7).reshape(3, 7) % m.vocab_size
    if adapter is not None:
        m.set_active(m.load_adapter(adapter, with_head=False))
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=torch.ones_like(ids), head=None).last_hidden_state


# ------------------------------------------------------------------------------------------------ adapt add

@pytest.mark.parametrize("spec", sorted(COUNTS["counts"]))
def test_add_counts_equal_adapterhubs(spec) -> None:
    out = json.loads(ok("add", spec, "--hidden-size", COUNTS["hidden_size"], "--num-layers", COUNTS["num_layers"],
                        "--intermediate-size", COUNTS["intermediate_size"], "--json").stdout)
    assert out["parameters"] == COUNTS["counts"][spec]["parameters"]
    assert out["method"] == "lora" and out["bytes_fp32"] == 4 * out["parameters"]
    assert all("bottleneck" not in p and p["layers"] == list(range(12)) for p in out["placements"])
    ranks = {p["rank"] for p in out["placements"]}
    assert ranks == ({None} if out["variant"] == "ia3" else {out["config"]["r"]})
    if out["variant"] == "vera":  # the shared random projections are stored, not trained
        assert out["trainable_parameters"] == out["parameters"] - 2 * 8 * 768
    else:
        assert out["trainable_parameters"] == out["parameters"]


def test_add_lora_shows_matrices_and_rank() -> None:
    out = ok("add", "lora", "r=8", "alpha=16", "--hidden-size", "768", "--num-layers", "12")
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["matrix", "layers", "rank", "parameters"]
    assert [line.split() for line in lines[2:4]] == [["q", "0-11", "8", "147,456"], ["v", "0-11", "8", "147,456"]]
    data = json.loads(ok("add", "lora", "r=8", "alpha=16", "--hidden-size", "768", "--num-layers", "12",
                         "--json").stdout)
    assert data["config"]["alpha"] == 16 and data["parameters"] == 294912
    ia3 = ok("add", "ia3", "--hidden-size", "768", "--num-layers", "12").stdout
    assert "intermediate  0-11    vector" in ia3 and "55,296" in ia3  # default feed-forward width 4 x 768


def test_add_into_a_model_uses_its_feed_forward_width(tmp_path) -> None:
    model = save_tiny_model(tmp_path / "tiny")  # intermediate size 64, not 4 x 32
    for preset in FAMILY:
        out = json.loads(ok("add", preset, "-m", model, "--save", tmp_path / preset, "--json").stdout)
        assert out["intermediate_size"] == 64
        info = json.loads(ok("inspect", tmp_path / preset, "--json").stdout)
        assert info["method"] == "lora" and info["parameters"] == out["parameters"]
    table = ok("inspect", tmp_path / "ia3").stdout
    assert re.search(r"^variant +ia3$", table, re.M) and "k, v, intermediate" in table


def test_help_and_listing_name_the_new_presets() -> None:
    text = " ".join(ok("add", "--help").stdout.split())
    listed = {r["name"]: r for r in json.loads(ok("recipes", "ls", "--kind", "adapter", "--json").stdout)}
    for preset in FAMILY:
        assert preset in text and preset in listed
    assert "--intermediate-size" in text and "r=16" in text


# --------------------------------------------------------------------------------------- train, infer, cache

@pytest.mark.parametrize("preset", FAMILY)
def test_train_caches_a_loadable_adapter_that_changes_the_answer(here, preset) -> None:
    summary = here["runs"][preset]
    run_dir = Path(summary["run_dir"])
    assert run_dir == Path(f"runs/toy_sentiment-{preset}-s42") and summary["cache"]["id"] == run_dir.name
    from adapter_cli import AdapterModel

    m = AdapterModel.from_pretrained(here["model"])
    name = m.load_adapter(run_dir / "best")
    assert m.adapters[name].config.variant == preset
    texts = ["good film", "the worst plot"]
    adapted = [json.loads(line) for line in ok("infer", "-m", here["model"], "-a", run_dir.name, *texts).stdout.splitlines()]
    plain = [json.loads(line) for line in ok("infer", "-m", here["model"], "--head", run_dir / "best",
                                              *texts).stdout.splitlines()]
    assert [a["active"] for a in adapted] == [name, name]
    assert [a["score"] for a in adapted] != [p["score"] for p in plain]  # the adapter was trained: it matters
    listed = {e["id"]: e for e in json.loads(ok("cache", "ls", "--json").stdout)}
    assert listed[run_dir.name]["config"] == preset


def test_recipe_overrides_take_lora_keys(here) -> None:
    out = json.loads(ok("train", "--task", here["task"], "--model", here["model"], "--config", "lora", "r=4",
                        "adapter.alpha=8", "--run-dir", "r4", "--no-cache", "--quiet", "--json", *FAST).stdout)
    assert out["run_dir"] == "r4"
    import yaml

    assert yaml.safe_load(Path("r4/recipe.yaml").read_text())["adapter"] == {"config": "lora", "r": 4, "alpha": 8}
    config = json.loads(ok("inspect", "r4/best", "--json").stdout)["config"]
    assert config["r"] == 4 and config["alpha"] == 8
    line = one_line_error(run("train", "--task", here["task"], "--model", here["model"], "--config", "pfeiffer",
                              "r=4", "--run-dir", "never", "--quiet"))
    assert "'r'" in line and not Path("never").exists()


def test_pack_publish_search_pull_record_the_method(here, tmp_path, monkeypatch) -> None:
    packed = json.loads(ok("pack", "toy_sentiment-dora-s42", "--author", "me", "--catalog", "sentiment/toy",
                           "-o", tmp_path, "--json").stdout)
    assert (packed["method"], packed["architecture"], packed["rank"], packed["reduction_factor"]) == \
        ("lora", "dora", 8, None)
    from adapter_cli.hub.archive import verify_archive

    card = verify_archive(Path(packed["archive"]))
    assert (card.method, card.architecture, card.rank, card.non_linearity) == ("lora", "dora", 8, None)
    reg = tmp_path / "hub"
    for name, catalog in (("toy_sentiment-lora-s42", "sentiment/toy"), ("toy_sentiment-ia3-s42", "sentiment/toy3")):
        ok("publish", name, "--author", "me", "--catalog", catalog, "--to", reg)
    found = {r["id"]: r for r in json.loads(ok("search", "--registry", reg, "--json").stdout)}
    assert (found["sentiment/toy@me"]["rank"], found["sentiment/toy3@me"]["rank"]) == (8, None)
    assert found["sentiment/toy3@me"]["architecture"] == "ia3"
    assert "r8" in ok("search", "--registry", reg).stdout
    before = ok("infer", "-m", here["model"], "-a", "toy_sentiment-lora-s42", "good film").stdout
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "fresh"))
    ok("pull", "sentiment/toy@me", "--registry", reg, "--model", here["model"])
    assert ok("infer", "-m", here["model"], "-a", "sentiment/toy@me", "good film").stdout == before


def test_old_cards_without_a_rank_still_read() -> None:
    from adapter_cli.hub.card import CARD_FORMAT, Card

    data = {"format": CARD_FORMAT, "format_version": 1, "name": "a", "task": "sentiment", "dataset": "sst-2",
            "author": "ukp", "version": "1", "architecture": "pfeiffer", "reduction_factor": 16,
            "base_model": {"id": "bert-base-uncased", "model_type": "bert", "hidden_size": 768}, "files": {}}
    card = Card.from_dict(data, "old card")
    assert card.rank is None and card.method == "bottleneck"
    with pytest.raises(Exception, match="rank"):
        Card.from_dict({**data, "rank": "eight"}, "bad card")


# ------------------------------------------------------------------------------------------------ adapt merge

def test_merge_writes_a_plain_model_equal_to_the_adapter(here, tmp_path) -> None:
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "merged"
    data = json.loads(ok("merge", "toy_sentiment-lora-s42", "-m", here["model"], "--out", out, "--json").stdout)
    assert data["merged"] == "toy_sentiment-lora-s42" and data["out"] == str(out)
    assert (data["variant"], data["rank"], data["linear_layers"], data["tokenizer"]) == ("lora", 8, 4, True)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(data["files"]) == set(os.listdir(out))
    ids = torch.arange(5, 26).reshape(3, 7)
    with torch.no_grad():
        merged = AutoModel.from_pretrained(out).eval()(input_ids=ids).last_hidden_state
    cached = Path(data["head"])  # the cache entry: the adapter and its head
    assert torch.allclose(merged, _hidden(Path(here["model"]), cached), atol=1e-5, rtol=0)
    assert not torch.allclose(merged, _hidden(Path(here["model"]), None), atol=1e-4)
    assert AutoTokenizer.from_pretrained(out)("good film")["input_ids"]
    # the adapter's head answers over the merged model as over the adapter
    via_merged = json.loads(ok("infer", "-m", out, "--head", data["head"], "good film").stdout)
    via_adapter = json.loads(ok("infer", "-m", here["model"], "-a", "toy_sentiment-lora-s42", "good film").stdout)
    assert via_merged["score"] == pytest.approx(via_adapter["score"], abs=1e-5)


@pytest.mark.parametrize("fixture, adapter", [*(("lora_bert", a) for a in ("lora", "lora_all", "ia3", "ia3_out", "dora",
                                                                          "dora_r4", "vera")),
                                              *(("peft_bert", a) for a in ("lora", "ia3", "dora"))])
def test_merge_of_adapterhub_and_peft_adapters_is_exact(fixture, adapter, tmp_path) -> None:
    """AdapterHub's adapters (its DoRA rescales the bias) and PEFT's (its DoRA does not; its (IA)³ scales
    the feed-forward input): the merged model computes what the adapter does."""
    from transformers import AutoModel

    base, directory, out = FIXTURES / fixture / "base", FIXTURES / fixture / "adapters" / adapter, tmp_path / "merged"
    result = ok("merge", directory, "-m", base, "--out", out, "--json")
    assert "without a tokenizer" in result.stderr  # the fixture base models have none
    ids = torch.arange(5, 26).reshape(3, 7)
    with torch.no_grad():
        merged = AutoModel.from_pretrained(out).eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = _hidden(base, directory)
    assert torch.allclose(merged.last_hidden_state, expected, atol=1e-5, rtol=0)


def test_merge_refusals_are_one_line_and_write_nothing(here, tmp_path) -> None:
    base = BERT / "base"
    cases = [
        (["merge", BERT / "adapters" / "seq", "-m", base, "--out", tmp_path / "o"], "only LoRA-family"),
        (["merge", BERT / "adapters" / "lora_gated", "-m", base, "--out", tmp_path / "o"], "gated"),
        (["merge", "no-such-adapter", "-m", here["model"], "--out", tmp_path / "o"], "no-such-adapter"),
    ]
    for args, word in cases:
        assert word in one_line_error(run(*args))
    assert not (tmp_path / "o").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    line = one_line_error(run("merge", "toy_sentiment-lora-s42", "-m", here["model"], "--out", full))
    assert "--overwrite" in line and os.listdir(full) == ["notes.txt"]
    # --overwrite never replaces a directory that holds no model or adapter; an earlier merge it does replace
    assert "never replaced" in one_line_error(run("merge", "toy_sentiment-lora-s42", "-m", here["model"],
                                                  "--out", full, "--overwrite"))
    assert os.listdir(full) == ["notes.txt"]
    ok("merge", "toy_sentiment-lora-s42", "-m", here["model"], "--out", tmp_path / "m")
    ok("merge", "toy_sentiment-vera-s42", "-m", here["model"], "--out", tmp_path / "m", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "m"]  # no temporaries left behind


def test_merge_help_has_an_example() -> None:
    text = ok("merge", "--help").stdout
    assert "Examples" in text and "adapt merge" in text and "--out" in text


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_lora_input_is_one_line_exit_2_and_writes_nothing(here, tmp_path) -> None:
    model = here["model"]
    out = tmp_path / "never"
    for name in ("a", "b"):
        ok("add", "lora", "init_weights=bert", "-m", model, "--name", name, "--save", tmp_path / name, "--head",
           "classification:2")
    before = files(here["root"]) | files(tmp_path)
    cases = [
        (["add", "lora", "r=0", "--hidden-size", "768", "--num-layers", "12"], "rank r"),
        (["add", "lora", "r=0", "-m", model, "--save", out], "rank r"),
        (["add", "lora", "r=4096", "-m", model, "--save", out], "larger than the hidden size 32"),
        (["add", "lora", "r=4096", "--hidden-size", "768", "--num-layers", "12"], "larger than the hidden size"),
        (["add", "lora", "attn_matrices=[q,x]", "-m", model, "--save", out], "'x'"),
        (["add", "lora", "-m", model, "--intermediate-size", "64"], "--intermediate-size"),
        (["add", "lora", "-m", model, "--save", out, "--format", "peft", "--head", "classification:2"],
         "no place for a head"),
        (["add", "dora", "-m", model, "--save", out, "--format", "peft"], "dora_style=peft"),
        (["add", "pfeiffer", "r=4", "--hidden-size", "768", "--num-layers", "12"], "'r' belongs to lora adapters"),
        (["fuse", tmp_path / "a", tmp_path / "b", "--target", here["task"], "-m", model, "--run-dir", out,
          "--quiet"], "bottleneck adapters only"),
        (["infer", "-m", model, "-a", tmp_path / "a", "-a", tmp_path / "b", "--active", "fuse(a,b)", "good"],
         "bottleneck adapters only"),
    ]
    for args, word in cases:
        assert word in one_line_error(run(*args)), args
    assert files(here["root"]) | files(tmp_path) == before and not out.exists()
    # a bottleneck adapter cannot be merged (trained and cached like the others)
    ok("add", "pfeiffer", "-m", model, "--save", tmp_path / "bn")
    assert "bottleneck" in one_line_error(run("merge", tmp_path / "bn", "-m", model, "--out", out))
    assert not out.exists()
