"""Invertible adapters (MAD-X): configuration checks, the NICE layer's inverse, where the layer runs in a
composition and what is refused, AdapterHub's legacy configs, and `adapt add`'s counts. Parity with the
reference library: tests/e2e/test_inv_fixtures.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from adapter_cli.errors import ArtifactError, CompositionError, ConfigError
from adapter_cli.methods.invertible import embedding_size_of
from adapter_cli.methods.invertible_layers import NICECouplingBlock
from adapter_cli.presets import resolve_adapter_config
from conftest import FIXTURES, one_line_error, save_tiny_model, tiny_inputs, tiny_model

runner = CliRunner()


# ---------------------------------------------------------------------------------------------- configuration


def test_presets_are_adapterhubs_inv_configs() -> None:
    assert resolve_adapter_config("pfeiffer+inv") == resolve_adapter_config("seq_bn_inv")
    assert resolve_adapter_config("houlsby+inv") == resolve_adapter_config("double_seq_bn_inv")
    for name, plain in (("seq_bn_inv", "pfeiffer"), ("double_seq_bn_inv", "houlsby")):
        cfg = resolve_adapter_config(name)
        assert (cfg.inv_adapter, cfg.inv_adapter_reduction_factor) == ("nice", 2)
        assert cfg.replace(inv_adapter=None) == resolve_adapter_config(plain)  # the factor goes with the layer
    assert resolve_adapter_config("pfeiffer").inv_adapter is None


@pytest.mark.parametrize("overrides, message", [
    ({"inv_adapter": "glow"}, "inv_adapter 'glow' is not supported: AdapterHub's GLOW block"),
    ({"inv_adapter": "nise"}, "unknown inv_adapter 'nise' \\(did you mean 'nice'\\?\\)"),
    ({"inv_adapter_reduction_factor": None}, "needs inv_adapter_reduction_factor"),
    ({"inv_adapter_reduction_factor": 0}, "must be a positive number, got 0"),
    ({"inv_adapter_reduction_factor": -2.0}, "must be a positive number"),
    ({"inv_adapter_reduction_factor": True}, "must be a positive number"),
    ({"inv_adapter_reduction_factor": "two"}, "must be a positive number"),
])
def test_bad_invertible_configs_are_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        resolve_adapter_config("pfeiffer+inv", overrides)
    assert "\n" not in str(info.value)


def test_a_factor_without_a_layer_and_a_zero_width_layer_are_refused() -> None:
    with pytest.raises(ConfigError, match="inv_adapter_reduction_factor is 2 but there is no invertible adapter"):
        resolve_adapter_config("pfeiffer", {"inv_adapter_reduction_factor": 2})
    cfg = resolve_adapter_config("pfeiffer+inv", {"inv_adapter_reduction_factor": 500})
    with pytest.raises(ConfigError, match="zero-width invertible layer .* use a factor of at most 384"):
        cfg.parameter_count(768, 12)


def test_counts_equal_adapterhubs() -> None:
    """adapter_summary's #param of adapters 1.3.0 for hidden 768 and 12 layers (inv_param_counts.json)."""
    counts = json.loads((FIXTURES / "inv_param_counts.json").read_text())["counts"]
    for spec, expected in counts.items():
        cfg = resolve_adapter_config(spec)
        assert cfg.parameter_count(768, 12)["parameters"] == expected, spec
    shapes = resolve_adapter_config("pfeiffer+inv").weight_shapes(33, 2)
    assert shapes["invertible.F.0.weight"] == (8, 17) and shapes["invertible.G.2.weight"] == (17, 8)
    assert embedding_size_of(shapes_as_tensors(shapes)) == 33


def shapes_as_tensors(shapes: dict) -> dict:
    return {k: torch.empty(v) for k, v in shapes.items()}


# ---------------------------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("size, factor, act", [(32, 2, "relu"), (33, 3.0, "gelu_new"), (7, 1, "swish")])
def test_nice_reverse_undoes_forward(size, factor, act) -> None:
    cfg = resolve_adapter_config("pfeiffer+inv", {"inv_adapter_reduction_factor": factor, "non_linearity": act})
    layer = NICECouplingBlock(cfg, size, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
        x = torch.randn(3, 5, size, dtype=torch.float64)
        y = layer(x)
        assert (y - x).abs().max() > 0.1
        assert torch.allclose(layer(y, rev=True), x, atol=1e-12)
        assert torch.allclose(layer(layer(x, rev=True)), x, atol=1e-12)


def test_init_is_adapterhubs_and_seeded() -> None:
    cfg = resolve_adapter_config("pfeiffer+inv", {"init_weights_seed": 3})
    a, b = (NICECouplingBlock(cfg, 40, torch.Generator().manual_seed(3)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.F[0].bias.abs().max() == 0 and 0.01 < a.F[0].weight.std() < 0.03
    assert list(a.state_dict()) == [f"{n}.{i}.{w}" for n in "FG" for i in (0, 2) for w in ("weight", "bias")]


# ---------------------------------------------------------------------------------------------- in a model


@pytest.fixture(scope="module")
def model():
    m = tiny_model("bert")
    m.add_adapter("lang", "pfeiffer+inv")
    m.add_adapter("lang2", "houlsby+inv")
    m.add_adapter("t1", "pfeiffer")
    m.add_adapter("t2", "pfeiffer")
    m.add_fusion(["t1", "t2"])
    with torch.no_grad():
        for p in m.adapters.parameters():
            p.normal_(0.0, 0.2)
    return m


def _out(m, active, ids=None, mask=None):
    ids, mask = (ids, mask) if ids is not None else tiny_inputs()
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, active=active).last_hidden_state


def test_the_first_adapters_layer_runs_on_the_embeddings(model) -> None:
    calls = []
    hook = model.adapters["lang"].invertible.register_forward_hook(lambda *a: calls.append(a[1][0].shape))
    try:
        for active in ("lang", "stack(lang,t1)", "stack(lang,fuse(t1,t2))", "parallel(stack(lang,t1),lang)"):
            _out(model, active)
        _out(model, "t1")
    finally:
        hook.remove()
    ids, _ = tiny_inputs()
    assert calls[:3] == [(ids.shape[0], ids.shape[1], model.embedding_size)] * 3
    assert calls[3][0] == 2 * ids.shape[0] and len(calls) == 4  # parallel: every (replicated) row; t1: none


def test_a_zero_layer_changes_nothing_and_a_real_one_does(model) -> None:
    m = copy.deepcopy(model)  # the hook follows the copy (bound method)
    with_layer = _out(m, "stack(lang,t1)")
    with torch.no_grad():
        for p in m.adapters["lang"].invertible.parameters():
            p.zero_()
    assert (with_layer - _out(m, "stack(lang,t1)")).abs().max() > 1e-3
    m.delete_adapter("lang")
    m.add_adapter("lang", "pfeiffer")
    m.adapters["lang"].load_state_dict({k: v for k, v in model.adapters["lang"].state_dict().items()
                                        if not k.startswith("invertible.")})
    no_layer = _out(m, "stack(lang,t1)")
    m.delete_adapter("lang")
    m.add_adapter("lang", "pfeiffer+inv")
    m.adapters["lang"].load_state_dict(model.adapters["lang"].state_dict())
    with torch.no_grad():
        for p in m.adapters["lang"].invertible.parameters():
            p.zero_()
    assert torch.equal(_out(m, "stack(lang,t1)"), no_layer)
    assert torch.equal(_out(model, "stack(lang,t1)"), with_layer)  # the original's hook is its own


@pytest.mark.parametrize("active, message", [
    ("stack(t1,lang)", "adapter 'lang' has an invertible adapter but is not at the bottom of stack\\(t1,lang\\)"),
    ("stack(lang,lang2)", "adapter 'lang2' has an invertible adapter but is not at the bottom"),
    ("fuse(t1,lang)", "adapter 'lang' has an invertible adapter but is not at the bottom"),
    ("parallel(lang,t1)", "runs on every row .* also on the rows of t1, which does not start with 'lang'"),
    ("batch_split(stack(lang,t1),t2,sizes=[1,2])", "also on the rows of t2"),
    ("parallel(stack(lang,t1),stack(lang2,t1))", "adapter 'lang2' has an invertible adapter"),
])
def test_an_invertible_adapter_that_would_be_skipped_or_misapplied_is_refused(model, active, message) -> None:
    with pytest.raises(CompositionError, match=message) as info:
        model.set_active(active)
    assert "\n" not in str(info.value)
    ids, mask = tiny_inputs()
    with pytest.raises(CompositionError, match=message):
        model(input_ids=ids, attention_mask=mask, active=active)


def test_allowed_compositions(model) -> None:
    for active in ("stack(lang,t1)", "stack(lang,batch_split(t1,t2,sizes=[1,2]))", "fuse(stack(lang,t1),t2)",
                   "batch_split(stack(lang,t1),lang,sizes=[1,2])", "stack(t1,t2)"):
        assert model.resolve_composition(active) is not None


def test_invert_embeddings_is_the_reverse_pass(model) -> None:
    x = torch.randn(2, 4, model.embedding_size)
    layer = model.adapters["lang"].invertible
    with torch.no_grad():
        assert torch.allclose(model.invert_embeddings(layer(x), active="stack(lang,t1)"), x, atol=1e-6)
        assert torch.equal(model.invert_embeddings(x, active="t1"), x)
        assert torch.equal(model.invert_embeddings(x, active=None), x)


def test_electra_layer_is_as_wide_as_its_embeddings_and_trains() -> None:
    m = tiny_model("electra")  # embedding_size 16 < hidden 32: the layer runs before embeddings_project
    m.add_adapter("lang", "pfeiffer+inv")
    assert m.embedding_size == 16 and m.adapters["lang"].invertible.F[0].in_features == 8
    assert sum(p.numel() for p in m.adapters["lang"].parameters()) == \
        m.adapters["lang"].config.parameter_count(32, 2, embedding_size=16)["parameters"]
    m.train_adapters(["lang"])
    ids, mask = tiny_inputs()
    m(input_ids=ids, attention_mask=mask, active="lang").last_hidden_state.pow(2).mean().backward()
    assert m.adapters["lang"].invertible.G[2].weight.grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------- files


def _saved_lang(tmp_path, fmt: str = "adapterhub"):
    m = tiny_model("bert")
    m.add_adapter("lang", "pfeiffer+inv")
    m.save_adapter(tmp_path / "lang", "lang", format=fmt)
    return m, tmp_path / "lang"


def test_adapterhub_v1_configs_load_as_adapterhub_loads_them(tmp_path) -> None:
    m, path = _saved_lang(tmp_path)
    data = json.loads((path / "adapter_config.json").read_text())
    config = data["config"]
    config.pop("inv_adapter"), config.pop("inv_adapter_reduction_factor")
    config["invertible_adapter"] = {"block_type": "nice", "reduction_factor": 2}  # v1's nested form
    (path / "adapter_config.json").write_text(json.dumps(data))
    assert m.load_adapter(path, name="v1") == "v1" and m.adapters["v1"].config.inv_adapter == "nice"
    # a v1 task adapter that declares the layer without its weights: AdapterHub drops the layer
    weights = torch.load(path / "pytorch_adapter.bin", weights_only=True)
    torch.save({k: v for k, v in weights.items() if "invertible" not in k}, path / "pytorch_adapter.bin")
    with pytest.raises(ArtifactError, match="missing 'invertible.F.0.bias'"):
        m.load_adapter(path, name="broken")
    (path / "adapter_config.json").write_text(json.dumps({**data, "type": "text_task"}))
    assert m.load_adapter(path, name="task") == "task" and m.adapters["task"].config.inv_adapter is None
    data["config"]["invertible_adapter"] = "nice"
    (path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="invertible_adapter must be an object with block_type"):
        m.load_adapter(path, name="bad")


def test_weights_of_an_invertible_layer_its_config_lacks_are_refused(tmp_path) -> None:
    m, path = _saved_lang(tmp_path, "adapt")
    data = json.loads((path / "adapter_config.json").read_text())
    data["config"].update(inv_adapter=None, inv_adapter_reduction_factor=None)
    (path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="unexpected 'invertible.F.0.bias'"):
        m.load_adapter(path, name="other")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_add_shows_the_invertible_layer() -> None:
    result = runner.invoke(app, ["add", "pfeiffer+inv", "--hidden-size", "768", "--num-layers", "12", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["parameters"] == 1190592  # adapters 1.3.0's adapter_summary
    assert data["placements"][-1] == {"location": "inv_adapter", "layers": [], "bottleneck": 192,
                                      "parameters": 296064}
    table = runner.invoke(app, ["add", "houlsby+inv", "--hidden-size", "768", "--num-layers", "12"])
    assert table.exit_code == 0 and "inv_adapter" in table.stdout and "embeddings" in table.stdout
    assert "2,085,120" in table.stdout
    line = one_line_error(runner.invoke(app, ["add", "pfeiffer+inv", "inv_adapter=glow", "--hidden-size", "768",
                                              "--num-layers", "12"]))
    assert "inv_adapter 'glow' is not supported" in line


def test_cli_refuses_an_invertible_adapter_above_the_bottom(tmp_path) -> None:
    from adapter_cli import AdapterModel

    base = save_tiny_model(tmp_path / "base")
    m = AdapterModel.from_pretrained(base)
    m.add_adapter("lang", "pfeiffer+inv")
    m.add_adapter("task", "pfeiffer")
    m.add_head("task", num_labels=2)
    for name in ("lang", "task"):
        m.save_adapter(tmp_path / name, name)
    args = ["infer", "-m", str(base), "-a", str(tmp_path / "lang"), "-a", str(tmp_path / "task"), "great film"]
    assert runner.invoke(app, [*args, "--active", "stack(lang,task)"]).exit_code == 0
    line = one_line_error(runner.invoke(app, [*args, "--active", "stack(task,lang)"]))
    assert "adapter 'lang' has an invertible adapter but is not at the bottom of stack(task,lang)" in line
