"""Compacter (PHM projections): presets, validation, parameter counts (AdapterHub's), the shared rule in
training, copies and dtypes, and ``adapt add compacter``. Parity with the reference is in
tests/e2e/test_compacter_fixtures.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.errors import ConfigError
from adapter_cli.presets import resolve_adapter_config
from conftest import FIXTURES, one_line_error, tiny_inputs, tiny_model

SMALL = {"reduction_factor": 4}  # hidden 32 in the tiny models: width 8, which phm_dim 2, 4 and 8 divide


def test_presets_are_adapterhubs_configs() -> None:
    written = json.loads((FIXTURES / "compacter_bert" / "adapters" / "compacter" / "adapter_config.json").read_text())
    ours = resolve_adapter_config("compacter", {"reduction_factor": 5}).to_dict()
    assert all(ours[k] == v for k, v in written["config"].items() if k in ours)
    plus = resolve_adapter_config("compacter++")
    assert plus == resolve_adapter_config("compacter_pp")
    assert plus.phm_layer and plus.locations == ("output_adapter",) and plus.original_ln_before
    assert plus.reduction_factor == 32 and plus.non_linearity == "gelu"
    assert resolve_adapter_config("compacter").locations == ("mh_adapter", "output_adapter")


def test_cards_name_the_compacter_presets() -> None:
    from adapter_cli.hub.card import SLUG
    from adapter_cli.hub.pack import architecture_name

    for spec, name in (("compacter[reduction_factor=5]", "compacter"), ("compacter++[phm_dim=8]", "custom"),
                       ("compacter++[reduction_factor=4]", "compacter_pp"), ("houlsby", "houlsby")):
        assert architecture_name(resolve_adapter_config(spec).to_dict()) == name and SLUG.fullmatch(name), spec


@pytest.mark.parametrize("overrides, message", [
    ({"phm_dim": 0}, "phm_dim must be a whole number of at least 1, got 0"),
    ({"phm_rank": 1.5}, "phm_rank must be a whole number"),
    ({"phm_c_init": "gauss"}, "unknown phm_c_init 'gauss'; choose from normal, uniform"),
    ({"hypercomplex_nonlinearity": "glorot_uniform"}, "did you mean 'glorot-uniform'"),
    ({"phm_init_range": -1}, "phm_init_range must be a finite number >= 0"),
    ({"learn_phm": "yes"}, "learn_phm must be true or false"),
    ({"init_weights": "houlsby"}, "phm_layer takes init_weights 'bert' only"),
    ({"shared_W_phm": True, "factorized_phm_W": False}, "shared_W_phm needs factorized_phm_W: true"),
    ({"shared_W_phm": True, "reduction_factor": {"0": 2, "default": 4}}, "cannot vary per layer"),
])
def test_bad_fields_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_adapter_config("compacter++", overrides)
    assert "\n" not in str(caught.value)


def test_phm_dim_must_divide_the_hidden_size_and_the_width() -> None:
    with pytest.raises(ConfigError, match="phm_dim 4 must divide the hidden size 40 and the bottleneck width 1"):
        resolve_adapter_config("compacter").parameter_count(40, 2)
    with pytest.raises(ConfigError, match="phm_dim 5 must divide the hidden size 768"):
        resolve_adapter_config("compacter", {"phm_dim": 5}).parameter_count(768, 12)
    model = tiny_model()
    with pytest.raises(ConfigError, match="phm_dim 3 must divide"):
        model.add_adapter("c", "compacter++", {**SMALL, "phm_dim": 3})
    assert "c" not in model.adapters
    # off, the PHM fields are only checked for their own values
    assert resolve_adapter_config("pfeiffer", {"phm_dim": 3}).parameter_count(40, 2)["parameters"] > 0


def test_parameter_counts_are_adapterhubs() -> None:
    """adapters 1.3.0's adapter_summary on a BERT-base shape (tests/fixtures/make_compacter_fixtures.py): the
    layers' own parameters plus the shared ones, once per adapter."""
    reference = json.loads((FIXTURES / "compacter_param_counts.json").read_text())
    assert len(reference["counts"]) >= 12
    for spec, count in reference["counts"].items():
        ours = resolve_adapter_config(spec).parameter_count(reference["hidden_size"], reference["num_layers"])
        assert ours["parameters"] == count["parameters"], spec
    counts = resolve_adapter_config("compacter").parameter_count(768, 12)
    assert counts["placements"][-1] == {"location": "shared", "layers": list(range(12)), "widths": [24] * 12,
                                        "parameters": 64}  # the 4 x 4 x 4 rule, once


@pytest.mark.parametrize("overrides", [{}, {"shared_phm_rule": False}, {"factorized_phm_rule": True},
                                       {"factorized_phm_W": False, "phm_bias": False}, {"shared_W_phm": True},
                                       {"phm_rank": 3, "phm_dim": 8, "ln_before": True, "use_gating": True}])
def test_counts_and_shapes_equal_the_built_modules(overrides) -> None:
    from adapter_cli.methods.bottleneck_layers import BottleneckAdapterSet

    cfg = resolve_adapter_config("compacter", {**SMALL, **overrides})
    built = BottleneckAdapterSet(cfg, 32, 3)
    assert sum(p.numel() for p in built.parameters()) == cfg.parameter_count(32, 3)["parameters"]
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == cfg.weight_shapes(32, 3)


def _step(model, name: str) -> None:
    ids, mask = tiny_inputs()
    model.train_adapters([name])
    model.train()
    hidden = model(input_ids=ids, attention_mask=mask, active=name).last_hidden_state
    loss = hidden[..., :8].mean()  # not a mean of squares: after a LayerNorm that is ~1 whatever the adapter
    loss.backward()


def test_a_training_step_reaches_the_shared_rule_through_every_layer() -> None:
    model = tiny_model()
    model.add_adapter("c", "compacter", SMALL)
    adapters = model.adapters["c"]
    sites = adapters.sites()
    assert len(sites) == 4 and all(m.down._shared[0] is adapters.shared for _, _, m in sites)
    _step(model, "c")
    assert adapters.shared.phm_rule.grad is not None and adapters.shared.phm_rule.grad.abs().sum() > 0
    assert all(m.down.W_left.grad is not None and m.up.W_right.grad is not None for _, _, m in sites)
    # one rule for all sites: a step moves it once, and every site computes with the moved rule
    rule, kernel = adapters.shared.phm_rule.detach().clone(), sites[0][2].up.kernel().detach()
    torch.optim.SGD(adapters.parameters(), lr=0.1).step()
    assert not torch.equal(adapters.shared.phm_rule, rule) and not torch.equal(sites[0][2].up.kernel(), kernel)
    assert "shared.phm_rule" in adapters.state_dict() and sum("phm_rule" in k for k in adapters.state_dict()) == 1


def test_learn_phm_false_keeps_the_rules_fixed() -> None:
    model = tiny_model()
    model.add_adapter("fixed", "compacter++", {**SMALL, "learn_phm": False, "shared_phm_rule": False})
    model.add_adapter("shared", "compacter++", {**SMALL, "learn_phm": False})
    for name in ("fixed", "shared"):
        _step(model, name)
        rules = [p for k, p in model.adapters[name].named_parameters() if "phm_rule" in k]
        assert rules and all(not p.requires_grad and p.grad is None for p in rules), name
        counts = model.adapters[name].config.parameter_count(32, 2)
        trainable = sum(p.numel() for p in model.adapters[name].parameters() if p.requires_grad)
        assert counts["trainable_parameters"] == trainable < counts["parameters"]


def test_copies_and_dtypes_keep_one_shared_rule() -> None:
    model = tiny_model()
    model.add_adapter("c", "compacter", {**SMALL, "shared_W_phm": True})
    ids, mask = tiny_inputs()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, active="c").last_hidden_state
    twin = copy.deepcopy(model)
    shared = twin.adapters["c"].shared
    assert shared is not model.adapters["c"].shared
    assert all(m.up._shared[0] is shared for _, _, m in twin.adapters["c"].sites())
    twin.double()
    assert shared.phm_rule.dtype == torch.float64 and shared.W_up_left.dtype == torch.float64
    with torch.no_grad():
        after = twin(input_ids=ids, attention_mask=mask, active="c").last_hidden_state
    assert (after.float() - before).abs().max() < 1e-5


def test_the_batched_fast_paths_compute_the_phm_map() -> None:
    """A PHM layer shows batched code the linear map it computes (``weight`` out x in, ``bias``), so fused or
    routed PHM adapters give what the reference order gives, whether or not the fast paths batch them."""
    from adapter_cli import fastpaths

    model = tiny_model()
    for name in ("a", "b", "c"):  # a and b alike (one batched product per row), c without a bias
        model.add_adapter(name, "compacter++", {**SMALL, "phm_bias": name != "c"})
        for p in model.adapters[name].parameters():
            torch.nn.init.normal_(p, 0.0, 0.5)
    model.add_fusion(["a", "c"])
    sites = [model.adapters[n].site("output_adapter", 0) for n in ("a", "b", "c")]
    ids, mask = tiny_inputs(batch=4)
    compositions = ("fuse(a,c)", "batch_split(a,b,sizes=[1,3])")
    with torch.no_grad():
        fast = [model(input_ids=ids, attention_mask=mask, active=c).last_hidden_state for c in compositions]
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fastpaths, "ENABLED", False)
            slow = [model(input_ids=ids, attention_mask=mask, active=c).last_hidden_state for c in compositions]
    assert all((f - s).abs().max() < 1e-5 for f, s in zip(fast, slow))
    down = sites[2].down
    assert down.b is None and torch.equal(down.bias, torch.zeros(8))
    x = torch.randn(2, 5, 32)
    assert torch.allclose(down(x), torch.nn.functional.linear(x, down.weight, down.bias), atol=1e-6)


def test_adapt_add_compacter_table() -> None:
    from adapter_cli.cli import app

    runner = CliRunner()
    table = runner.invoke(app, ["add", "compacter", "--hidden-size", "768", "--num-layers", "12"])
    assert table.exit_code == 0, table.stderr
    for text in ("mh_adapter", "output_adapter", "shared", "28,512", "57,088 parameters"):
        assert text in table.stdout, text
    data = json.loads(runner.invoke(app, ["add", "compacter++", "--hidden-size", "768", "--num-layers", "12",
                                          "--json"]).stdout)
    assert data["parameters"] == 28_576 and [p["location"] for p in data["placements"]] == ["output_adapter",
                                                                                            "shared"]
    fixed = runner.invoke(app, ["add", "compacter++", "learn_phm=false", "--hidden-size", "768", "--num-layers", "12"])
    assert "28,512 trained, 64 frozen (the PHM rules, learn_phm: false)" in fixed.stdout
    error = one_line_error(runner.invoke(app, ["add", "compacter", "--hidden-size", "40", "--num-layers", "2"]))
    assert "phm_dim 4 must divide the hidden size 40 and the bottleneck width 1" in error


def test_adapt_add_into_a_model_saves_what_inspect_and_load_read(tmp_path) -> None:
    from adapter_cli import AdapterModel
    from adapter_cli.cli import app

    runner = CliRunner()
    base = FIXTURES / "compacter_bert" / "base"
    for fmt in ("adapt", "adapterhub"):
        out = tmp_path / fmt
        result = runner.invoke(app, ["add", "compacter[reduction_factor=5]", "--model", str(base), "--name", "c",
                                     "--save", str(out), "--format", fmt, "--json"])
        assert result.exit_code == 0, result.stderr
        added = json.loads(result.stdout)
        info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
        assert info["parameters"] == added["parameters"] == 3 * 2 * 144 + 64  # AdapterHub's 928 for this shape
        model = AdapterModel.from_pretrained(base)
        assert model.load_adapter(out) == "c" and model.adapters["c"].config.phm_layer
        assert "phm_dim 4, shared by all layers: rule" in runner.invoke(app, ["inspect", str(out)]).stdout
    listed = {r["name"] for r in json.loads(runner.invoke(app, ["recipes", "ls", "--kind", "adapter", "--json"]).stdout)}
    text = " ".join(runner.invoke(app, ["add", "--help"]).stdout.split())
    assert {"compacter", "compacter_pp"} <= listed and "compacter_pp" in text
