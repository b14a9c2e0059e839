"""A fusion training step recomputes its members' up-projections in the backward instead of keeping them
(FusionLayer.fuse): the same outputs and gradients as keeping them, dropout masks included, and far fewer
bytes kept for the backward."""

from __future__ import annotations

import pytest
import torch

from adapter_cli import fastpaths, fusion
from adapter_cli.fusion import FusionLayer
from conftest import randomise, tiny_inputs, tiny_model


def _keeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's form, as before recomputation: the site computes the members' outputs and the attention
    once, and autograd keeps what they need."""
    monkeypatch.setattr(FusionLayer, "_records", lambda self, tensors, members: False)


CASES = {
    "pfeiffer": ([("pfeiffer", {})] * 4, "dynamic", None),
    "scalings": ([("pfeiffer", {"scaling": "learned"}), ("pfeiffer", {"scaling": 2.0}), ("pfeiffer", {})],
                 "dynamic", None),
    "residual-before, temperature": ([("pfeiffer", {})] * 3,
                                     {"residual_before": True, "temperature": True, "regularization": False,
                                      "value_initialized": False}, None),
    "static": ([("pfeiffer", {})] * 3, "static", None),
    "unlike members (the loop)": ([("houlsby", {}), ("houlsby", {"non_linearity": "swish"})], "dynamic", None),
    "member dropout, stack inside": ([("pfeiffer", {"dropout": 0.2})] * 3, "dynamic", "stack"),
}


def _model(case: str, dropout: float):
    configs, fusion_config, shape = CASES[case]
    model = tiny_model(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    names = []
    for i, (preset, overrides) in enumerate(configs):
        model.add_adapter(f"a{i}", preset, overrides)
        names.append(f"a{i}")
    members = f"stack({names[0]},{names[1]}),{','.join(names[2:])}" if shape == "stack" else ",".join(names)
    model.add_fusion(names, fusion_config, name="f")
    randomise(model.adapters, 1, scale=0.2)
    randomise(model.fusions, 2, scale=0.2)
    return model, names, f"fuse({members},name=f)"


def _step(model, names: list[str], active: str, unfreeze: bool, seed: int):
    """One training forward and backward: the output, every gradient, and the fusion's temperatures."""
    ids, mask = tiny_inputs(batch=4, length=9)
    model.train_adapters(names if unfreeze else [], fusions=["f"])
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
    # A fixed random projection: the mean square of a LayerNorm's output is constant, its gradient zero.
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    temperatures = [m.temperature for m in model.modules() if isinstance(m, FusionLayer)]
    return out.detach(), grads, temperatures


@pytest.mark.parametrize("reference_order", [False, True], ids=["fast-paths", "reference-order"])
@pytest.mark.parametrize("unfreeze", [False, True], ids=["frozen-members", "unfrozen-members"])
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("case", list(CASES))
def test_recomputed_step_equals_todays_form(case, dropout, unfreeze, reference_order, monkeypatch):
    """Outputs and every gradient (fusion, member adapters when unfrozen) of a train-mode step equal the
    form that keeps the members' outputs; with dropout on, the recomputation repeats the same masks."""
    if reference_order:  # ADAPT_REFERENCE_ORDER=1
        monkeypatch.setattr(fastpaths, "ENABLED", False)
        monkeypatch.setattr(FusionLayer, "restructured", False)
    model, names, active = _model(case, dropout)
    if dropout:
        for layer in model.fusions["f"].modules():
            if isinstance(layer, FusionLayer):
                layer.dropout.p = dropout
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = fusion.checkpoint
    monkeypatch.setattr(fusion, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    out, grads, temperatures = _step(model, names, active, unfreeze, seed=7)
    assert calls, "the training step did not recompute"
    model.load_state_dict(state)
    for layer in model.modules():
        if isinstance(layer, FusionLayer):
            layer.temperature = 50.0 if layer.config.temperature else 1.0
    with monkeypatch.context() as m:
        _keeping(m)
        kept_out, kept_grads, kept_temperatures = _step(model, names, active, unfreeze, seed=7)
    assert torch.equal(out, kept_out)  # the same operations in the same order
    assert grads.keys() == kept_grads.keys()
    assert any(n.startswith("fusions.") for n in grads)
    assert any(n.startswith("adapters.") for n in grads) == unfreeze
    for name in grads:
        torch.testing.assert_close(grads[name], kept_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    assert temperatures == kept_temperatures  # annealed once per step, not again by the recomputation


def test_inference_runs_no_recomputation_machinery(monkeypatch):
    model, _, active = _model("pfeiffer", 0.0)
    monkeypatch.setattr(fusion, "checkpoint", lambda *a, **k: pytest.fail("checkpoint used without autograd"))
    ids, mask = tiny_inputs()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, active=active)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, active=active)
    model.requires_grad_(False)  # grad mode on, but nothing to record
    model(input_ids=ids, attention_mask=mask, active=active)


def test_gradient_checkpointing_on_top(monkeypatch):
    """The model's own (per-layer) gradient checkpointing nests around the per-site recomputation."""
    model, names, active = _model("pfeiffer", 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out, grads, _ = _step(model, names, active, False, seed=3)
    model.load_state_dict(state)
    model.gradient_checkpointing_enable()
    ck_out, ck_grads, _ = _step(model, names, active, False, seed=3)
    torch.testing.assert_close(ck_out, out, atol=1e-6, rtol=1e-6)
    assert ck_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(ck_grads[name], grads[name], atol=1e-5, rtol=1e-5, msg=name)


def _saved_bytes(step, model) -> int:
    """Bytes of the tensors autograd keeps for the backward of one step, weights excluded, as bench/run.py
    counts them (docs/performance.md, "saved activation bytes")."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def test_fuse8_step_keeps_at_most_070_of_full_fine_tuning(monkeypatch):
    """MiniLM's proportions scaled down: MiniLM (all-MiniLM-L6-v2) is hidden 384, 12 heads, 6 layers,
    intermediate 4 x hidden, sequence 128; here hidden 96, 12 heads, 6 layers, intermediate 384, sequence 32,
    which keeps what sets the ratio: attention probabilities per token per hidden unit (heads x sequence /
    hidden = 4), intermediate / hidden = 4, the members' bottleneck widths / hidden = 8 / 16 (pfeiffer,
    reduction 16), and the number of layers. BERT's default dropout, fuse over 8 frozen pfeiffer adapters,
    the fusion trainable (as `adapt fuse` sets it up)."""
    from transformers import AutoConfig, AutoModel

    from adapter_cli import AdapterModel

    config = AutoConfig.for_model("bert", vocab_size=1000, hidden_size=96, num_hidden_layers=6,
                                  num_attention_heads=12, intermediate_size=384)
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (4, 32))
    mask = torch.ones_like(ids)

    full = AutoModel.from_config(config).train()

    def full_step() -> None:
        full(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0].pow(2).mean().backward()

    model = AdapterModel.from_config(config)
    names = [f"a{i}" for i in range(8)]
    for name in names:
        model.add_adapter(name, "pfeiffer")
    model.add_head("h", num_labels=2)
    model.add_fusion(names, name="f")
    model.train_adapters([], fusions=["f"], heads=["h"])
    model.train()
    labels = torch.zeros(4, dtype=torch.long)

    active = f"fuse({','.join(names)},name=f)"

    def fuse_step() -> None:
        model(input_ids=ids, attention_mask=mask, active=active, labels=labels).loss.backward()

    single = AdapterModel.from_config(config)
    single.add_adapter("a0", "pfeiffer")
    single.add_head("h", num_labels=2)
    single.train_adapters(["a0"], heads=["h"])
    single.train()

    def adapter_step() -> None:
        single(input_ids=ids, attention_mask=mask, active="a0", labels=labels).loss.backward()

    baseline = _saved_bytes(full_step, full)
    ratio = _saved_bytes(fuse_step, model) / baseline
    adapter_ratio = _saved_bytes(adapter_step, single) / baseline
    with monkeypatch.context() as m:
        _keeping(m)
        kept_ratio = _saved_bytes(fuse_step, model) / baseline
    assert kept_ratio > 1.0  # keeping the members' [B, T, N, H] outputs: the count sees them
    assert ratio <= 0.70, f"fuse-8 keeps {ratio:.3f} of full fine-tuning's saved activations"
    assert ratio <= adapter_ratio  # no more than a single adapter's training step keeps
