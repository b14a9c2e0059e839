"""Per-example routing (a batch split whose parts use different adapters) runs as one batched product per
site: for plain bottleneck adapters, for stacks of them (one product per stack level) and for LoRA and (IA)³
at a linear layer. Each equals the loop over parts (fastpaths.ENABLED False, the reference order) up to fp32
rounding, forward and backward; steps aside to the loop where the parts are not alike; and traces under
torch.compile without a graph break."""

from __future__ import annotations

import pytest
import torch

from adapter_cli import fastpaths, linear_sites, stitching
from conftest import randomise, tiny_inputs, tiny_model

BATCH = 6


@pytest.fixture
def loop(monkeypatch):
    """Run a function with the fast paths off: every part of a batch split one by one."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(fastpaths, "ENABLED", False)
            return fn()
    return run


@pytest.fixture
def spy(monkeypatch):
    """Names the routed products that computed something (the fast path taken; None is a step aside)."""
    calls: list[str] = []

    def watch(module, name: str) -> None:
        real = getattr(module, name)

        def routed(*args):
            out = real(*args)
            if out is not None:
                calls.append(name)
            return out
        monkeypatch.setattr(module, name, routed)

    watch(stitching, "routed_adapters")
    watch(linear_sites, "routed_deltas")
    return calls


def _model(adapters: dict[str, tuple[str, dict]]):
    model = tiny_model()
    for name, (preset, overrides) in adapters.items():
        model.add_adapter(name, preset, overrides)
    randomise(model.adapters, 3, scale=0.2)
    return model


def _run(model, active: str, train: list[str]):
    """The last hidden state and the adapters' gradients of a fixed random projection of it."""
    ids, mask = tiny_inputs(batch=BATCH)
    # A fixed random projection: the mean square of a LayerNorm output is constant, so its gradients would vanish.
    projection = torch.randn(ids.shape + (model.hidden_size,), generator=torch.Generator().manual_seed(7))
    model.zero_grad()
    model.train_adapters(train)
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
    (out * projection).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.adapters.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _assert_equal_to_the_loop(model, active: str, loop) -> None:
    train = list(model.adapters)
    fast_out, fast_grads = _run(model, active, train)
    slow_out, slow_grads = loop(lambda: _run(model, active, train))
    torch.testing.assert_close(fast_out, slow_out, atol=2e-5, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=2e-5, rtol=1e-4)


PFEIFFER = ("pfeiffer", {})


@pytest.mark.parametrize("adapters,active,calls", [
    # three distinct 2-level stacks: one routed product per level at each of the 2 layers
    ({"s0": PFEIFFER, "s1": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER, "t2": PFEIFFER},
     "batch_split(stack(s0,t0),stack(s1,t1),stack(s0,t2),sizes=[2,3,1])", 4),
    # houlsby's sub-layer after attention holds only the first level: there the stacks route as one level
    ({"s0": ("houlsby", {}), "s1": ("houlsby", {}), "t0": PFEIFFER, "t1": PFEIFFER},
     "batch_split(stack(s0,t0),stack(s1,t1),sizes=[3,3])", 6),
    ({"s0": ("parallel", {}), "s1": ("parallel", {}), "t0": ("parallel", {}), "t1": ("parallel", {})},
     "batch_split(stack(s0,t0),stack(s1,t1),stack(s1,t0),sizes=[1,4,1])", 4),
    # a part with no adapter at these sites (LoRA elsewhere) is closed by the plain sub-layer
    ({"s0": PFEIFFER, "s1": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER, "l0": ("lora", {})},
     "batch_split(stack(s0,t0),l0,stack(s1,t1),sizes=[2,2,2])", 4),
    # the first level is left out of layer 1: there the stacks are one level deep (as _stack skips them)
    ({"s0": ("pfeiffer", {"leave_out": [1]}), "s1": ("pfeiffer", {"leave_out": [1]}), "t0": PFEIFFER,
      "t1": PFEIFFER}, "batch_split(stack(s0,t0),stack(s1,t1),sizes=[3,3])", 3),
    # tasks whose configurations differ (scaling) are not routed together: the loop
    ({"s0": PFEIFFER, "t0": PFEIFFER, "t1": ("pfeiffer", {"scaling": 2.0})},
     "batch_split(stack(s0,t0),stack(s0,t1),sizes=[4,2])", 0),
], ids=["distinct-stacks", "houlsby-under-pfeiffer", "parallel", "with-plain-rows", "partly-placed",
        "unlike-tasks"])
def test_routed_stacks_equal_the_loop(adapters, active, calls, loop, spy):
    _assert_equal_to_the_loop(_model(adapters), active, loop)
    assert spy.count("routed_adapters") == calls


def test_shared_level_runs_once_and_distinct_level_is_one_product(spy):
    """stack(s0, t_i) for every part: s0 runs on all rows at once, the t_i in one routed product per layer."""
    model = _model({"s0": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER, "t2": PFEIFFER})
    runs = []
    handles = [m.register_forward_hook(lambda *a: runs.append(1)) for m in model.adapters["s0"].modules()
               if isinstance(m, fastpaths.BottleneckAdapter)]
    ids, mask = tiny_inputs(batch=BATCH)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, active="batch_split(stack(s0,t0),stack(s0,t1),stack(s0,t2),"
                                                        "sizes=[2,2,2])")
    for h in handles:
        h.remove()
    assert len(runs) == model.num_layers  # once per layer, not once per part
    assert spy == ["routed_adapters"] * model.num_layers


@pytest.mark.parametrize("adapters,active", [
    ({f"l{i}": ("lora", {}) for i in range(3)}, "batch_split(l0,l1,l2,l1,sizes=[1,2,2,1])"),
    ({"l0": ("lora", {"alpha": 4.0}), "l1": ("lora", {"alpha": 16.0}), "l2": ("lora", {})},
     "batch_split(l0,l1,l2,sizes=[2,2,2])"),
    ({"l0": ("lora", {"intermediate_lora": True, "output_lora": True}),
      "l1": ("lora", {"intermediate_lora": True, "output_lora": True})}, "batch_split(l1,l0,sizes=[3,3])"),
    ({f"i{i}": ("ia3", {}) for i in range(3)}, "batch_split(i0,i1,i2,sizes=[1,2,3])"),
    ({"i0": ("ia3", {"alpha": 2.0}), "i1": ("ia3", {})}, "batch_split(i0,i1,sizes=[3,3])"),
    ({f"i{i}": ("ia3", {"output_lora": True, "scaled_inputs": ["output"]}) for i in range(2)},
     "batch_split(i1,i0,sizes=[2,4])"),
], ids=["lora", "lora-alphas", "lora-feed-forward", "ia3", "ia3-alphas", "ia3-scaled-inputs"])
def test_routed_lora_family_equals_the_loop(adapters, active, loop, spy):
    model = _model(adapters)
    _assert_equal_to_the_loop(model, active, loop)
    assert "routed_deltas" in spy


def test_mixed_bottleneck_and_lora_batch_equals_the_loop(loop, spy):
    """Bottleneck sites route their rows and close the LoRA rows as the plain sub-layer; linear sites route
    the LoRA rows and leave the bottleneck rows as the frozen layer gives them."""
    model = _model({"a0": PFEIFFER, "a1": PFEIFFER, "l0": ("lora", {}), "l1": ("lora", {})})
    _assert_equal_to_the_loop(model, "batch_split(a0,l0,a1,l1,a0,sizes=[1,1,2,1,1])", loop)
    assert {"routed_adapters", "routed_deltas"} <= set(spy)


@pytest.mark.parametrize("adapters,active", [
    ({"a0": PFEIFFER, "a1": ("pfeiffer", {"non_linearity": "swish"})}, "batch_split(a0,a1,sizes=[3,3])"),
    ({"a0": PFEIFFER, "a1": ("pfeiffer", {"use_gating": True})}, "batch_split(a0,a1,sizes=[3,3])"),
    ({"s0": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER},  # stacks of different depths
     "batch_split(stack(s0,t0),t1,sizes=[3,3])"),
    # s0 is left out of layer 1 and s1 is not: unequal depths there; at layer 0 s0 and s1 differ (leave_out)
    ({"s0": ("pfeiffer", {"leave_out": [1]}), "s1": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER},
     "batch_split(stack(s0,t0),stack(s1,t1),sizes=[3,3])"),
    ({"a0": PFEIFFER, "a1": PFEIFFER, "f": PFEIFFER}, "batch_split(a0,average(a1,f),sizes=[3,3])"),
    ({"l0": ("lora", {}), "l1": ("lora", {"r": 4})}, "batch_split(l0,l1,sizes=[3,3])"),
    ({"d0": ("dora", {}), "d1": ("dora", {})}, "batch_split(d0,d1,sizes=[3,3])"),
    ({"v0": ("vera", {}), "v1": ("vera", {})}, "batch_split(v0,v1,sizes=[3,3])"),
    ({"l0": ("lora", {}), "i0": ("ia3", {})}, "batch_split(l0,i0,sizes=[3,3])"),
    ({"l0": ("lora", {}), "l1": ("lora", {"use_gating": True})}, "batch_split(l0,l1,sizes=[3,3])"),
], ids=["unlike-activations", "gated", "unequal-depths", "unequal-depths-here", "nested-average", "lora-ranks",
        "dora", "vera", "lora-and-ia3", "gated-lora"])
def test_unlike_parts_fall_back_to_the_loop(adapters, active, loop, spy):
    _assert_equal_to_the_loop(_model(adapters), active, loop)
    assert spy == []


def test_reference_order_never_routes(loop, spy):
    model = _model({"a0": PFEIFFER, "a1": PFEIFFER, "l0": ("lora", {}), "l1": ("lora", {})})
    ids, mask = tiny_inputs(batch=BATCH)
    with torch.no_grad():
        loop(lambda: model(input_ids=ids, attention_mask=mask,
                           active="batch_split(stack(a0,a1),stack(a1,a0),l0,l1,sizes=[1,2,2,1])"))
    assert spy == []


def test_a_route_first_built_for_inference_serves_a_training_step():
    """Routes are cached; one built under inference_mode must not be an inference tensor, which a training
    forward could not save for its backward."""
    model = _model({"a0": PFEIFFER, "a1": PFEIFFER, "l0": ("lora", {}), "l1": ("lora", {})})
    active = "batch_split(a0,a1,l0,l1,sizes=[1,2,2,1])"
    ids, mask = tiny_inputs(batch=BATCH)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, active=active)
    model.train_adapters(["a0", "a1", "l0", "l1"])
    model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state.sum().backward()
    assert all(p.grad is not None for p in model.adapters.parameters() if p.requires_grad)


def test_routing_index_comes_from_the_sizes():
    route = fastpaths.route([1, -1, 0], [2, 1, 3], torch.device("cpu"))
    assert route.rows.tolist() == [1, 1, 0, 0, 0, 0]
    assert route.present.tolist() == [True, True, False, True, True, True]
    assert fastpaths.route([0, 1], [1, 2], torch.device("cpu")).present is None


def test_a_routed_batch_split_traces_without_graph_breaks():
    """The row index comes from the (static) sizes, not from repeat_interleave over tensor data: dynamo traces
    the whole forward (stacks, bottleneck and LoRA parts) as one graph."""
    import torch._dynamo as dynamo

    model = _model({"s0": PFEIFFER, "s1": PFEIFFER, "t0": PFEIFFER, "t1": PFEIFFER, "l0": ("lora", {}),
                    "l1": ("lora", {})})
    block = model.resolve_composition("batch_split(stack(s0,t0),stack(s1,t1),l0,l1,sizes=[1,1,2,2])")
    ids, mask = tiny_inputs(batch=BATCH)
    base = model.base
    previous = model._context.set(block)
    try:
        dynamo.reset()
        explained = dynamo.explain(lambda i, m: base(input_ids=i, attention_mask=m).last_hidden_state)(ids, mask)
    finally:
        model._context.restore(previous)
        dynamo.reset()
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
