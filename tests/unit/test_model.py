"""Stitching into every supported architecture, freezing, compositions, heads, and save/load."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from adapter_cli.errors import ArtifactError, BaseModelMismatch, CompositionError, UnsupportedModel, UsageError
from conftest import ROOT, randomise, tiny_config, tiny_inputs, tiny_model

ARCHS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert"]


@pytest.mark.parametrize("model_type", ARCHS)
def test_no_active_adapter_is_bit_identical_to_transformers(model_type) -> None:
    from transformers import AutoModel

    torch.manual_seed(0)
    plain = AutoModel.from_config(tiny_config(model_type)).eval()
    torch.manual_seed(0)
    model = tiny_model(model_type)
    model.add_adapter("a", "houlsby")
    randomise(model.adapters["a"])
    ids, mask = tiny_inputs()
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with_adapter = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
    assert torch.equal(got, want)
    assert (with_adapter - want).abs().max() > 1e-2  # and the adapter really is in the forward pass


@pytest.mark.parametrize("model_type", ARCHS)
def test_every_placement_changes_the_output(model_type) -> None:
    model = tiny_model(model_type)
    ids, mask = tiny_inputs()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    for preset in ("pfeiffer", "bapna", "parallel"):
        model.add_adapter(preset, preset)
        randomise(model.adapters[preset])
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, active=preset).last_hidden_state
        assert (out - base).abs().max() > 1e-2, preset
    model.add_adapter("mh", "pfeiffer", {"mh_adapter": True, "output_adapter": False})
    randomise(model.adapters["mh"])
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask, active="mh").last_hidden_state - base).abs().max() > 1e-2


def test_freshly_initialised_seq_adapter_is_near_identity() -> None:
    # bert init: small weights, so a new Pfeiffer adapter barely moves the output
    model = tiny_model()
    model.add_adapter("a")
    ids, mask = tiny_inputs()
    with torch.no_grad():
        delta = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state - \
            model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert 0 < delta.abs().max() < 0.5


def test_base_is_frozen_and_only_adapters_and_heads_train() -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.add_head("a", num_labels=3)
    model.train_adapters(["a"], heads=["a"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapters", "heads"}
    ids, mask = tiny_inputs()
    out = model(input_ids=ids, attention_mask=mask, active="a", labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert all(p.grad is not None for p in model.adapters["a"].parameters())


def test_leave_out_skips_layers() -> None:
    model = tiny_model()
    model.add_adapter("a", "pfeiffer", {"leave_out": [0]})
    assert list(model.adapters["a"].output_adapter.keys()) == ["1"]
    with pytest.raises(Exception, match="leave_out names layers"):
        model.add_adapter("b", "pfeiffer", {"leave_out": [5]})


def test_unsupported_architecture_lists_supported_ones() -> None:
    from transformers import AutoConfig

    from adapter_cli import AdapterModel

    with pytest.raises(UnsupportedModel, match="supported model types: bart, bert, distilbert, electra, gpt2, llama, "
                                               "mbart, mistral, mt5, qwen2, roberta, t5, vit, xlm-roberta$"):
        AdapterModel.from_config(AutoConfig.for_model("albert", num_hidden_layers=1, hidden_size=32,
                                                      num_attention_heads=2, intermediate_size=64, vocab_size=100))


def test_composition_errors_name_what_is_missing() -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.add_adapter("b")
    ids, mask = tiny_inputs()
    with pytest.raises(CompositionError, match="not loaded: c"):
        model(input_ids=ids, attention_mask=mask, active="stack(a,c)")
    with pytest.raises(CompositionError, match="fusion layer 'a,b'"):
        model(input_ids=ids, attention_mask=mask, active="fuse(a,b)")
    model.add_fusion("a,b")
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, active="fuse(a,b)")


def test_fusion_needs_shared_placement() -> None:
    model = tiny_model()
    model.add_adapter("seq", "pfeiffer")
    model.add_adapter("mh", "pfeiffer", {"mh_adapter": True})
    with pytest.raises(Exception, match="different placements"):
        model.add_fusion(["seq", "mh"])


def test_restructured_fusion_equals_reference() -> None:
    from adapter_cli.fusion import FusionLayer
    from adapter_cli.fusion_config import resolve_fusion_config

    torch.manual_seed(0)
    for config in ("dynamic", "static", {"residual_before": True, "query_before_ln": False, "key": True,
                                         "query": True, "value": True, "regularization": False,
                                         "temperature": False, "value_before_softmax": True,
                                         "value_initialized": False, "dropout_prob": None}):
        layer = FusionLayer(resolve_fusion_config(config), 16, 0.0).eval()
        randomise(layer)
        q, r = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
        ups = [torch.randn(2, 5, 16) for _ in range(4)]
        torch.testing.assert_close(layer.restructured_forward(q, ups, r), layer.reference_forward(q, ups, r),
                                   atol=1e-5, rtol=1e-5)


def test_deepcopy_keeps_adapters_working() -> None:
    import copy

    model = tiny_model()
    model.add_adapter("a")
    randomise(model.adapters["a"])
    ids, mask = tiny_inputs()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
        got = twin(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
    assert torch.equal(got, want)
    with torch.no_grad():
        twin.adapters["a"].output_adapter["0"].up.bias.add_(1.0)
        assert torch.equal(model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state, want)


@pytest.mark.parametrize("head_type, kw", [("classification", {"num_labels": 3}), ("regression", {"num_labels": 1}),
                                           ("multiple_choice", {"num_choices": 4})])
def test_heads(head_type, kw) -> None:
    model = tiny_model()
    model.add_head("h", head_type, **kw)
    ids, mask = tiny_inputs(batch=4)
    if head_type == "multiple_choice":
        ids, mask = ids.view(1, 4, -1), mask.view(1, 4, -1)
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([2]))
        assert out.logits.shape == (1, 4)
    else:
        labels = torch.tensor([0.5, 1.0, -1.0, 2.0]) if head_type == "regression" else torch.tensor([0, 1, 2, 0])
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert out.logits.shape == (4, kw["num_labels"])
    assert out.loss is not None and torch.isfinite(out.loss)


SAVE_AND_RELOAD = textwrap.dedent("""
    import sys, torch
    from adapter_cli import AdapterModel
    from transformers import AutoConfig
    base_dir, adapter_dir, fusion_dir, out = sys.argv[1:5]
    m = AdapterModel.from_pretrained(base_dir)
    m.load_adapter(adapter_dir)
    m.load_adapter(adapter_dir + "_b")
    m.load_fusion(fusion_dir)
    m.eval()
    ids = torch.load(out + ".in", weights_only=True)
    with torch.no_grad():
        o = m(input_ids=ids, active="stack(a,b)", head="a")
        f = m(input_ids=ids, active="fuse(a,b)")
    torch.save({"hidden": o.last_hidden_state, "logits": o.logits, "fused": f.last_hidden_state}, out)
""")


@pytest.mark.parametrize("fmt", ["adapt", "adapterhub"])
def test_save_then_load_in_a_fresh_process_gives_identical_outputs(tmp_path, fmt) -> None:
    model = tiny_model("roberta")
    model.base.save_pretrained(tmp_path / "base")
    model.add_adapter("a", "bapna", {"reduction_factor": 4, "ln_after": True, "scaling": "learned"})
    model.add_adapter("b", "pfeiffer", {"use_gating": True})
    model.add_head("a", num_labels=3)
    model.add_fusion("a,b")
    for module in (model.adapters["a"], model.adapters["b"], model.heads["a"], model.fusions["a,b"]):
        randomise(module)
    model.eval()
    ids, _ = tiny_inputs()
    with torch.no_grad():
        want = model(input_ids=ids, active="stack(a,b)", head="a")
        fused = model(input_ids=ids, active="fuse(a,b)").last_hidden_state
    model.save_adapter(tmp_path / "ad", "a", format=fmt)
    model.save_adapter(tmp_path / "ad_b", "b", format=fmt, safetensors=True)
    model.save_fusion(tmp_path / "fu", "a,b", format=fmt)
    torch.save(ids, tmp_path / "out.in")
    subprocess.run([sys.executable, "-c", SAVE_AND_RELOAD, str(tmp_path / "base"), str(tmp_path / "ad"),
                    str(tmp_path / "fu"), str(tmp_path / "out")], check=True, cwd=ROOT)
    got = torch.load(tmp_path / "out", weights_only=True)
    assert torch.equal(got["hidden"], want.last_hidden_state)
    assert torch.equal(got["logits"], want.logits)
    assert torch.equal(got["fused"], fused)


def test_half_precision_export_is_smaller_and_close(tmp_path) -> None:
    model = tiny_model()
    model.add_adapter("a", "houlsby")
    randomise(model.adapters["a"])
    model.save_adapter(tmp_path / "fp32", "a")
    model.save_adapter(tmp_path / "fp16", "a", dtype=torch.float16)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "fp16" / "adapter_weights.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    size = lambda d: (d / "adapter_weights.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "fp16") < size(tmp_path / "fp32")
    other = tiny_model()
    other.load_adapter(tmp_path / "fp16")
    ids, mask = tiny_inputs()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
        b = other(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
    assert (a - b).abs().max() < 5e-2


def test_name_comes_from_config_unless_given(tmp_path) -> None:
    model = tiny_model()
    model.add_adapter("orig")
    model.save_adapter(tmp_path / "x", "orig")
    other = tiny_model()
    assert other.load_adapter(tmp_path / "x") == "orig"
    assert other.load_adapter(tmp_path / "x", name="renamed") == "renamed"
    with pytest.raises(UsageError, match="already loaded"):
        other.load_adapter(tmp_path / "x")
    with pytest.raises(CompositionError, match="invalid adapter name"):
        other.load_adapter(tmp_path / "x", name="a.b")


def test_mismatched_base_models_are_refused(tmp_path) -> None:
    small = tiny_model()
    small.add_adapter("a")
    small.save_adapter(tmp_path / "a", "a")
    with pytest.raises(BaseModelMismatch, match="hidden size 32"):
        tiny_model(hidden_size=48, num_attention_heads=4).load_adapter(tmp_path / "a")
    with pytest.raises(BaseModelMismatch, match="'bert' model"):
        tiny_model("roberta").load_adapter(tmp_path / "a")
    with pytest.raises(BaseModelMismatch, match="2 layers"):
        tiny_model(num_hidden_layers=3).load_adapter(tmp_path / "a")


def test_missing_and_corrupt_files(tmp_path) -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.save_adapter(tmp_path / "a", "a")
    other = tiny_model()
    with pytest.raises(ArtifactError, match="no adapter directory"):
        other.load_adapter(tmp_path / "nope")
    (tmp_path / "a" / "adapter_weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="corrupt weights file"):
        other.load_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no weights"):
        other.load_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        other.load_adapter(tmp_path / "a")
    assert list(other.adapters) == []


def test_unsafe_pickles_are_refused(tmp_path) -> None:
    import json
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "evil"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({
        "config": {"mh_adapter": False, "output_adapter": True, "reduction_factor": 16, "non_linearity": "relu"},
        "hidden_size": 32, "model_type": "bert", "name": "evil", "version": "adapters.1.3.0"}))
    with open(d / "pytorch_adapter.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(ArtifactError, match="corrupt or unsafe"):
        tiny_model().load_adapter(d)


def test_fusion_without_members_is_refused(tmp_path) -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.add_adapter("b")
    model.add_fusion("a,b")
    model.save_fusion(tmp_path / "f", "a,b")
    other = tiny_model()
    other.add_adapter("a")
    with pytest.raises(UsageError, match="missing: b"):
        other.load_fusion(tmp_path / "f")
