"""Regression tests for problems found in review: unsafe overwrites, checkpointing, threads, bad types."""

from __future__ import annotations

import threading

import pytest
import torch

from adapter_cli.errors import AdaptError, ConfigError, UsageError
from adapter_cli.presets import resolve_adapter_config
from conftest import randomise, tiny_inputs, tiny_model


def test_saving_never_replaces_a_user_directory(tmp_path) -> None:
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("important")
    model = tiny_model()
    model.add_adapter("a")
    with pytest.raises(UsageError, match="never replaced"):
        model.save_adapter(project, "a")
    assert (project / "src" / "main.py").read_text() == "important"
    model.save_adapter(tmp_path / "ad", "a")
    model.save_adapter(tmp_path / "ad", "a")  # an artifact directory may be replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad", "proj"]


def test_gradient_checkpointing_keeps_adapters_active() -> None:
    ids, mask = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model.add_adapter("a")
        model.add_adapter("b")
        model.add_fusion("a,b")
        for module in (model.adapters, model.fusions):
            randomise(module)
        model.train_adapters(["a", "b"], fusions=["a,b"])
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        out = model(input_ids=ids, attention_mask=mask, active="fuse(a,b)").last_hidden_state
        out.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_concurrent_forwards_do_not_mix() -> None:
    model = tiny_model()
    model.add_adapter("a")
    randomise(model.adapters["a"])
    ids, mask = tiny_inputs()
    with torch.no_grad():
        want = {a: model(input_ids=ids, attention_mask=mask, active=a).last_hidden_state for a in ("a", None)}
    errors = []

    def work(active):
        with torch.no_grad():
            for _ in range(30):
                got = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
                if not torch.equal(got, want[active]):
                    errors.append(active)

    threads = [threading.Thread(target=work, args=(a,)) for a in ("a", None, "a", None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_integer_layer_keys() -> None:
    cfg = resolve_adapter_config("pfeiffer", {"reduction_factor": {0: 4, "default": 16}})
    assert cfg.width(0, 32) == 8 and cfg.width(1, 32) == 2


def test_new_modules_follow_the_model_mode() -> None:
    model = tiny_model()
    assert not model.training
    model.add_adapter("a", "pfeiffer", {"dropout": 0.5})
    model.add_head("a", num_labels=2)
    ids, mask = tiny_inputs()
    with torch.no_grad():
        one = model(input_ids=ids, attention_mask=mask, active="a").logits
        two = model(input_ids=ids, attention_mask=mask, active="a").logits
    assert torch.equal(one, two)


def test_bottleneck_sizes_export_to_adapterhub(tmp_path) -> None:
    from adapter_cli.formats.adapterhub import config_to_adapterhub

    for size in (13, 15, 17, 26, 30):
        cfg = resolve_adapter_config("pfeiffer", {"bottleneck_size": size})
        factor = config_to_adapterhub(cfg, 768, 12)["reduction_factor"]
        assert int(768 // factor) == size
    per_layer = resolve_adapter_config("pfeiffer", {"bottleneck_size": {"0": 8, "default": 4}})
    model = tiny_model()
    model.add_adapter("p", per_layer)
    model.save_adapter(tmp_path / "p", "p", format="adapterhub")
    other = tiny_model()
    other.load_adapter(tmp_path / "p")
    assert [m.down.out_features for _, _, m in other.adapters["p"].sites()] == [8, 4]


@pytest.mark.parametrize("overrides", [{"leave_out": 5}, {"leave_out": ["a"]}, {"non_linearity": None},
                                       {"init_weights": None}, {"init_weights_seed": "abc"},
                                       {"residual_before_ln": 1}])
def test_bad_types_are_config_errors(overrides) -> None:
    with pytest.raises(ConfigError):
        resolve_adapter_config("pfeiffer", overrides)


def test_bad_head_and_fusion_types() -> None:
    from adapter_cli.fusion_config import FusionConfig
    from adapter_cli.head_config import HeadConfig

    for data in ({"layers": "2"}, {"num_labels": "3"}, {"dropout_prob": "x"}, {"activation_function": 5}):
        with pytest.raises(ConfigError):
            HeadConfig.from_dict(data)
    with pytest.raises(ConfigError):
        FusionConfig.from_dict({"query": "false"})
    model = tiny_model("distilbert")
    with pytest.raises(UsageError, match="pooler"):
        model.add_head("h", use_pooler=True)
    with pytest.raises(AdaptError):
        model.add_head("h", foo=1)
    with pytest.raises(UsageError):
        model.delete_fusion("zz")


def test_leave_out_outside_the_model_in_counts() -> None:
    with pytest.raises(ConfigError, match="leave_out"):
        resolve_adapter_config("pfeiffer", {"leave_out": [50]}).parameter_count(768, 12)


def test_wrapping_one_base_twice_is_refused() -> None:
    from adapter_cli import AdapterModel

    model = tiny_model()
    model.add_adapter("a")
    with pytest.raises(UsageError, match="already has adapters"):
        AdapterModel(model.base).add_adapter("b")


def test_deleting_an_adapter_drops_its_fusions_and_active() -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.add_adapter("b")
    model.add_fusion("a,b")
    model.set_active("fuse(a,b)")
    model.delete_adapter("b")
    assert list(model.fusions) == [] and model.active is None


def test_multilabel_adapterhub_heads_are_read_as_multilabel(tmp_path) -> None:
    """Once refused (sigmoid outputs were not supported); never read as a softmax classifier."""
    import json

    model = tiny_model()
    model.add_head("h", num_labels=3)
    model.save_head(tmp_path / "h", "h", format="adapterhub")
    config = json.loads((tmp_path / "h" / "head_config.json").read_text())
    config["config"]["multilabel"] = True
    (tmp_path / "h" / "head_config.json").write_text(json.dumps(config))
    other = tiny_model()
    assert other.heads[other.load_head(tmp_path / "h")].config.head_type == "multilabel_classification"


def test_checkpointing_adds_no_backward_below_the_lowest_adapter() -> None:
    """transformers' checkpointing makes the embedding output require grad (only reentrant checkpointing
    needs that); left in place it costs a backward through layer 0 to nothing, and survived disabling."""
    from conftest import tiny_inputs, tiny_model

    model = tiny_model()
    model.add_adapter("a")
    model.train_adapters(["a"])
    ids, _ = tiny_inputs()
    for toggle in (model.gradient_checkpointing_enable, model.gradient_checkpointing_disable):
        toggle()
        assert not model.base.embeddings(input_ids=ids).requires_grad
