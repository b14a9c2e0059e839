"""LoRA-family configuration, layers and merging on tiny random models (parity with AdapterHub is in
tests/e2e/test_lora_fixtures.py; PEFT's in tests/unit/test_peft.py)."""

from __future__ import annotations

import pytest
import torch

from adapter_cli.errors import CompositionError, ConfigError, UsageError
from adapter_cli.presets import resolve_adapter_config

H, LAYERS, INNER = 40, 3, 80


def tiny(model_type: str = "bert"):
    from transformers import AutoConfig

    from adapter_cli import AdapterModel

    if model_type == "distilbert":
        config = AutoConfig.for_model("distilbert", vocab_size=120, dim=H, n_layers=LAYERS, n_heads=4,
                                      hidden_dim=INNER, max_position_embeddings=64)
    else:
        config = AutoConfig.for_model(model_type, vocab_size=120, hidden_size=H, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, intermediate_size=INNER, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AdapterModel.from_config(config).eval()
    with torch.no_grad():  # transformers starts biases at zero, which would hide a forgotten bias
        for name, p in model.base.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def perturb(model, name: str) -> None:
    with torch.no_grad():
        for key, p in model.adapters[name].named_parameters():
            p.add_(torch.randn_like(p) * 0.2)


IDS = torch.randint(5, 120, (3, 9), generator=torch.Generator().manual_seed(1))
MASK = torch.ones_like(IDS)
MASK[1, 6:] = 0


def hidden(model, active):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, active=active, head=None).last_hidden_state


SPECS = ["lora", "ia3", "dora", "vera",
         "lora[r=4,alpha=16,attn_matrices=[q,k,v],intermediate_lora=true,output_lora=true,leave_out=[1]]",
         "ia3[output_lora=true,attn_matrices=[q]]", "dora[r=2,alpha=6,intermediate_lora=true]",
         "lora[dora_style=peft,use_dora=true]", "ia3[scaled_inputs=[intermediate]]"]


@pytest.mark.parametrize("spec", ["lora", "ia3", "dora", "vera"])
def test_presets_are_the_reference_presets(spec):
    config = resolve_adapter_config(spec)
    assert config.architecture == "lora" and config.variant == spec
    assert resolve_adapter_config(config.to_dict()) == config


@pytest.mark.parametrize("spec", SPECS)
def test_a_new_adapter_starts_as_the_base_model_and_shapes_follow_the_config(spec):
    model = tiny()
    base = hidden(model, None)
    name = model.add_adapter("a", spec)
    torch.testing.assert_close(hidden(model, name), base, atol=1e-6, rtol=0)
    config = model.adapters[name].config
    built = {k: tuple(v.shape) for k, v in model.adapters[name].state_dict().items()}
    assert built == config.weight_shapes(H, LAYERS, INNER)
    counts = config.parameter_count(H, LAYERS, INNER)
    assert counts["parameters"] == sum(v.numel() for v in model.adapters[name].state_dict().values())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_merging_gives_the_unmerged_outputs_and_unmerging_restores_the_weights(spec, model_type):
    model = tiny(model_type)
    base = hidden(model, None)
    weights = {k: v.clone() for k, v in model.base.state_dict().items()}
    model.add_adapter("a", spec)
    perturb(model, "a")
    unmerged = hidden(model, "a")
    assert (unmerged - base).abs().max() > 1e-3
    model.merge_adapter("a")
    torch.testing.assert_close(hidden(model, None), unmerged, atol=2e-5, rtol=0)
    torch.testing.assert_close(hidden(model, "a"), unmerged, atol=2e-5, rtol=0)  # not applied twice
    model.unmerge_adapter()
    assert all(torch.equal(v, weights[k]) for k, v in model.base.state_dict().items())
    torch.testing.assert_close(hidden(model, "a"), unmerged, atol=0, rtol=0)


def test_what_cannot_be_merged_is_refused():
    model = tiny()
    model.add_adapter("gated", "lora[use_gating=true]")
    model.add_adapter("bn", "pfeiffer")
    with pytest.raises(UsageError, match="gated"):
        model.merge_adapter("gated")
    with pytest.raises(UsageError, match="only LoRA-family adapters"):
        model.merge_adapter("bn")
    model.add_adapter("a", "lora")
    model.add_adapter("b", "lora")
    model.merge_adapter("a")
    with pytest.raises(UsageError, match="'a' is already merged"):
        model.merge_adapter("b")
    with pytest.raises(CompositionError, match="'a' is merged into the model's weights.*'b'"):
        hidden(model, "stack(a,b)")
    model.delete_adapter("a")  # deleting the merged adapter takes it out of the weights first
    assert model.merged is None


@pytest.mark.parametrize("changes, message", [
    ({"r": 0}, "the rank r must be a whole number of at least 1"),
    ({"r": True}, "the rank r must be"),
    ({"attn_matrices": ["q", "x"]}, "attn_matrices names 'x', which is not an attention matrix"),
    ({"attn_matrices": [], "intermediate_lora": False}, "changes no linear layer"),
    ({"composition_mode": "mul"}, "composition_mode must be 'add'"),
    ({"alpha": 0}, "alpha must be a non-zero number"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"leave_out": [-1]}, "leave_out holds layer indices"),
    ({"init_weights": "xavier"}, "unknown init_weights"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"vera_d": 0.1, "intermediate_lora": True}, "VeRA shares one frozen A and B"),
])
def test_bad_configs_are_one_clear_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_adapter_config("lora", changes)


@pytest.mark.parametrize("changes, message", [
    ({"r": 2}, "needs r: 1"), ({"dropout": 0.1}, "does not take dropout"), ({"use_dora": True}, "cannot be combined"),
])
def test_ia3_refuses_what_the_reference_refuses(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_adapter_config("ia3", changes)


def test_a_rank_larger_than_the_hidden_size_is_refused():
    model = tiny()
    with pytest.raises(ConfigError, match="the rank r 64 is larger than the hidden size 40"):
        model.add_adapter("big", "lora", {"r": 64})
    assert "big" not in model.adapters


def test_training_reaches_only_the_adapter_and_vera_keeps_its_projections_frozen():
    model = tiny().train()
    model.add_adapter("v", "vera")
    model.add_adapter("l", "lora")
    model.train_adapters(["v", "l"])
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith("adapters.") for k in trainable)
    assert not any(".shared." in k for k in trainable)
    out = model(input_ids=IDS, attention_mask=MASK, active="stack(v,l)", head=None).last_hidden_state
    out.sum().backward()
    grads = {k for k, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable


def test_lora_and_bottleneck_adapters_mix_in_one_model():
    model = tiny()
    model.add_adapter("bn", "pfeiffer")
    model.add_adapter("lo", "lora")
    perturb(model, "bn")
    perturb(model, "lo")
    both = hidden(model, "stack(bn,lo)")
    assert (both - hidden(model, "bn")).abs().max() > 1e-3 and (both - hidden(model, "lo")).abs().max() > 1e-3
    rows = torch.cat([hidden(model, "bn")[:1], hidden(model, "lo")[1:]])
    torch.testing.assert_close(hidden(model, "batch_split(bn,lo,sizes=[1,2])"), rows, atol=1e-6, rtol=0)
    with pytest.raises(CompositionError, match="'lo' is a lora adapter"):
        model.add_fusion(["bn", "lo"])


def test_gradient_checkpointing_recomputes_with_the_adapters_active():
    grads = []
    for checkpointing in (False, True):
        model = tiny().train()
        model.base.config.hidden_dropout_prob = model.base.config.attention_probs_dropout_prob = 0.0
        for module in model.base.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.add_adapter("d", "dora[intermediate_lora=true]")
        perturb(model, "d")
        model.train_adapters(["d"])
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=IDS, attention_mask=MASK, active="d", head=None).last_hidden_state.pow(2).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.adapters["d"].named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-5, rtol=1e-4)
