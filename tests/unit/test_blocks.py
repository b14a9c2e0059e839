"""Average, BatchSplit, Parallel and per-example routing."""

from __future__ import annotations

import torch

from conftest import tiny_inputs, tiny_model


def _model():
    model = tiny_model()
    for name in ("a", "b"):
        model.add_adapter(name, "pfeiffer")
        g = torch.Generator().manual_seed(len(name) + ord(name))
        with torch.no_grad():
            for p in model.adapters[name].parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.add_head("a", num_labels=2)
    model.add_head("b", num_labels=3)
    return model.eval()


def _run(model, active, ids=None, mask=None):
    ids, mask = (ids, mask) if ids is not None else tiny_inputs()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, active=active, head=None).last_hidden_state


def test_average_with_one_hot_weights_is_that_adapter() -> None:
    model = _model()
    assert torch.equal(_run(model, "average(a,b,weights=[1,0])"), _run(model, "a"))
    assert torch.equal(_run(model, "average(a,b,weights=[0,1])"), _run(model, "b"))
    mixed = _run(model, "average(a,b)")
    assert not torch.allclose(mixed, _run(model, "a")) and not torch.allclose(mixed, _run(model, "b"))


def test_average_is_the_weighted_mean_at_each_site() -> None:
    """At one site: out = 0.7*(up_a + h) + 0.3*(up_b + h) on the input LN(h + x); no extra 1/N."""
    from adapter_cli.composition import parse_composition
    from adapter_cli.stitching import _State

    model = _model()
    site = model._sites[("output_adapter", 0)]
    h, x = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        got = site._average(parse_composition("average(a,b,weights=[7,3])"),
                            _State(hidden=h, x=x, ln=site._original_ln_forward))
        a_in = site._original_ln_forward(h + x)
        want = 0.7 * (site.adapters["a"].bottleneck(a_in) + h) + 0.3 * (site.adapters["b"].bottleneck(a_in) + h)
    torch.testing.assert_close(got.hidden, want, atol=1e-6, rtol=1e-6)
    assert got.last == "b"


def test_batch_split_routes_rows() -> None:
    model = _model()
    ids, mask = tiny_inputs(batch=3)
    split = _run(model, "batch_split(a,b,sizes=[1,2])", ids, mask)
    torch.testing.assert_close(split[:1], _run(model, "a", ids, mask)[:1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split[1:], _run(model, "b", ids, mask)[1:], atol=1e-6, rtol=1e-5)


def test_batch_split_sizes_must_match_the_batch() -> None:
    import pytest

    from adapter_cli.errors import CompositionError

    with pytest.raises(CompositionError, match="add up to 5 rows but the batch has 3"):
        _run(_model(), "batch_split(a,b,sizes=[2,3])")


def test_parallel_gives_one_output_per_member_with_its_own_head() -> None:
    model = _model()
    ids, mask = tiny_inputs()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, active="parallel(a,b)")
        single_a = model(input_ids=ids, attention_mask=mask, active="a", head="a")
        single_b = model(input_ids=ids, attention_mask=mask, active="b", head="b")
    assert len(out.branches) == 2
    torch.testing.assert_close(out.branches[0].last_hidden_state, single_a.last_hidden_state, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.branches[1].logits, single_b.logits, atol=1e-6, rtol=1e-5)
    assert out.branches[0].logits.shape[-1] == 2 and out.branches[1].logits.shape[-1] == 3


def test_per_example_routing_matches_single_runs() -> None:
    from adapter_cli.inference import Row, predict
    from conftest import save_tiny_model

    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from adapter_cli import AdapterModel

    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_model(Path(tmp) / "m")
        model = AdapterModel.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    model.add_adapter("a")
    model.add_adapter("b", "pfeiffer", {"reduction_factor": 2})
    model.add_head("h", num_labels=2)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.normal_(0, 0.3)
    texts = ["good film", "bad movie", "the plot was dull", "fun"]
    routes = ["a", "b", "stack(a,b)", "b"]
    routed = list(predict(model, tok, [Row(t, route=r) for t, r in zip(texts, routes)], head="h"))
    for text, route, out in zip(texts, routes, routed):
        alone = next(predict(model, tok, [Row(text)], active=route, head="h"))
        assert out["label"] == alone["label"] and abs(out["score"] - alone["score"]) < 1e-5
