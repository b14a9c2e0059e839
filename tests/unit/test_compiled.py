"""The compiled mode (compiled.py): TorchDynamo traces every adapter site without a graph break, the compiled
model answers as the eager one within 1e-5 (switching compositions recompiles rather than reusing a graph
built for another), and a platform where inductor cannot build is refused or falls back as asked."""

from __future__ import annotations

import logging

import pytest
import torch

from adapter_cli.compiled import blocker, compile_model, parse_setting
from adapter_cli.errors import UsageError
from conftest import tiny_inputs, tiny_model

CPU = torch.device("cpu")


def _model():
    model = tiny_model()
    for name in "abc":
        model.add_adapter(name, "pfeiffer")
    model.add_adapter("h", "houlsby")
    model.add_adapter("l", "lora")
    model.add_adapter("i", "ia3")
    model.add_fusion(["a", "b", "c"])
    model.add_head("t", num_labels=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial weights: a zero-initialised up-projection would hide a skipped adapter
        for p in list(model.adapters.parameters()) + list(model.fusions.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


COMPOSITIONS = ["a", "h", "l", "i", "stack(h,a,l)", "fuse(a,b,c)", "average(a,b)",
                "batch_split(a,b,sizes=[1,2])", "batch_split(l,i,sizes=[2,1])"]


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_no_graph_break_at_any_adapter_site(training) -> None:
    model = _model()
    ids, mask = tiny_inputs()
    if training:
        model.train_adapters(["a", "l"], fusions=["a,b,c"], heads=["t"])
        model.train()
    breaks = {}
    for active in COMPOSITIONS if not training else ["stack(a,l)", "fuse(a,b,c)"]:
        torch._dynamo.reset()
        previous = model._context.set(model.resolve_composition(active))
        try:
            explained = torch._dynamo.explain(
                lambda: model.base(input_ids=ids, attention_mask=mask).last_hidden_state)()
        finally:
            model._context.restore(previous)
        breaks[active] = (explained.graph_count, explained.graph_break_count)
    assert breaks == {active: (1, 0) for active in breaks}


@pytest.mark.skipif(blocker(CPU) is not None, reason="inductor cannot build on this machine")
def test_compiled_outputs_and_gradients_equal_eager() -> None:
    model = _model()
    ids, mask = tiny_inputs()
    # Order matters in a stack: a graph built for one order must not answer the other. Back to "a": the first
    # graph is reused, and still right.
    sequence = ["a", "stack(a,l)", "stack(a,b)", "stack(b,a)", "fuse(a,b,c)", "a"]
    with torch.no_grad():
        eager = {active: model(ids, attention_mask=mask, active=active).logits for active in sequence}

    def step():
        model.zero_grad()
        model.train_adapters(fusions=["a,b,c"], heads=["t"])
        model.eval()  # no dropout: the compiled graph draws its random numbers differently
        out = model(ids, attention_mask=mask, active="fuse(a,b,c)", labels=torch.tensor([0, 1, 1]))
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_grads = step()
    torch._dynamo.reset()  # this test's graphs only, well under torch's recompile limit
    assert compile_model(model, True, CPU, "test")
    with torch.no_grad():
        for active in sequence:
            torch.testing.assert_close(model(ids, attention_mask=mask, active=active).logits, eager[active],
                                       atol=1e-5, rtol=0)
    compiled_grads = step()
    assert compiled_grads.keys() == eager_grads.keys() and compiled_grads
    for name, grad in compiled_grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("auto", "auto"), ("true", True),
                                             ("False", False), ("AUTO", "auto")])
def test_settings(value, expected) -> None:
    assert parse_setting(value, "recipe") == expected


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "compile"])
def test_bad_settings_are_one_line(value) -> None:
    with pytest.raises(UsageError, match=r"^recipe: compile must be true, false or auto, got"):
        parse_setting(value, "recipe")


def test_eager_is_left_alone() -> None:
    model = _model()
    assert compile_model(model, False, CPU, "test") is False
    assert model.base._compiled_call_impl is None


def test_no_compiler_refuses_true_and_falls_back_for_auto(no_compiler) -> None:
    from adapter_cli.reporting import log


    assert "C++ compiler" in blocker(CPU)
    model = _model()
    with pytest.raises(UsageError, match="needs a C\\+\\+ compiler.*compile=auto"):
        compile_model(model, True, CPU, "recipe key compile")
    assert model.base._compiled_call_impl is None
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the CLI may have turned propagation off: listen on the logger itself
    log.addHandler(handler)
    try:
        assert compile_model(model, "auto", CPU, "recipe key compile") is False
    finally:
        log.removeHandler(handler)
    assert model.base._compiled_call_impl is None
    assert [r.getMessage() for r in records] == [
        "compile=auto: torch.compile needs a C++ compiler for CPU kernels and found none (InvalidCxxCompiler); "
        "install g++ or set CXX; running eagerly"]
