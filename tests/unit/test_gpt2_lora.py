"""The LoRA family on GPT-2, whose projections are Conv1D modules and whose q, k and v sit side by side in one
(``c_attn``): AdapterHub's LoRAMergedLinear layout in its files, what the reference cannot build refused, and
the compositions it refuses there run as on every other family. The numbers against adapters 1.3.0 are in
tests/e2e/test_lora_fixtures.py (tests/fixtures/lora_gpt2)."""

from __future__ import annotations

import pytest
import torch

from adapter_cli.errors import ArtifactError, UnsupportedModel, UsageError
from conftest import FIXTURES, randomise, tiny_decoder
from test_decoders import decoder_inputs

ROOT = FIXTURES / "lora_gpt2"


@pytest.mark.parametrize("preset, variant", [("dora", "DoRA"), ("vera", "VeRA")])
def test_variants_the_reference_cannot_build_are_one_line(preset, variant) -> None:
    model = tiny_decoder("gpt2")
    with pytest.raises(UnsupportedModel, match=f"is a {variant} adapter, which GPT-2's fused Conv1D layers"):
        model.add_adapter("a", preset)
    assert not model.adapters and not model._linear_sites


def _weights(directory) -> dict:
    return torch.load(next(directory.glob("*.bin")), weights_only=True)


@pytest.mark.parametrize("adapter", ["lora", "lora_all", "lora_gated", "lora_kv", "ia3", "ia3_out"])
def test_files_round_trip_in_the_merged_layout(tmp_path, adapter) -> None:
    """c_attn's A, B, gate and (IA)³ vector hold the enabled matrices' blocks one after another; read apart into
    q, k, v and written back, they are AdapterHub's tensors again, key for key."""
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(ROOT / "base")
    name = model.load_adapter(ROOT / "adapters" / adapter, with_head=False)
    model.save_adapter(tmp_path / adapter, name, format="adapterhub", with_head=False)
    ours, theirs = _weights(tmp_path / adapter), _weights(ROOT / "adapters" / adapter)
    assert set(ours) == set(theirs)
    assert any(".c_attn." in key for key in theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_compositions_run_where_the_reference_refuses_them() -> None:
    """AdapterHub 1.3.0 raises for any composition with a LoRA on GPT-2; adapt runs them as on other families:
    parallel answers as each member alone, and a stack feeds one LoRA's term into the next."""
    model = tiny_decoder("gpt2")
    for name, seed in (("a", 3), ("b", 4)):
        model.add_adapter(name, "lora", {"attn_matrices": ["q", "k", "v"]})
        randomise(model.adapters[name], seed=seed, scale=0.2)
    ids, mask = decoder_inputs()
    with torch.no_grad():
        alone = [model(input_ids=ids, attention_mask=mask, active=n).last_hidden_state for n in ("a", "b")]
        both = model(input_ids=ids, attention_mask=mask, active="parallel(a,b)").last_hidden_state
        stacked = model(input_ids=ids, attention_mask=mask, active="stack(a,b)").last_hidden_state
        base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = ids.shape[0]
    assert torch.allclose(both[:rows], alone[0], atol=1e-6) and torch.allclose(both[rows:], alone[1], atol=1e-6)
    assert (stacked - base).abs().max() > 1e-3 and (stacked - alone[1]).abs().max() > 1e-4


def test_routed_rows_equal_each_adapter_alone() -> None:
    """Rows split among GPT-2 LoRAs compute each fused part in the reference's order (no per-row product):
    under parallel (each member on the whole batch) every row equals its adapter run alone bit for bit; a
    batch split's smaller parts differ only by the rounding of smaller products."""
    model = tiny_decoder("gpt2")
    for name, seed in (("a", 3), ("b", 4)):
        model.add_adapter(name, "lora", {"attn_matrices": ["q", "k", "v"]})
        randomise(model.adapters[name], seed=seed, scale=0.3)
    ids, mask = decoder_inputs()
    with torch.no_grad():
        split = model(input_ids=ids, attention_mask=mask, active="batch_split(a,b,sizes=[1,2])").last_hidden_state
        both = model(input_ids=ids, attention_mask=mask, active="parallel(a,b)").last_hidden_state
        alone_a = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
        alone_b = model(input_ids=ids, attention_mask=mask, active="b").last_hidden_state
    rows = ids.shape[0]
    assert torch.equal(both[:rows], alone_a) and torch.equal(both[rows:], alone_b)
    assert torch.allclose(split[:1], alone_a[:1], atol=2e-6) and torch.allclose(split[1:], alone_b[1:], atol=2e-6)


def test_an_adapter_dtype_other_than_the_model_is_one_line() -> None:
    model = tiny_decoder("gpt2")
    model.add_adapter("a", "lora", {"dtype": "bfloat16"})
    ids, mask = decoder_inputs()
    with pytest.raises(UsageError, match="computes in bfloat16 .* but the model runs in float32"):
        model(input_ids=ids, attention_mask=mask, active="a")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, attention_mask=mask, active="a")  # under autocast to it: runs


def test_merge_folds_into_the_conv1d_weights() -> None:
    model = tiny_decoder("gpt2")
    model.add_adapter("a", "lora", {"attn_matrices": ["q", "k", "v"], "intermediate_lora": True,
                                    "output_lora": True})
    randomise(model.adapters["a"], scale=0.2)
    ids, mask = decoder_inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
        before = model.base.h[0].attn.c_attn.weight.clone()
        model.merge_adapter("a")
        merged = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.unmerge_adapter()
    assert torch.allclose(merged, want, atol=1e-5)
    assert torch.equal(model.base.h[0].attn.c_attn.weight, before)


@pytest.mark.parametrize("overrides", [{}, {"selfattn_lora": False, "intermediate_lora": True, "output_lora": True}])
def test_peft_files_are_refused_for_gpt2(tmp_path, overrides) -> None:
    """PEFT changes c_attn as one matrix over q, k and v, and its Conv1D layers with a layout flag of its own:
    neither written nor read (a file with the MLP alone would be read with the wrong hidden size)."""
    model = tiny_decoder("gpt2")
    model.add_adapter("a", "lora", overrides)
    with pytest.raises(UsageError, match="it changes one of GPT-2's Conv1D layers"):
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a").exists()
    from safetensors.torch import save_file

    from adapter_cli.formats import read_adapter

    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4, '
                                              '"target_modules": ["c_attn"]}')
    save_file({"base_model.model.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 32),
               "base_model.model.h.0.attn.c_attn.lora_B.weight": torch.zeros(96, 2)},
              str(peft / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match="changes h.0.attn.c_attn, one of GPT-2's Conv1D layers"):
        read_adapter(peft)
