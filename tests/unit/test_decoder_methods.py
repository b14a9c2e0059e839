"""Prefix tuning and ReFT on tiny random decoders (GPT-2, Llama with grouped-query attention, Qwen2): the causal
mask under SDPA when transformers leaves it out, cached decoding against full recomputation (left-padded prompts
of different lengths included), gated prefixes (UniPELT) and ReFT decoded by recomputation, the prefix's key
heads, and parameter counts. tests/e2e/test_decoder_method_fixtures.py checks the numbers against AdapterHub."""

from __future__ import annotations

import pytest
import torch

from adapter_cli import AdapterModel
from adapter_cli.generation import Sampling, generate
from conftest import PAD_ID, randomise, tiny_decoder, tiny_decoder_config

FAMILIES = ("gpt2", "llama", "qwen2")
PREFIX = "prefix_tuning[prefix_length=3,bottleneck_size=8]"


def _pair(model_type: str):
    """The same random decoder under SDPA and eager attention, with a prefix ``p``, a UniPELT ``u`` and a NoReFT
    ``r`` (the first token and the last two)."""
    models = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = AdapterModel.from_config(tiny_decoder_config(model_type)).eval()
        model.base.set_attn_implementation(attn)
        model.add_adapter("p", PREFIX)
        model.add_adapter("u", "unipelt")
        model.add_adapter("r", "noreft[prefix_positions=1,suffix_positions=2,r=2]")
        models.append(model)
    for name in ("p", "u", "r"):
        randomise(models[0].adapters[name], scale=0.5)
    models[1].load_state_dict(models[0].state_dict())
    return models


def _ids(rows: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(4, 70, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_sdpa_without_a_mask_attends_as_eager(model_type) -> None:
    """No padding: transformers hands SDPA no mask (its is_causal would align the diagonal to the prefix)."""
    sdpa, eager = _pair(model_type)
    ids = _ids()
    with torch.no_grad():
        for active in ("p", "u", "r", None):
            a = sdpa(input_ids=ids, active=active, head=None).last_hidden_state
            b = eager(input_ids=ids, active=active, head=None).last_hidden_state
            assert (a - b).abs().max() < 1e-5, active
        base = sdpa(input_ids=ids, head=None).last_hidden_state
        assert (sdpa(input_ids=ids, active="p", head=None).last_hidden_state - base).abs().max() > 1e-3


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_token_never_sees_a_later_one(model_type) -> None:
    sdpa, _ = _pair(model_type)
    ids = _ids(rows=1)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 4) % 66 + 4
    with torch.no_grad():
        a = sdpa(input_ids=ids, active="p", head=None).last_hidden_state
        b = sdpa(input_ids=changed, active="p", head=None).last_hidden_state
    assert torch.equal(a[:, :-1], b[:, :-1]) or (a[:, :-1] - b[:, :-1]).abs().max() < 1e-6
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def _stepwise(model, ids, mask, active, steps: int) -> list[list[int]]:
    """Greedy decoding by recomputing the whole (left-padded) sequence at every step, without a cache."""
    tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, active=active, head="lm")
        chosen = out.logits[:, -1].argmax(-1)
        for row, token in enumerate(chosen.tolist()):
            tokens[row].append(token)
        ids = torch.cat([ids, chosen[:, None]], dim=-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return tokens


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cached_decoding_equals_recomputation_with_left_padding(model_type) -> None:
    model, _ = _pair(model_type)
    model.add_head("lm", "causal_lm", vocab_size=70)
    randomise(model.heads["lm"], seed=5, scale=1.0)
    ids = _ids(rows=3, length=7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: rows of different lengths
    mask[2, :5] = 0
    ids[mask == 0] = PAD_ID
    for active in ("p", "u", "stack(p,u)", "r", "stack(r,p)"):
        got = generate(model, ids, mask, active, "lm", Sampling(max_new_tokens=6), eos_token_id=None,
                       pad_token_id=PAD_ID)
        assert got.tokens == _stepwise(model, ids, mask, active, 6), active
    assert model.caches_exactly(model.resolve_composition("p"))
    assert not model.caches_exactly(model.resolve_composition("u"))  # its gate reads the whole sequence
    assert not model.caches_exactly(model.resolve_composition("stack(r,p)"))  # its positions move as it grows


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_gated_bottleneck_and_lora_are_decoded_by_recomputation(model_type) -> None:
    """A bottleneck adapter's or a LoRA's own gate (``use_gating: true``) averages over the whole sequence too:
    decoded against the cache its gate would read the new token alone (found in review: other tokens)."""
    torch.manual_seed(0)
    model = AdapterModel.from_config(tiny_decoder_config(model_type)).eval()
    model.add_adapter("g", "pfeiffer", {"use_gating": True})
    model.add_adapter("l", "lora", {"use_gating": True})
    model.add_head("lm", "causal_lm", vocab_size=70)
    for name in ("g", "l"):
        randomise(model.adapters[name], scale=0.5)
    randomise(model.heads["lm"], seed=5, scale=1.0)
    ids = _ids(rows=2, length=6)
    mask = torch.ones_like(ids)
    for active in ("g", "l", "stack(l,g)"):
        assert not model.caches_exactly(model.resolve_composition(active)), active
        got = generate(model, ids, mask, active, "lm", Sampling(max_new_tokens=5), eos_token_id=None,
                       pad_token_id=PAD_ID)
        assert got.tokens == _stepwise(model, ids, mask, active, 5), active


def test_a_grouped_query_prefix_has_the_key_heads() -> None:
    model = tiny_decoder("llama")  # 4 query heads, 2 key/value heads, hidden 32
    model.add_adapter("p", PREFIX)
    model.add_adapter("f", "prefix_tuning_flat[prefix_length=3]")
    assert model.kv_size == 16
    states = model.adapters["p"].states(2)[""]  # one stack: one generator
    assert tuple(states.shape) == (2 * 2, 2, 2, 3, 8)  # [layers x 2, batch, key heads, prefix, head dim]
    assert model.adapters["f"].prefix.control_trans.numel() == 3 * 2 * 2 * 16
    counts = model.adapter_config("p").parameter_count(model.hidden_size, model.num_layers, model.kv_size)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["p"].parameters())


# ====================================================================== found in review


def test_a_head_width_of_its_own_sizes_the_prefix() -> None:
    """A config whose head_dim is not hidden / heads (as Mistral-Nemo's): the prefix has the keys' width."""
    model = tiny_decoder("llama", head_dim=16)  # 4 query heads of 16 (64 wide) on a hidden size of 32
    model.add_adapter("p", PREFIX)
    assert model.head_dim == 16 and model.kv_size == 32
    randomise(model.adapters["p"], scale=0.5)
    ids = _ids(rows=2)
    with torch.no_grad():
        moved = model(input_ids=ids, active="p", head=None).last_hidden_state - \
            model(input_ids=ids, head=None).last_hidden_state
    assert moved.abs().max() > 1e-3
    counts = model.adapter_config("p").parameter_count(model.hidden_size, model.num_layers, model.kv_size)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["p"].parameters())


def _saved_adapterhub(tmp_path, config: str, **overrides):
    from adapter_cli.formats import read_adapter

    model = tiny_decoder("llama", **overrides)
    model.add_adapter("p", config)
    model.save_adapter(tmp_path / "p", "p", format="adapterhub")
    return read_adapter(tmp_path / "p", shapes_only=True)


@pytest.mark.parametrize("config", ["prefix_tuning[leave_out=[3]]", "prefix_tuning_flat[leave_out=[2,3],prefix_length=1]",
                                    "prefix_tuning[use_gating=true,leave_out=[3]]"])
def test_inspect_takes_an_adapterhub_grouped_query_prefix_that_leaves_out_a_high_layer(tmp_path, config) -> None:
    from adapter_cli.formats import check_weight_shapes

    artifact = _saved_adapterhub(tmp_path, config, num_hidden_layers=4)
    assert artifact.base.num_layers == 4  # read off the per-layer copies AdapterHub writes
    check_weight_shapes(artifact)


def test_inspect_checks_a_gpt2_prefix_width(tmp_path) -> None:
    from adapter_cli.errors import ArtifactError
    from adapter_cli.formats import check_weight_shapes, read_adapter

    model = tiny_decoder("gpt2")
    model.add_adapter("p", PREFIX)
    model.save_adapter(tmp_path / "p", "p")
    artifact = read_adapter(tmp_path / "p")
    for key in ("prefix.control_trans.2.weight", "prefix.control_trans.2.bias"):
        artifact.weights[key] = artifact.weights[key][: artifact.weights[key].shape[0] // 2]
    with pytest.raises(ArtifactError):
        check_weight_shapes(artifact)


def test_an_adapterhub_prefix_of_another_layer_and_head_split_is_refused(tmp_path) -> None:
    """4 layers of 1 key head are as wide as 2 layers of 2: the layer count in the file tells them apart."""
    from adapter_cli.errors import UsageError

    made = tiny_decoder("llama", num_hidden_layers=4, num_key_value_heads=1)
    made.add_adapter("p", "prefix_tuning_flat[prefix_length=2]")
    made.save_adapter(tmp_path / "p", "p", format="adapterhub")
    other = tiny_decoder("llama")  # 2 layers, 2 key heads
    with pytest.raises(UsageError, match="4 layers"):
        other.load_adapter(tmp_path / "p")
    assert "p" not in other.adapters
