"""Prefix tuning and config unions on tiny random models: what the fixtures cannot show (inactive prefixes
leave the model bit-identical, a row answers the same whatever its batch, gradient checkpointing, eject,
round trips, union configs and their refusals)."""

from __future__ import annotations

import pytest
import torch

from conftest import randomise

IDS = torch.tensor([[5, 17, 33, 48, 9, 61, 70], [8, 22, 31, 4, 0, 0, 0], [12, 40, 41, 42, 43, 44, 7],
                    [6, 7, 8, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def _model(kind: str = "bert"):
    from transformers import BertConfig, DistilBertConfig

    from adapter_cli import AdapterModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                        vocab_size=99) if kind == "bert" else \
        DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=37, vocab_size=99)
    return AdapterModel.from_config(config).eval()


def _hidden(model, active, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, active=active, head=None).last_hidden_state


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_an_inactive_prefix_leaves_the_model_bit_identical(kind):
    model = _model(kind)
    plain = _hidden(model, None)
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 4, "bottleneck_size": 8})
    model.add_adapter("s", "pfeiffer")
    assert model.config._attn_implementation == "adapt_prefix_sdpa"
    assert torch.equal(_hidden(model, None), plain)
    assert torch.equal(_hidden(model, "s"), _hidden(_with(model, "s"), "s"))


def _with(model, keep):
    """The same model with only ``keep`` loaded (a deep copy)."""
    import copy

    other = copy.deepcopy(model)
    for name in [n for n in other.adapters if n != keep]:
        other.delete_adapter(name)
    return other


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_each_row_answers_as_it_would_alone(kind):
    """Padding, batch_split groups of different prefix lengths, gates: a row's answer never depends on the
    other rows (AdapterHub's DistilBERT SDPA path and its padded splits do not hold this)."""
    model = _model(kind)
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 5, "bottleneck_size": 8})
    model.add_adapter("q", "prefix_tuning_flat", {"prefix_length": 2, "leave_out": [1]})
    randomise(model, scale=0.5)
    split = _hidden(model, "batch_split(p,q,sizes=[2,2])")
    for row in range(4):
        name = "p" if row < 2 else "q"
        n = int(MASK[row].sum())
        alone = _hidden(model, name, IDS[row:row + 1, :n], MASK[row:row + 1, :n])
        assert (split[row, :n] - alone[0]).abs().max() < 1e-5, row
        assert (_hidden(model, name)[row, :n] - alone[0]).abs().max() < 1e-5, row


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model()
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 3, "bottleneck_size": 8, "use_gating": True})
    model.add_adapter("s", "pfeiffer")
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train_adapters(["p", "s"])

    def grads():
        model.zero_grad()
        model(input_ids=IDS, attention_mask=MASK, active="stack(p,s)", head=None).last_hidden_state.pow(2).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    checked = grads()
    assert plain.keys() == checked.keys() and any("prefix.wte" in k for k in plain)
    assert all(torch.allclose(plain[k], checked[k], atol=1e-6) for k in plain)


def test_eject_and_round_trips_keep_the_outputs(tmp_path):
    model = _model()
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 3, "bottleneck_size": 8, "use_gating": True,
                                             "shared_gating": False})
    randomise(model, scale=0.5)
    before = _hidden(model, "p")
    for fmt in ("adapt", "adapterhub"):
        model.save_adapter(tmp_path / fmt, "p", format=fmt)
        model.load_adapter(tmp_path / fmt, name=f"p_{fmt}")
        assert torch.equal(_hidden(model, f"p_{fmt}"), before)
    model.eject_prefix("p")
    assert (_hidden(model, "p") - before).abs().max() < 1e-6
    with pytest.raises(Exception, match="not a loaded adapter with a prefix"):
        model.eject_prefix("p_missing")


def test_unions_run_every_part_under_one_name(tmp_path):
    model = _model()
    model.add_adapter("u", "unipelt", {"prefix_length": 3})
    randomise(model, scale=0.5)
    assert set(model.adapters["u"].parts) == {"prefix_tuning", "bottleneck", "lora"}
    out = _hidden(model, "u")
    assert not torch.allclose(out, _hidden(model, None))
    for fmt in ("adapt", "adapterhub"):
        model.save_adapter(tmp_path / fmt, "u", format=fmt)
        model.load_adapter(tmp_path / fmt, name=f"u_{fmt}")
        assert torch.equal(_hidden(model, f"u_{fmt}"), out)
    model.delete_adapter("u")
    assert "u" not in model._prefix_sites.names


@pytest.mark.parametrize("data,says", [
    ({"configs": []}, "needs configs"),
    ({"configs": [{"architecture": "lora"}, {"architecture": "lora", "r": 2}]}, "2 lora parts"),
    ({"configs": [{"architecture": "union", "configs": []}]}, "holds no union"),
    ({"configs": [{"architecture": "reft"}]}, "not reft"),
    ({"configs": [{"architecture": "prefix_tuning"}, {"architecture": "lora"}], "dropout": 0.1}, "several"),
    ({"configs": [{"architecture": "prefix_tuning"}], "r": 4}, "none of its parts"),
])
def test_bad_unions_are_refused(data, says):
    from adapter_cli.errors import ConfigError
    from adapter_cli.methods.union import UnionConfig

    with pytest.raises(ConfigError, match=says):
        UnionConfig.from_dict(data)


def test_a_change_goes_to_the_part_that_has_the_field():
    from adapter_cli.presets import resolve_adapter_config

    config = resolve_adapter_config("mam", {"prefix_length": 7, "reduction_factor": 4})
    assert config.part("prefix_tuning").prefix_length == 7 and config.part("bottleneck").reduction_factor == 4
    assert config.part("prefix_tuning").bottleneck_size == 800


def test_prefixes_in_fuse_or_average_are_refused():
    from adapter_cli.errors import CompositionError

    model = _model()
    model.add_adapter("p", "prefix_tuning_flat", {"prefix_length": 2})
    model.add_adapter("m", "mam", {"prefix_length": 2})
    model.add_adapter("s", "pfeiffer")
    for spec in ("fuse(p,s)", "average(s,p)", "stack(s,fuse(m,s))"):
        with pytest.raises(CompositionError, match="cannot run inside"):
            model.resolve_composition(spec)


def test_a_second_adapter_model_over_the_same_base_is_refused():
    from adapter_cli import AdapterModel
    from adapter_cli.errors import UsageError

    model = _model()
    model.add_adapter("p", "prefix_tuning_flat", {"prefix_length": 2})
    other = AdapterModel(model.base)
    with pytest.raises(UsageError, match="already has prefix-tuning adapters stitched in"):
        other.add_adapter("q", "prefix_tuning_flat", {"prefix_length": 2})


def test_prefixes_survive_a_change_of_attention_implementation():
    """set_attn_implementation("eager") after a prefix was added: the prefix keeps running (wrapped again)."""
    model = _model()
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 3, "bottleneck_size": 8})
    randomise(model, scale=0.5)
    before = _hidden(model, "p")
    model.base.set_attn_implementation("eager")
    assert (_hidden(model, "p") - before).abs().max() < 1e-5
    assert model.config._attn_implementation == "adapt_prefix_eager"
    assert not torch.allclose(_hidden(model, "p"), _hidden(model, None))


def test_a_unions_prefix_is_ejected_in_place():
    model = _model()
    model.add_adapter("m", "mam", {"prefix_length": 3})
    randomise(model, scale=0.5)
    before = _hidden(model, "m")
    model.eject_prefix("m")
    assert model.adapter_config("m").part("prefix_tuning").flat is True
    assert (_hidden(model, "m") - before).abs().max() < 1e-5


def test_union_files_and_pack_names():
    from adapter_cli.errors import ConfigError
    from adapter_cli.hub.pack import architecture_name
    from adapter_cli.methods import config_from_dict
    from adapter_cli.presets import resolve_adapter_config

    union = config_from_dict({"configs": [{"architecture": "prefix_tuning"}, {"architecture": "lora"}]})
    assert union.architecture == "union"  # a file need not say "architecture: union"
    assert architecture_name(resolve_adapter_config("mam", {"prefix_length": 4}).to_dict()) == "mam"
    assert architecture_name(union.to_dict()) == "union"
    with pytest.raises(ConfigError, match="leaves out every layer"):
        resolve_adapter_config("prefix_tuning", {"leave_out": [0, 1, 2]}).parameter_count(32, 3)
