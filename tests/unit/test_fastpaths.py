"""The fast paths equal the straightforward per-adapter loop (fp32 rounding aside), forward and backward,
and step aside for adapters they do not cover."""

from __future__ import annotations

import pytest
import torch

from adapter_cli import fastpaths
from adapter_cli.fusion import FusionLayer
from conftest import randomise, tiny_inputs, tiny_model


@pytest.fixture
def loop(monkeypatch):
    """Run a block with the fast paths off: every adapter one by one, fusion in AdapterHub's order."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(fastpaths, "ENABLED", False)
            m.setattr(FusionLayer, "restructured", False)
            return fn()
    return run


def _fusion_model(configs):
    model = tiny_model()
    names = []
    for i, (preset, overrides) in enumerate(configs):
        model.add_adapter(f"a{i}", preset, overrides)
        names.append(f"a{i}")
    model.add_fusion(names)
    randomise(model.adapters, 1, scale=0.2)
    randomise(model.fusions, 2, scale=0.2)
    return model, f"fuse({','.join(names)})"


@pytest.mark.parametrize("configs", [
    [("pfeiffer", {})] * 4,
    [("pfeiffer", {"scaling": 0.5}), ("pfeiffer", {"scaling": 2.0}), ("pfeiffer", {})],
    [("houlsby", {}), ("houlsby", {"non_linearity": "swish"})],  # unlike: falls back to the loop
    [("pfeiffer", {"ln_before": True}), ("pfeiffer", {"ln_before": True})],
], ids=["alike", "scalings", "mixed-activations", "own-layernorm"])
def test_fusion_fast_path_equals_the_loop_forward_and_backward(configs, loop):
    model, active = _fusion_model(configs)
    ids, mask = tiny_inputs()

    # A fixed random projection: the mean square of a LayerNorm output is constant, so its gradients would vanish.
    projection = torch.randn(ids.shape + (model.hidden_size,), generator=torch.Generator().manual_seed(7))

    def run():
        model.zero_grad()
        model.train_adapters(fusions=[active[5:-1]])
        model.eval()
        out = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
        (out * projection).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.fusions.named_parameters() if p.grad is not None}
        return out.detach(), grads

    fast_out, fast_grads = run()
    slow_out, slow_grads = loop(run)
    torch.testing.assert_close(fast_out, slow_out, atol=2e-5, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=2e-5, rtol=1e-4)


def test_stacked_members_are_one_product():
    """The fused members run without a per-adapter loop: one down-projection call for all of them."""
    model, active = _fusion_model([("pfeiffer", {})] * 8)
    ids, mask = tiny_inputs()
    calls = []
    handles = [m.down.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
               if isinstance(m, fastpaths.BottleneckAdapter)]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, active=active)
    for h in handles:
        h.remove()
    assert calls == []  # no member's own nn.Linear ran


@pytest.mark.parametrize("overrides", [{}, {"scaling": "learned"}, {"is_parallel": True, "scaling": 4.0}],
                         ids=["pfeiffer", "learned-scaling", "parallel"])
def test_routing_rows_to_distinct_adapters_equals_the_loop(overrides, loop):
    model = tiny_model()
    names = [f"r{i}" for i in range(5)]
    for n in names:
        model.add_adapter(n, "pfeiffer", overrides)
    randomise(model.adapters, 4, scale=0.2)
    ids, mask = tiny_inputs(batch=7)
    active = f"batch_split({','.join(['r0', 'r1', 'r2', 'r3', 'r4', 'r1', 'r0'])},sizes=[1,1,1,1,1,1,1])"
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
        slow = loop(lambda: model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state)
        # and each row equals running that row alone with its adapter
        alone = torch.cat([model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1], active=n).last_hidden_state
                           for i, n in enumerate(["r0", "r1", "r2", "r3", "r4", "r1", "r0"])])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, alone, atol=1e-5, rtol=1e-5)


def test_routing_steps_aside_for_unlike_adapters():
    model = tiny_model()
    model.add_adapter("plain", "pfeiffer")
    model.add_adapter("gated", "pfeiffer", {"use_gating": True})
    layer0 = [m for m in model.modules() if isinstance(m, fastpaths.BottleneckAdapter)]
    assert fastpaths.routed_adapters(layer0[:1] * 2, torch.tensor([0, 1]), torch.zeros(2, 3, 32),
                                     torch.zeros(2, 3, 32)) is not None
    gated = [m for m in layer0 if m.gate is not None][:1]
    assert fastpaths.routed_adapters(layer0[:1] + gated, torch.tensor([0, 1]), torch.zeros(2, 3, 32),
                                     torch.zeros(2, 3, 32)) is None


def test_infer_routing_runs_each_batch_once_and_equals_per_row_runs(tmp_path):
    from transformers import AutoTokenizer

    from adapter_cli import AdapterModel
    from adapter_cli.inference import Row, predict
    from conftest import save_tiny_model

    path = save_tiny_model(tmp_path / "m")
    model = AdapterModel.from_pretrained(path).eval()
    for n in ("x", "y", "z"):
        model.add_adapter(n, "pfeiffer")
    model.add_head("h", num_labels=2)
    randomise(model.adapters, 5, scale=0.2)
    randomise(model.heads, 6, scale=0.2)
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["good film", "bad plot", "the movie was fun", "so dull", "great", "awful film"]
    routes = ["z", "x", "y", "x", "z", "y"]
    calls = []
    hook = model.base.register_forward_hook(lambda *a: calls.append(1))
    routed = list(predict(model, tok, [Row(t, route=r) for t, r in zip(texts, routes)], batch_size=4, head="h"))
    hook.remove()
    assert len(calls) == 2  # 6 rows, batches of 4: two forward passes, not one per adapter
    for (t, r), got in zip(zip(texts, routes), routed):
        alone = next(predict(model, tok, [Row(t)], active=r, head="h"))
        assert got["label"] == alone["label"] and abs(got["score"] - alone["score"]) < 1e-5
        assert got["active"] == r


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_attention_stays_on_sdpa_with_adapters_and_fusion(model_type, monkeypatch):
    """Stitching adapters in must not push the encoder off PyTorch's fused attention (SDPA)."""
    model = tiny_model(model_type)
    for i in range(2):
        model.add_adapter(f"a{i}")
    model.add_fusion(["a0", "a1"])
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = tiny_inputs()
    model(input_ids=ids, attention_mask=mask, active="fuse(a0,a1)")
    assert model.base.config._attn_implementation == "sdpa"
    assert len(calls) == model.num_layers
