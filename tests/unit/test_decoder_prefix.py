"""Prefix tuning on tiny random decoders (GPT-2, Llama with grouped-query attention, Qwen2): the causal mask
under SDPA when transformers leaves it out, cached decoding against full recomputation (left-padded prompts of
different lengths included), gated prefixes (UniPELT) decoded by recomputation, the prefix's key heads, and
parameter counts. tests/e2e/test_decoder_prefix_fixtures.py checks the numbers against AdapterHub."""

from __future__ import annotations

import pytest
import torch

from adapter_cli import AdapterModel
from adapter_cli.generation import Sampling, generate
from conftest import PAD_ID, randomise, tiny_decoder, tiny_decoder_config

FAMILIES = ("gpt2", "llama", "qwen2")
PREFIX = "prefix_tuning[prefix_length=3,bottleneck_size=8]"


def _pair(model_type: str):
    """The same random decoder under SDPA and eager attention, with a prefix ``p`` and a UniPELT ``u``."""
    models = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = AdapterModel.from_config(tiny_decoder_config(model_type)).eval()
        model.base.set_attn_implementation(attn)
        model.add_adapter("p", PREFIX)
        model.add_adapter("u", "unipelt")
        models.append(model)
    for name in ("p", "u"):
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
        for active in ("p", "u", None):
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
    for active in ("p", "u", "stack(p,u)"):
        got = generate(model, ids, mask, active, "lm", Sampling(max_new_tokens=6), eos_token_id=None,
                       pad_token_id=PAD_ID)
        assert got.tokens == _stepwise(model, ids, mask, active, 6), active
    assert model.caches_exactly(model.resolve_composition("p"))
    assert not model.caches_exactly(model.resolve_composition("u"))  # its gate reads the whole sequence


def test_a_grouped_query_prefix_has_the_key_heads() -> None:
    model = tiny_decoder("llama")  # 4 query heads, 2 key/value heads, hidden 32
    model.add_adapter("p", PREFIX)
    model.add_adapter("f", "prefix_tuning_flat[prefix_length=3]")
    assert model.kv_size == 16
    states = model.adapters["p"].states(2)
    assert tuple(states.shape) == (2 * 2, 2, 2, 3, 8)  # [layers x 2, batch, key heads, prefix, head dim]
    assert model.adapters["f"].prefix.control_trans.numel() == 3 * 2 * 2 * 16
    counts = model.adapter_config("p").parameter_count(model.hidden_size, model.num_layers, model.kv_size)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["p"].parameters())
