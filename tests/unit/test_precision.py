"""Frozen layers in low precision, and what autograd keeps for an adapter step.

``cast_frozen_linears`` stores the base model's frozen linear layers in the autocast dtype. Autocast casts
them to that dtype on every call anyway, so the claim is exact equality, forward and backward, and a
smaller set of tensors kept for the backward (no per-step cast copies of the weights).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from torch import nn

LABELS = torch.tensor([0, 1, 1])


def _adapter_model(model_type: str = "bert", config: str = "houlsby"):
    model = tiny_model(model_type)
    model.add_adapter("a", config)
    model.add_head("h", num_labels=2)
    model.train_adapters(["a"], heads=["h"])
    return model.train()


def _step(model, dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask = tiny_inputs()
    torch.manual_seed(3)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = model(input_ids=ids, attention_mask=mask, active="a", labels=LABELS)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_frozen_linears_in_the_autocast_dtype_change_nothing(model_type, dtype) -> None:
    plain = _adapter_model(model_type)
    cast = copy.deepcopy(plain)
    assert cast.cast_frozen_linears(dtype) > 0
    loss_a, grads_a = _step(plain, dtype)
    loss_b, grads_b = _step(cast, dtype)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_only_frozen_base_linears_are_cast() -> None:
    model = _adapter_model()
    model.base.encoder.layer[0].output.dense.weight.requires_grad_(True)  # a trainable base layer stays fp32
    cast = model.cast_frozen_linears(torch.bfloat16)
    linears = [m for m in model.base.modules() if isinstance(m, nn.Linear)]
    assert cast == len(linears) - 1
    assert model.base.encoder.layer[0].output.dense.weight.dtype == torch.float32
    assert model.base.encoder.layer[1].output.dense.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.adapters.parameters())
    assert all(p.dtype == torch.float32 for p in model.heads.parameters())
    assert model.base.embeddings.word_embeddings.weight.dtype == torch.float32
    assert model.base.embeddings.LayerNorm.weight.dtype == torch.float32
    assert model.cast_frozen_linears(torch.bfloat16) == 0  # idempotent
    model.add_adapter("late")  # new adapters still start in the model's working precision
    assert all(p.dtype == torch.float32 for p in model.adapters["late"].parameters())


def _kept_for_backward(model, dtype: torch.dtype | None, frozen_inputs: set[int] | None = None) -> list[torch.Tensor]:
    """The non-parameter tensors autograd keeps during one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            kept.append(t)
        return t

    ids, mask = tiny_inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        model(input_ids=ids, attention_mask=mask, active="a", labels=LABELS).loss.backward()
    return kept


def _nbytes(tensors: list[torch.Tensor]) -> int:
    unique = {(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_bf16_frozen_linears_keep_no_weight_copies_for_the_backward() -> None:
    plain = _adapter_model(config="pfeiffer")
    cast = copy.deepcopy(plain)
    cast.cast_frozen_linears(torch.bfloat16)
    kept_plain = _kept_for_backward(plain, torch.bfloat16)
    kept_cast = _kept_for_backward(cast, torch.bfloat16)
    # Above the lowest adapter (after layer 0's FFN) the backward needs every frozen weight of layer 1,
    # which autocast casts anew each step and autograd keeps: those copies are what bf16 storage saves.
    layer1 = [m.weight for m in plain.base.encoder.layer[1].modules() if isinstance(m, nn.Linear)]
    copies = sum(w.numel() * 2 for w in layer1)
    assert _nbytes(kept_plain) - _nbytes(kept_cast) >= copies


def test_an_adapter_step_keeps_no_input_of_a_frozen_linear() -> None:
    """The inputs of frozen linear layers only serve their weight gradients, which nobody needs: an adapter
    step must not keep them (full fine-tuning does, which shows the check can fail)."""

    def inputs_and_kept(model) -> tuple[set[int], list[torch.Tensor]]:
        fed: list[torch.Tensor] = []  # held, so that no later tensor can reuse an input's memory
        hooks = [m.register_forward_pre_hook(lambda mod, args: fed.append(args[0]))
                 for m in model.base.modules() if isinstance(m, nn.Linear)]
        kept = _kept_for_backward(model, None)
        for h in hooks:
            h.remove()
        return {t.untyped_storage().data_ptr() for t in fed}, kept

    adapter = _adapter_model(config="pfeiffer")
    fed, kept = inputs_and_kept(adapter)
    assert fed and not {t.untyped_storage().data_ptr() for t in kept} & fed

    full = _adapter_model(config="pfeiffer")
    full.base.requires_grad_(True)
    fed, kept = inputs_and_kept(full)
    assert {t.untyped_storage().data_ptr() for t in kept} & fed
