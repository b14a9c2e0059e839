"""ReFT (LoReFT, NoReFT, DiReFT): configuration, the positions a layer edits, training, and `adapt add` (parity
with AdapterHub is in tests/e2e/test_reft_fixtures.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.errors import CompositionError, ConfigError, UsageError
from adapter_cli.presets import resolve_adapter_config
from conftest import one_line_error, save_tiny_model, write_sentiment_task

H, LAYERS = 40, 3


def tiny(model_type: str = "bert", **overrides):
    from transformers import AutoConfig

    from adapter_cli import AdapterModel

    if model_type == "distilbert":
        config = AutoConfig.for_model("distilbert", vocab_size=120, dim=H, n_layers=LAYERS, n_heads=4,
                                      hidden_dim=80, max_position_embeddings=64, **overrides)
    else:
        config = AutoConfig.for_model(model_type, vocab_size=120, hidden_size=H, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, intermediate_size=80, max_position_embeddings=64,
                                      **overrides)
    torch.manual_seed(0)
    return AdapterModel.from_config(config).eval()


IDS = torch.randint(5, 120, (3, 9), generator=torch.Generator().manual_seed(1))
RIGHT = torch.ones_like(IDS)
RIGHT[1, 6:] = 0  # row 1: 6 real tokens, then padding
LEFT = torch.ones_like(IDS)
LEFT[2, :4] = 0  # row 2: 4 padding tokens, then 5 real ones


def hidden(model, active, mask=RIGHT):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=mask, active=active, head=None).last_hidden_state


# --------------------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("preset, orthogonal, subtract", [("loreft", True, True), ("noreft", False, True),
                                                          ("direft", False, False)])
def test_presets_are_the_reference_presets(preset, orthogonal, subtract):
    config = resolve_adapter_config(preset)
    assert config.architecture == "reft" and config.variant == preset
    assert (config.orthogonality, config.subtract_projection) == (orthogonal, subtract)
    assert (config.layers, config.prefix_positions, config.suffix_positions, config.r) == ("all", 3, 0, 1)
    assert config.dropout == 0.05 and not config.tied_weights and config.non_linearity is None
    assert config.parameter_count(768, 12)["parameters"] == 36888  # AdapterHub's count


@pytest.mark.parametrize("overrides, message", [
    ({"r": 0}, "the rank r must be a whole number of at least 1"),
    ({"prefix_positions": -1}, "prefix_positions must be a whole number of at least 0"),
    ({"suffix_positions": 1.5}, "suffix_positions must be a whole number"),
    ({"prefix_positions": 0, "suffix_positions": 0}, "the adapter edits no token"),
    ({"layers": "first"}, "layers must be \"all\" or a list of layer indices"),
    ({"layers": 2}, "layers must be \"all\" or a list"),
    ({"layers": [0, 0]}, "distinct layer indices"),
    ({"layers": [-1]}, "distinct layer indices >= 0"),
    ({"layers": []}, "non-empty list"),
    ({"non_linearity": "relux"}, "unknown non_linearity 'relux'"),
    ({"dtype": "bfloat16"}, "orthogonality needs float32 or float64"),
    ({"output_reft": False}, "places no intervention"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"tied_weights": "yes"}, "tied_weights must be true or false"),
    ({"reduction_factor": 4}, "unknown key 'reduction_factor'"),
])
def test_bad_configs_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_adapter_config("loreft", overrides)
    assert "\n" not in str(info.value)


def test_rank_and_layers_are_checked_against_the_model():
    with pytest.raises(ConfigError, match="rank r 41 is larger than the hidden size 40"):
        tiny().add_adapter("a", "noreft[r=41]")
    with pytest.raises(ConfigError, match=r"layers names layers \[5\] but the model has 3 layers"):
        tiny().add_adapter("a", "loreft", {"layers": [0, 5]})


def test_config_round_trips_and_counts_what_it_builds():
    model = tiny()
    for spec in ("loreft", "noreft[tied_weights=true,r=4]", "direft[layers=[0,2],suffix_positions=2]"):
        config = resolve_adapter_config(spec)
        assert resolve_adapter_config(config.to_dict()) == config
        name = model.add_adapter(spec.split("[")[0], config, overwrite=True)
        built = model.adapters[name]
        assert sum(p.numel() for p in built.parameters()) == config.parameter_count(H, LAYERS)["parameters"]
        shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
        assert shapes == config.weight_shapes(H, LAYERS)


# --------------------------------------------------------------------------------------- positions

def _edited(model, name, mask):
    """Which (row, position) pairs the adapter changed, for an adapter in the last layer only (so the base
    model's output there is the state it edits)."""
    diff = (hidden(model, name, mask) - hidden(model, None, mask)).abs().amax(-1)
    return {(int(r), int(t)) for r, t in (diff > 0).nonzero()}


@pytest.mark.parametrize("mask, expected", [
    (RIGHT, {(r, t) for r in range(3) for t in (0, 1)} | {(0, 7), (0, 8), (1, 4), (1, 5), (2, 7), (2, 8)}),
    (LEFT, {(r, t) for r in (0, 1) for t in (0, 1, 7, 8)} | {(2, 4), (2, 5), (2, 7), (2, 8)}),
    (None, {(r, t) for r in range(3) for t in (0, 1, 7, 8)}),
])
def test_prefix_and_suffix_are_the_real_tokens_of_each_row(mask, expected):
    model = tiny()
    model.add_adapter("r", "noreft", {"layers": [LAYERS - 1], "prefix_positions": 2, "suffix_positions": 2})
    assert _edited(model, "r", mask) == expected


def test_an_edited_state_is_the_loreft_formula():
    """h + Rᵀ(W h + b − R h) at the edited positions, with R's rows orthonormal."""
    model = tiny()
    model.add_adapter("r", "loreft", {"layers": [LAYERS - 1], "r": 3, "non_linearity": "tanh",
                                      "tied_weights": True, "suffix_positions": 1})
    unit = model.adapters["r"].reft[str(LAYERS - 1)].units[0]
    R, W, b = unit.projection.weight.detach(), unit.learned_source.weight.detach(), unit.learned_source.bias.detach()
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    h = hidden(model, None)
    out = hidden(model, "r")
    for row, pos in ((0, 0), (0, 2), (1, 5), (2, 8)):
        x = h[row, pos]
        assert torch.allclose(out[row, pos], x + R.T @ (torch.tanh(W @ x + b) - R @ x), atol=1e-5)
    assert torch.equal(out[1, 3], h[1, 3])


def test_positions_no_row_has_are_one_line_errors():
    model = tiny()
    model.add_adapter("suffix", "noreft[prefix_positions=0,suffix_positions=7]")
    model.add_adapter("both", "direft[prefix_positions=1,suffix_positions=10]")
    model.add_adapter("prefix", "noreft[prefix_positions=6]")
    with pytest.raises(UsageError, match="edits the last 7 tokens of each row, but row 1 has 6"):
        hidden(model, "suffix")
    with pytest.raises(UsageError, match="would write prefix states into suffix positions"):
        hidden(model, "both")
    with pytest.raises(UsageError, match="edits the first 6 tokens of each row, but row 2 has 5"):
        hidden(model, "prefix", LEFT)
    hidden(model, "prefix")  # right padding: the prefix runs into padding, harmless, as in the reference


def test_a_row_shorter_than_the_suffix_is_refused_alone_and_batched():
    """The answer must not depend on what else is in the batch: the reference cuts the suffix to the padded
    length, so a short row ran alone and failed beside a longer one."""
    model = tiny()
    model.add_adapter("suffix", "loreft[prefix_positions=0,suffix_positions=5]")
    long_and_short = (torch.tensor([[7, 8, 9, 10, 11, 12], [7, 8, 9, 10, 0, 0]]),
                      torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))
    for ids, mask in (long_and_short, (long_and_short[0][1:, :4], long_and_short[1][1:, :4])):
        with pytest.raises(UsageError, match="edits the last 5 tokens of each row, but row .* has 4"):
            model(input_ids=ids, attention_mask=mask, active="suffix", head=None)


def test_compositions_follow_the_reference_rule():
    model = tiny()
    model.add_adapter("r", "loreft")
    model.add_adapter("q", "noreft")
    model.add_adapter("bn", "pfeiffer")
    model.add_adapter("lo", "lora")
    assert not torch.equal(hidden(model, "stack(r,bn,lo)"), hidden(model, "stack(bn,lo)"))
    for spec in ("stack(bn,r)", "parallel(r,bn)", "batch_split(r,bn,sizes=[1,2])", "average(r,bn)"):
        with pytest.raises(CompositionError, match="runs alone or first in a stack"):
            model.set_active(spec)
    with pytest.raises(CompositionError, match="holds 2 ReFT adapters"):
        model.set_active("stack(r,q)")
    with pytest.raises(CompositionError, match=r"'r' is a loreft adapter; run it first in a stack"):
        model.add_fusion(["r", "bn"])
    model.delete_adapter("r")
    assert all("r" not in site.refts for site in model._reft_sites.sites.values())


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_other_families_and_copies(model_type):
    model = tiny(model_type)
    model.add_adapter("r", "direft[suffix_positions=2]")
    out = hidden(model, "r")
    assert not torch.equal(out, hidden(model, None))
    assert torch.equal(hidden(copy.deepcopy(model), "r"), out)
    with torch.no_grad():  # the hook is first: recorded hidden states include the edit, as the reference's do
        states = model(input_ids=IDS, attention_mask=RIGHT, active="r", output_hidden_states=True).hidden_states
    assert torch.equal(states[-1], out)


# --------------------------------------------------------------------------------------- training

def _step(model, labels, checkpointing: bool = False):
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train_adapters(["r"], heads=["h"])
    model.zero_grad()
    out = model(input_ids=IDS, attention_mask=RIGHT, active="r", labels=labels)
    out.loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_a_training_step_reaches_every_intervention_and_nothing_frozen():
    model = tiny()
    model.add_adapter("r", "loreft[suffix_positions=1]")
    model.add_head("h", num_labels=2)
    grads = _step(model, torch.tensor([0, 1, 1]))
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trained and not any(k.startswith("base.") for k in grads)
    for key in ("learned_source.weight", "learned_source.bias", "projection.parametrizations.weight.original"):
        for layer in range(LAYERS):
            for unit in (0, 1):
                grad = grads[f"adapters.r.reft.{layer}.units.{unit}.{key}"].abs().sum()
                # the head reads the first token, which the last layer's suffix edit does not reach
                assert (grad == 0) if (layer, unit) == (LAYERS - 1, 1) else (grad > 0), (key, layer, unit)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    optimizer.step()
    R = model.adapters["r"].reft["1"].units[0].projection.weight
    assert torch.allclose(R @ R.T, torch.eye(1), atol=1e-5)  # still orthonormal after the step


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # the same numbers in both passes
    model.add_adapter("r", "noreft[suffix_positions=2,dropout=0.0]")
    model.add_head("h", num_labels=2)
    labels = torch.tensor([0, 1, 1])
    plain = _step(model, labels)
    model.train()
    model.gradient_checkpointing_enable()
    model.zero_grad()
    loss = model(input_ids=IDS, attention_mask=RIGHT, active="r", labels=labels).loss
    with torch.no_grad():  # another call in between, with another mask: the recomputation must not see it
        model(input_ids=IDS, attention_mask=LEFT, active="r")
    loss.backward()
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, plain[k], atol=1e-6), k


def test_a_recomputation_sees_the_mask_of_its_forward_pass():
    """Where transformers recomputes a layer with its hooks (checkpointing around ``__call__``), the wrapper
    gives the recomputation the mask of the pass it recomputes, not the latest one."""
    sites = tiny()._reft_sites
    later: list = []
    run = sites.wrap_checkpoint(lambda function, *args: later.append(function))
    sites.positions.set((RIGHT, {}))
    run(lambda: sites.positions.state()[0])
    sites.positions.set((LEFT, {}))  # another forward pass
    assert later[0]() is RIGHT and sites.positions.state()[0] is LEFT


def test_half_precision_keeps_the_orthogonal_projection_in_float32():
    model = tiny().to(torch.bfloat16)
    model.add_adapter("r", "loreft")
    unit = model.adapters["r"].reft["0"].units[0]
    assert unit.learned_source.weight.dtype == torch.bfloat16 and unit.projection.weight.dtype == torch.float32
    assert hidden(model, "r").dtype == torch.bfloat16


# --------------------------------------------------------------------------------------- the CLI

def test_adapt_add_loreft(tmp_path):
    from adapter_cli.cli import app

    runner = CliRunner()
    data = json.loads(runner.invoke(app, ["add", "loreft", "r=4", "tied_weights=true", "--hidden-size", "768",
                                          "--num-layers", "12", "--json"]).stdout)
    assert data["method"] == "reft" and data["variant"] == "loreft" and data["parameters"] == 73776  # AdapterHub's
    assert data["placements"] == [{"location": "output", "layers": list(range(12)), "rank": 4, "parameters": 73776}]
    table = runner.invoke(app, ["add", "direft", "--hidden-size", "768", "--num-layers", "12"])
    assert table.exit_code == 0 and "36,888" in table.stdout
    for args, message in ((["noreft", "prefix_positions=0"], "edits no token"),
                          (["loreft", "layers=[0,12]"], "layers names layers [12]"),
                          (["loreft", "r=0"], "the rank r must be")):
        result = runner.invoke(app, ["add", *args, "--hidden-size", "768", "--num-layers", "12"])
        assert message in one_line_error(result)
    model = tiny()
    model.base.save_pretrained(tmp_path / "base")
    out = tmp_path / "saved"
    result = runner.invoke(app, ["add", "loreft", "-m", str(tmp_path / "base"), "--save", str(out), "--format",
                                 "adapterhub", "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert info["method"] == "reft" and info["format"] == "adapterhub" and info["parameters"] > 486  # + R's bases
    refused = runner.invoke(app, ["add", "direft", "-m", str(tmp_path / "base"), "--save", str(tmp_path / "d"),
                                  "--format", "adapterhub"])
    assert "cannot be saved in AdapterHub's format" in one_line_error(refused)


def test_adapt_infer_refuses_rows_shorter_than_the_suffix(tmp_path):
    from adapter_cli.cli import app

    runner = CliRunner()
    model = str(save_tiny_model(tmp_path / "tiny"))
    saved = tmp_path / "suffix5"
    added = runner.invoke(app, ["add", "noreft", "prefix_positions=0", "suffix_positions=5", "-m", model,
                                "--head", "classification:2", "--save", str(saved)])
    assert added.exit_code == 0, added.stderr
    ok = runner.invoke(app, ["infer", "-m", model, "-a", str(saved), "the worst plot ever made"])
    assert ok.exit_code == 0, ok.stderr
    short = runner.invoke(app, ["infer", "-m", model, "-a", str(saved), "good film", "the worst plot ever made"])
    assert "edits the last 5 tokens of each row, but row 0 has 4" in one_line_error(short)


def test_adapt_train_caches_a_loreft_adapter(tmp_path, monkeypatch):
    from adapter_cli import AdapterModel
    from adapter_cli.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    model, task = save_tiny_model(tmp_path / "tiny"), write_sentiment_task(tmp_path / "task")
    result = CliRunner().invoke(app, ["train", "--task", str(task), "--model", str(model), "--config",
                                      "loreft[suffix_positions=1]", "--quiet", "--json", "epochs=1", "batch_size=16",
                                      "learning_rate=5e-3", "save_every_steps=100", "patience=null"])
    assert result.exit_code == 0, result.stderr
    run_dir = tmp_path / json.loads(result.stdout)["run_dir"]
    m = AdapterModel.from_pretrained(model)
    config = m.adapters[m.load_adapter(run_dir / "best")].config
    assert config.variant == "loreft" and config.suffix_positions == 1


@pytest.mark.parametrize("configs", [("loreft", "noreft"), ("pfeiffer+inv", "pfeiffer+inv")], ids=["reft", "inv"])
def test_routed_rows_of_adapters_that_cannot_share_a_split_run_group_by_group(tmp_path, configs):
    """--route-column packs rows of plain adapters into one batch split; ReFT adapters and invertible layers
    cannot share one, so their rows run per adapter, with the answers of a batch of one."""
    import csv

    from adapter_cli import AdapterModel
    from adapter_cli.cli import app

    runner = CliRunner()
    model_dir = save_tiny_model(tmp_path / "tiny")
    m = AdapterModel.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(3)
    for name, config in zip("ab", configs):
        m.add_adapter(name, config)
        m.add_head(name, num_labels=2)
    with torch.no_grad():
        for p in list(m.adapters.parameters()) + list(m.heads.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for name in "ab":
        m.save_adapter(tmp_path / name, name)
    with open(tmp_path / "mixed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "task"])
        writer.writeheader()
        writer.writerows({"text": t, "task": "ab"[i % 2]} for i, t in
                         enumerate(["good fine day", "bad awful day here", "the film was good", "awful film"]))
    answers = []
    for batch in ("4", "1"):
        result = runner.invoke(app, ["infer", "-m", str(model_dir), "-a", str(tmp_path / "a"), "-a", str(tmp_path / "b"),
                                     "--input", str(tmp_path / "mixed.csv"), "--route-column", "task",
                                     "--batch-size", batch])
        assert result.exit_code == 0, result.stderr
        answers.append([json.loads(line) for line in result.stdout.splitlines()])
    assert [r["active"] for r in answers[0]] == ["a", "b", "a", "b"]
    for batched, alone in zip(*answers):
        assert batched["label"] == alone["label"] and batched["score"] == pytest.approx(alone["score"], abs=1e-5)
