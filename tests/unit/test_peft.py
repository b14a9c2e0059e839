"""PEFT's format: adapters made by peft 0.21.2 (tests/fixtures/peft_*) load and compute as PEFT computes them,
merged too; adapt writes PEFT's files back (same key names); what adapt cannot express is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from adapter_cli import AdapterModel
from adapter_cli.cli.app import app
from adapter_cli.errors import ArtifactError, BaseModelMismatch, UsageError
from adapter_cli.formats import describe, detect, read_adapter
from conftest import FIXTURES, one_line_error, save_tiny_model, tiny_inputs, tiny_model

MODEL_TYPES = ("bert", "roberta")
NAMES = ("lora", "ia3", "dora")
ATOL = 1e-5  # what the fixtures promise (cases.json)
runner = CliRunner()


def root(model_type: str) -> Path:
    return FIXTURES / f"peft_{model_type}"


def cases(model_type: str) -> dict[str, torch.Tensor]:
    return load_file(str(root(model_type) / "cases.safetensors"))


def hidden(model: AdapterModel, batch: dict[str, torch.Tensor], active: str | None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], active=active,
                     head=None).last_hidden_state


def base(model_type: str) -> AdapterModel:
    return AdapterModel.from_pretrained(root(model_type) / "base").eval()


def keys(path: Path) -> set[str]:
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        return set(f.keys())


def peft_copy(tmp_path: Path, model_type: str = "bert", name: str = "lora", config: dict | None = None,
              drop: tuple[str, ...] = ()) -> Path:
    """A copy of a fixture adapter with its config fields changed (None deletes one)."""
    out = tmp_path / f"{name}_copy"
    shutil.copytree(root(model_type) / "adapters" / name, out)
    data = json.loads((out / "adapter_config.json").read_text())
    for key, value in (config or {}).items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    (out / "adapter_config.json").write_text(json.dumps(data))
    if drop:
        weights = load_file(str(out / "adapter_model.safetensors"))
        save_file({k: v for k, v in weights.items() if not any(d in k for d in drop)},
                  str(out / "adapter_model.safetensors"))
    return out


def rename_keys(path: Path, old: str, new: str) -> None:
    weights = load_file(str(path / "adapter_model.safetensors"))
    save_file({k.replace(old, new): v for k, v in weights.items()}, str(path / "adapter_model.safetensors"))


# ===================================================================== PEFT's adapters, PEFT's outputs


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("name", NAMES)
def test_peft_adapters_compute_as_peft(model_type: str, name: str) -> None:
    batch, model = cases(model_type), base(model_type)
    assert torch.allclose(hidden(model, batch, None), batch["base.last_hidden_state"], atol=ATOL)
    loaded = model.load_adapter(root(model_type) / "adapters" / name)
    assert loaded == name
    out = hidden(model, batch, name)
    assert (out - batch[f"{name}.last_hidden_state"]).abs().max() <= ATOL


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("name", ("lora", "dora"))
def test_merged_peft_adapters_compute_as_peft_merge_and_unload(model_type: str, name: str) -> None:
    batch, model = cases(model_type), base(model_type)
    model.load_adapter(root(model_type) / "adapters" / name)
    model.merge_adapter(name)
    assert (hidden(model, batch, None) - batch[f"merged_{name}.last_hidden_state"]).abs().max() <= ATOL


def test_what_is_read() -> None:
    """(IA)³ on feedforward_modules scales the input; DoRA is PEFT's; the model type comes from auto_mapping."""
    ia3 = read_adapter(root("bert") / "adapters" / "ia3")
    assert ia3.format == "peft" and ia3.config.variant == "ia3" and ia3.config.scaled_inputs == ("intermediate",)
    assert ia3.weights["intermediate.0.lora_B"].shape == (40, 1)
    dora = read_adapter(root("roberta") / "adapters" / "dora")
    assert dora.config.use_dora and dora.config.dora_style == "peft" and dora.config.alpha / dora.config.r == 2.0
    assert dora.weights["q.0.m.weight"].shape == (40, 1)
    assert (dora.base.model_type, dora.base.hidden_size) == ("roberta", 40)
    assert detect(root("bert") / "adapters" / "lora", "adapter") == "peft"
    info = describe(root("bert") / "adapters" / "lora")
    assert info["format"] == "peft" and info["versions"] == {"peft": "0.21.2"} and info["parameters"] == 1920


# ===================================================================== writing PEFT's format


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_writes_peft_files(tmp_path: Path, model_type: str, name: str) -> None:
    batch, model = cases(model_type), base(model_type)
    model.load_adapter(root(model_type) / "adapters" / name)
    out = model.save_adapter(tmp_path / name, name, format="peft")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    written = json.loads((out / "adapter_config.json").read_text())
    fixture = json.loads((root(model_type) / "adapters" / name / "adapter_config.json").read_text())
    assert written["peft_type"] == fixture["peft_type"]
    assert set(written["target_modules"]) == {f"attention.self.{m}" for m in fixture["target_modules"]
                                              if "." not in m} | {m for m in fixture["target_modules"] if "." in m}
    assert keys(out) == keys(root(model_type) / "adapters" / name)
    again = base(model_type)
    again.load_adapter(out)
    assert torch.equal(hidden(again, batch, name), hidden(model, batch, name))


def test_round_trip_with_left_out_layers_and_every_matrix(tmp_path: Path) -> None:
    """leave_out is written as layers_to_transform ((IA)³: each layer's modules) and read back; output.dense is
    named layer by layer (its suffix would also match attention.output.dense)."""
    batch, model = cases("bert"), base("bert")
    torch.manual_seed(0)
    specs = {"l": ("lora", {"intermediate_lora": True, "output_lora": True, "leave_out": [1], "r": 2, "alpha": 3}),
             "d": ("dora", {"dora_style": "peft", "output_lora": True, "attn_matrices": ["q", "k"]}),
             "i": ("ia3", {"output_lora": True, "scaled_inputs": ["output"], "leave_out": [0]})}
    for name, (preset, overrides) in specs.items():
        model.add_adapter(name, preset, overrides)
        with torch.no_grad():
            for p in model.adapters[name].parameters():
                p.add_(0.3 * torch.randn_like(p))
        out = model.save_adapter(tmp_path / name, name, format="peft")
        again = base("bert")
        again.load_adapter(out)
        assert again.adapters[name].config == model.adapters[name].config
        assert torch.equal(hidden(again, batch, name), hidden(model, batch, name))
    written = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    assert written["layers_to_transform"] == [0, 2]
    assert "output.dense" not in written["target_modules"] and "encoder.layer.2.output.dense" in written["target_modules"]
    ia3 = json.loads((tmp_path / "i" / "adapter_config.json").read_text())
    assert ia3["feedforward_modules"] == ["encoder.layer.1.output.dense", "encoder.layer.2.output.dense"]


def test_layers_left_out_above_the_last_changed_one_load(tmp_path: Path) -> None:
    """PEFT records no layer count: a skipped top layer is only known from the model it is loaded into."""
    batch, model = cases("bert"), base("bert")
    model.add_adapter("top", "lora", {"leave_out": [2]})
    with torch.no_grad():
        for p in model.adapters["top"].parameters():
            p.add_(0.3 * torch.randn_like(p))
    again = base("bert")
    again.load_adapter(model.save_adapter(tmp_path / "top", "top", format="peft"))
    assert again.adapters["top"].config.leave_out == (2,)
    assert torch.equal(hidden(again, batch, "top"), hidden(model, batch, "top"))


def test_distilbert_layout_round_trips(tmp_path: Path) -> None:
    model = tiny_model("distilbert")
    model.add_adapter("d", "dora", {"dora_style": "peft", "intermediate_lora": True})
    with torch.no_grad():
        for p in model.adapters["d"].parameters():
            p.add_(0.3 * torch.randn_like(p))
    out = model.save_adapter(tmp_path / "d", "d", format="peft")
    assert "base_model.model.transformer.layer.0.attention.q_lin.lora_magnitude_vector" in keys(out)
    artifact = read_adapter(out)
    assert artifact.base.model_type == "distilbert"
    again = tiny_model("distilbert")
    again.load_adapter(out)
    ids, mask = tiny_inputs()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, active="d", head=None).last_hidden_state
        b = again(input_ids=ids, attention_mask=mask, active="d", head=None).last_hidden_state
    assert torch.equal(a, b)


def test_peft_format_writes_no_head(tmp_path: Path) -> None:
    model = base("bert")
    model.load_adapter(root("bert") / "adapters" / "lora")
    model.add_head("lora", num_labels=2)
    out = model.save_adapter(tmp_path / "x", "lora", format="peft")
    assert not (out / "head_config.json").exists()
    with pytest.raises(UsageError, match="use 'adapt' or 'adapterhub'"):
        model.save_head(tmp_path / "h", "lora", format="peft")


@pytest.mark.parametrize("preset, overrides, message", [
    ("pfeiffer", {}, "bottleneck adapters have no PEFT equivalent"),
    ("dora", {}, "PEFT would compute different outputs"),
    ("lora", {"use_gating": True}, "use_gating"),
    ("vera", {}, "VeRA"),
    ("ia3", {"alpha": 2.0}, "alpha must be 1"),
    ("lora", {"dtype": "float16"}, "dtype"),
])
def test_writing_what_peft_cannot_express_is_refused(tmp_path: Path, preset: str, overrides: dict,
                                                     message: str) -> None:
    model = base("bert")
    model.add_adapter("a", preset, overrides)
    with pytest.raises(UsageError, match=message) as err:
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert "\n" not in str(err.value) and "PEFT's format" in str(err.value)
    assert not (tmp_path / "a").exists()


# ===================================================================== refused in one line


def test_lora_on_modules_adapt_cannot_change_is_refused() -> None:
    path = root("bert") / "adapters" / "lora_all"
    with pytest.raises(ArtifactError) as err:
        base("bert").load_adapter(path)
    assert "\n" not in str(err.value)
    assert "encoder.layer.0.attention.output.dense" in str(err.value) and "output.dense" in str(err.value)
    line = one_line_error(runner.invoke(app, ["inspect", str(path)]))
    assert "attention.output.dense, which adapt cannot express" in line


@pytest.mark.parametrize("config, message", [
    ({"peft_type": "PREFIX_TUNING"}, "PEFT method 'PREFIX_TUNING' is not supported"),
    ({"peft_type": "VERA"}, "PEFT method 'VERA' is not supported"),
    ({"rank_pattern": {"query": 8}}, "rank_pattern"),
    ({"alpha_pattern": {"query": 8}}, "alpha_pattern"),
    ({"use_rslora": True}, "use_rslora"),
    ({"modules_to_save": ["classifier"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa'"),
    ({"kasa_config": {"x": 1}}, "PEFT field 'kasa_config' is set"),
    ({"layers_to_transform": [0, 1]}, "layers_to_transform [0, 1] does not match"),
])
def test_unsupported_peft_configs_are_refused_in_one_line(tmp_path: Path, config: dict, message: str) -> None:
    path = peft_copy(tmp_path, config=config)
    assert message in one_line_error(runner.invoke(app, ["inspect", str(path)]))
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[").replace("(", r"\(")):
        base("bert").load_adapter(path)


def test_matrices_changed_in_different_layers_are_refused(tmp_path: Path) -> None:
    path = peft_copy(tmp_path, drop=("layer.1.attention.self.value",))
    line = one_line_error(runner.invoke(app, ["inspect", str(path)]))
    assert "changes v in layers [0, 2]" in line


def test_a_whole_layer_without_weights_is_left_out(tmp_path: Path) -> None:
    path = peft_copy(tmp_path, drop=("layer.1.",))
    artifact = read_adapter(path)
    assert artifact.config.leave_out == (1,)
    batch, model = cases("bert"), base("bert")
    model.load_adapter(path, name="lora")
    reference = base("bert")
    reference.load_adapter(root("bert") / "adapters" / "lora")
    with torch.no_grad():  # the same as the full adapter with layer 1's update zeroed
        for p in (reference.adapters["lora"].q["1"].lora_B, reference.adapters["lora"].v["1"].lora_B):
            p.zero_()
    assert torch.equal(hidden(model, batch, "lora"), hidden(reference, batch, "lora"))


def test_a_peft_adapter_for_another_hidden_size_is_refused(tmp_path: Path) -> None:
    path = peft_copy(tmp_path)
    weights = load_file(str(path / "adapter_model.safetensors"))
    save_file({k: (v[:, :32] if "lora_A" in k else v[:32]).contiguous() for k, v in weights.items()},
              str(path / "adapter_model.safetensors"))
    assert read_adapter(path).base.hidden_size == 32
    with pytest.raises(BaseModelMismatch, match="hidden size 32") as err:
        base("bert").load_adapter(path)
    assert "\n" not in str(err.value)
    # the CLI: a base model (hidden 32, with a tokenizer) refusing the fixture (hidden 40)
    model_dir = save_tiny_model(tmp_path / "tiny")
    line = one_line_error(runner.invoke(app, ["infer", "-m", str(model_dir), "-a",
                                              str(root("bert") / "adapters" / "lora"), "good film"]))
    assert "hidden size 40" in line


# ===================================================================== the model type PEFT does not record


def test_task_model_keys_give_the_model_type(tmp_path: Path) -> None:
    """Adapters made on a task model (BertForSequenceClassification...) carry transformers' prefix."""
    path = peft_copy(tmp_path, config={"auto_mapping": None})
    rename_keys(path, "base_model.model.encoder.", "base_model.model.bert.encoder.")
    assert read_adapter(path).base.model_type == "bert"
    batch, model = cases("bert"), base("bert")
    model.load_adapter(path, name="lora")
    assert (hidden(model, batch, "lora") - batch["lora.last_hidden_state"]).abs().max() <= ATOL


def test_an_unknown_model_type_loads_by_its_layout(tmp_path: Path) -> None:
    path = peft_copy(tmp_path, "roberta", config={"auto_mapping": None})
    assert read_adapter(path).base.model_type is None  # encoder.layer: BERT, RoBERTa, XLM-R or ELECTRA
    batch, model = cases("roberta"), base("roberta")
    model.load_adapter(path, name="lora")
    assert (hidden(model, batch, "lora") - batch["lora.last_hidden_state"]).abs().max() <= ATOL


# ===================================================================== decoders (Llama, Mistral)


@pytest.mark.parametrize("model_type", ("llama", "mistral"))
def test_peft_adapters_on_decoders(model_type: str) -> None:
    """PEFT's LoRA and DoRA on q_proj/v_proj compute as PEFT, also merged. (IA)³ there scales k and v, which are
    narrower than the hidden states under grouped-query attention, and down_proj's input: no weight is as wide
    as the hidden states, which PEFT does not record, so it is refused in one line; gate_proj (in lora_all) is
    a layer adapt does not change."""
    batch = cases(model_type)
    for name in ("lora", "dora"):
        model = base(model_type)
        model.load_adapter(root(model_type) / "adapters" / name)
        assert (hidden(model, batch, name) - batch[f"{name}.last_hidden_state"]).abs().max() <= ATOL
        model.merge_adapter(name)
        assert (hidden(model, batch, None) - batch[f"merged_{name}.last_hidden_state"]).abs().max() <= ATOL
    with pytest.raises(ArtifactError, match="cannot tell the hidden size from the weights"):
        read_adapter(root(model_type) / "adapters" / "ia3")
    with pytest.raises(ArtifactError, match="changes layers.0.mlp.gate_proj, which adapt cannot express"):
        read_adapter(root(model_type) / "adapters" / "lora_all")
