"""Adapter configuration: presets, overrides, validation and parameter counts from the config alone."""

from __future__ import annotations

import pytest

from adapter_cli.errors import ConfigError
from adapter_cli.methods.bottleneck import BottleneckConfig
from adapter_cli.presets import adapter_presets, parse_overrides, resolve_adapter_config


def test_presets_and_aliases_resolve() -> None:
    presets = adapter_presets()
    for name in ("pfeiffer", "seq_bn", "houlsby", "double_seq_bn", "bapna", "parallel", "par_bn"):
        assert name in presets
    assert resolve_adapter_config("seq_bn") == resolve_adapter_config("pfeiffer")
    houlsby = resolve_adapter_config("houlsby")
    assert houlsby.mh_adapter and houlsby.output_adapter and houlsby.non_linearity == "swish"
    assert not houlsby.original_ln_before
    bapna = resolve_adapter_config("bapna")
    assert bapna.ln_before and not bapna.original_ln_after and bapna.residual_before_ln is False
    par = resolve_adapter_config("parallel")
    assert par.is_parallel and par.scaling == 4.0 and par.reduction_factor == 2


def test_inline_and_command_line_overrides() -> None:
    cfg = resolve_adapter_config("pfeiffer[reduction_factor=8,non_linearity=gelu]", {"leave_out": [0, 1]})
    assert cfg.reduction_factor == 8 and cfg.non_linearity == "gelu" and cfg.leave_out == (0, 1)
    sized = resolve_adapter_config("pfeiffer", {"bottleneck_size": 20})
    assert sized.reduction_factor is None and sized.width(0, 384) == 20
    per_layer = resolve_adapter_config("pfeiffer", {"reduction_factor": {"0": 2, "default": 16}})
    assert per_layer.width(0, 768) == 384 and per_layer.width(5, 768) == 48
    assert parse_overrides(["a=1", "b=true", "c=[1,2]", "d=gelu"]) == {"a": 1, "b": True, "c": [1, 2], "d": "gelu"}


def test_config_file(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("mh_adapter: true\noutput_adapter: false\nreduction_factor: 4\nnon_linearity: tanh\n")
    cfg = resolve_adapter_config(str(path))
    assert cfg.locations == ("mh_adapter",) and cfg.non_linearity == "tanh"


@pytest.mark.parametrize("spec, overrides, message", [
    ("pfeifer", None, "did you mean 'pfeiffer'"),
    ("pfeiffer", {"reduction_factr": 4}, "did you mean 'reduction_factor'"),
    ("pfeiffer", {"non_linearity": "relux"}, "unknown non_linearity"),
    ("pfeiffer", {"output_adapter": False}, "no placement"),
    ("pfeiffer", {"scaling": "big"}, "scaling"),
    ("pfeiffer", {"residual_before_ln": "sometimes"}, "residual_before_ln"),
    ("pfeiffer", {"reduction_factor": 0}, "positive"),
    ("pfeiffer", {"dropout": 1.5}, "dropout"),
    ("pfeiffer", {"init_weights": "xavier"}, "init_weights"),
    ("pfeiffer", {"kind": "domain"}, "kind"),
])
def test_bad_configs_are_rejected(spec, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_adapter_config(spec, overrides)


def test_zero_width_bottleneck_is_an_error() -> None:
    cfg = resolve_adapter_config("pfeiffer", {"reduction_factor": 1000})
    with pytest.raises(ConfigError, match="zero-width bottleneck"):
        cfg.width(0, 768)
    with pytest.raises(ConfigError, match="zero-width"):
        cfg.parameter_count(768, 12)


@pytest.mark.parametrize("factor, millions", [(64, 0.2), (16, 0.9), (2, 7.1)])
def test_parameter_counts_match_the_adapterhub_paper(factor, millions) -> None:
    # AdapterHub paper, Table 2: Pfeiffer adapters on BERT-base (hidden 768, 12 layers).
    counts = resolve_adapter_config("pfeiffer", {"reduction_factor": factor}).parameter_count(768, 12)
    assert round(counts["parameters"] / 1e6, 1) == millions
    houlsby = resolve_adapter_config("houlsby", {"reduction_factor": factor}).parameter_count(768, 12)
    assert houlsby["parameters"] == 2 * counts["parameters"]  # same width, twice the placements


def test_size_at_factor_16_is_about_3_5_mb() -> None:
    counts = resolve_adapter_config("pfeiffer").parameter_count(768, 12)
    assert counts["parameters"] == 894_528  # 12 x (768*48 + 48 + 48*768 + 768)
    assert 3.4e6 <= counts["bytes_fp32"] <= 3.6e6


def test_counts_equal_built_modules() -> None:
    from adapter_cli.methods.bottleneck_layers import BottleneckAdapterSet

    for spec, ov in [("houlsby", {}), ("bapna", {"ln_after": True}), ("pfeiffer", {"use_gating": True,
                     "scaling": "channel", "leave_out": [1]}), ("parallel", {"scaling": "learned"})]:
        cfg = resolve_adapter_config(spec, ov)
        built = sum(p.numel() for p in BottleneckAdapterSet(cfg, 40, 3).parameters())
        assert built == cfg.parameter_count(40, 3)["parameters"], spec


def test_round_trip_through_dict() -> None:
    cfg = resolve_adapter_config("houlsby", {"leave_out": [2], "scaling": "learned"})
    assert BottleneckConfig.from_dict(cfg.to_dict()) == cfg
