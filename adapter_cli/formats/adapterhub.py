"""AdapterHub's format (the ``adapters`` library, and ``adapter-transformers`` before it).

Files: ``adapter_config.json`` + ``pytorch_adapter.bin`` or ``adapter.safetensors``;
``adapter_fusion_config.json`` + ``pytorch_model_adapter_fusion.bin`` / ``model_adapter_fusion.safetensors``;
``head_config.json`` + ``pytorch_model_head.bin`` / ``model_head.safetensors``. Weight names carry the
model's module path, e.g. ``bert.encoder.layer.3.output.adapters.mrpc.adapter_up.weight``; the
architecture table says where each site lives. Legacy (v1) names are renamed on read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..architectures import Architecture, architecture_for
from ..errors import ArtifactError, ConfigError
from .adapterhub_lora import feed_forward_layout, lora_config_from_adapterhub, lora_config_to_adapterhub, \
    lora_weights_from_adapterhub, lora_weights_to_adapterhub
from .adapterhub_prefix import prefix_config_from_adapterhub, prefix_config_to_adapterhub, \
    prefix_layer_count, prefix_weights_from_adapterhub, prefix_weights_to_adapterhub
from .adapterhub_prompt import prompt_config_from_adapterhub, prompt_config_to_adapterhub, \
    prompt_weights_from_adapterhub, prompt_weights_to_adapterhub
from .adapterhub_reft import reft_config_from_adapterhub, reft_config_to_adapterhub, reft_weights_from_adapterhub, \
    reft_weights_to_adapterhub
from .artifacts import (ADAPTER_CONFIG, HEAD_CONFIG, AdapterArtifact, BaseModelInfo, FusionArtifact, HeadArtifact,
               load_safetensors, load_torch_bin, one_adapter, read_json, save_safetensors)

if TYPE_CHECKING:
    import torch

WRITTEN_VERSION = "adapters.1.3.0"  # the AdapterHub release whose format we write (and test against)
FUSION_CONFIG = "adapter_fusion_config.json"
FILES = {
    "adapter": (ADAPTER_CONFIG, "pytorch_adapter.bin", "adapter.safetensors"),
    "fusion": (FUSION_CONFIG, "pytorch_model_adapter_fusion.bin", "model_adapter_fusion.safetensors"),
    "head": (HEAD_CONFIG, "pytorch_model_head.bin", "model_head.safetensors"),
}
LEGACY_KEYS = {
    "attention_text_task_adapters": "adapters", "attention_text_lang_adapters": "adapters",
    "layer_text_task_adapters": "adapters", "layer_text_lang_adapters": "adapters",
    "invertible_lang_adapters": "invertible_adapters",
}
# AdapterHub's BnConfig defaults for fields an old config may lack.
BN_DEFAULTS: dict[str, Any] = {
    "original_ln_before": False, "original_ln_after": True, "residual_before_ln": True,
    "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False, "init_weights": "bert",
    "init_weights_seed": None, "is_parallel": False, "scaling": 1.0, "use_gating": False, "leave_out": [],
    "dropout": 0.0, "stochastic_depth": 0.0, "cross_adapter": False,
}
# AdapterHub's Compacter (PHM) fields, for configs written before they existed (they map onto ours by name).
PHM_DEFAULTS: dict[str, Any] = {
    "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True,
}
ACTIVATION_RENAME = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # for configs written before "version" existed


def is_adapterhub(path: Path, kind: str) -> bool:
    config, *weights = FILES[kind]
    return (path / config).is_file()


def _weights(path: Path, kind: str, shapes_only: bool = False) -> dict[str, Any]:
    """Tensors, or ``TensorInfo`` with ``shapes_only``: the mapping below only moves values by key."""
    _, bin_name, st_name = FILES[kind]
    if (path / st_name).is_file():
        return load_safetensors(path / st_name, shapes_only)
    if (path / bin_name).is_file():
        return load_torch_bin(path / bin_name, shapes_only)
    raise ArtifactError(f"{path} has no weights: neither {bin_name} nor {st_name} is there")


def _base(data: dict[str, Any], path: Path) -> BaseModelInfo:
    try:
        model_type, hidden_size = str(data["model_type"]), int(data["hidden_size"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"corrupt {path}: model_type and hidden_size are required") from None
    try:
        return BaseModelInfo(model_type=model_type, hidden_size=hidden_size, name_or_path=data.get("model_name"))
    except ValueError as exc:  # a shape outside the range of real models
        raise ArtifactError(f"corrupt {path}: {exc}") from None


def _rename_activation(data: dict[str, Any], key: str) -> None:
    config = data.get("config") or {}
    if "version" not in data and config.get(key) in ACTIVATION_RENAME:
        config[key] = ACTIVATION_RENAME[config[key]]


# ===================================================================== adapters


def config_from_adapterhub(raw: dict[str, Any], source: str) -> Any:
    from ..methods.bottleneck import BottleneckConfig

    raw = dict(raw)
    arch = raw.pop("architecture", None)
    if arch not in (None, "bottleneck"):
        raise ConfigError(f"{source}: AdapterHub method {arch!r} is not supported; bottleneck and LoRA-family "
                          "(lora, ia3, dora, vera) adapters are")
    _legacy_invertible(raw, source)
    if raw.get("inv_adapter") is None:
        raw.pop("inv_adapter_reduction_factor", None)  # a factor without an invertible layer: AdapterHub ignores it
    values = {**BN_DEFAULTS, **PHM_DEFAULTS, **raw}
    return BottleneckConfig.from_dict(values, source=source)


def _legacy_invertible(raw: dict[str, Any], source: str) -> None:
    """adapter-transformers v1 nested the invertible adapter, ``"invertible_adapter": {"block_type": "nice",
    "reduction_factor": 2}``; AdapterHub maps it onto ``inv_adapter`` and its factor, and so do we."""
    legacy = raw.pop("invertible_adapter", None)
    if not legacy:
        return
    if not isinstance(legacy, dict) or "block_type" not in legacy:
        raise ConfigError(f"{source}: invertible_adapter must be an object with block_type and reduction_factor, "
                          f"got {legacy!r}")
    raw["inv_adapter"], raw["inv_adapter_reduction_factor"] = legacy["block_type"], legacy.get("reduction_factor")


def _drop_unused_invertible(config: Any, weights: dict[str, Any], data: dict[str, Any]) -> Any:
    """Task adapters of adapter-transformers v1 (``"type": "text_task"``) declared an invertible adapter they
    never had; AdapterHub drops it when the file holds no invertible weights (``_fix_legacy_config``), so do we.
    Any other adapter without the weights its config names fails to load, in one line."""
    if config.inv_adapter is None or data.get("type") != "text_task" or \
            any(k.startswith("invertible.") for k in weights):
        return config
    return config.replace(inv_adapter=None)


def config_to_adapterhub(config: Any, hidden_size: int, num_layers: int) -> dict[str, Any]:
    out = config.to_dict()
    out.pop("architecture")
    out.pop("kind")
    size = out.pop("bottleneck_size")
    if size is not None:
        # AdapterHub only knows reduction factors: write each width as a factor that reproduces it.
        def factor(width: int) -> float:
            for candidate in (hidden_size / width, math.nextafter(hidden_size / width, 0.0)):
                if int(hidden_size // candidate) == width:
                    return candidate
            raise ConfigError(f"bottleneck_size {width} cannot be written as an AdapterHub reduction_factor")

        if isinstance(size, dict):
            out["reduction_factor"] = {str(i): factor(config.width(i, hidden_size)) for i in config.layers(num_layers)}
        else:
            out["reduction_factor"] = factor(int(size))
    return out


_ADAPTER_PARAMS = {  # AdapterHub's module names -> ours, given ln_before
    "adapter_norm_before": "norm_before", "adapter_up": "up", "adapter_norm_after": "norm_after",
    "gate": "gate", "scaling": "scaling",
}


def _site_patterns(arch: Architecture, kind: str) -> list[tuple[str, re.Pattern[str]]]:
    """Per site, the pattern of its weight names: groups ``layer`` (an encoder-decoder's decoder layers as
    ``d<index in the decoder>``, numbered by ``number_decoder_layers``), ``name`` and ``param``."""
    block = "adapters" if kind == "adapter" else "adapter_fusion_layer"
    stacks = [(rf"{re.escape(arch.hub_layers)}\.(?P<enc>\d+)", arch.sites_for(False))]
    if arch.decoder_layers is not None:
        stacks.append((rf"{re.escape(arch.decoder_layers)}\.(?P<dec>\d+)", arch.sites_for(True)))
    return [(spec.location, re.compile(
        rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?{stack}\."
        rf"{re.escape(spec.adapterhub_path)}\.{block}\.(?P<name>[^.]+)\.(?P<param>.+)$"))
        for stack, sites in stacks for spec in sites]


def _layer(m: re.Match[str]) -> str:
    found = m.groupdict()
    return found["enc"] if found.get("enc") is not None else f"d{found['dec']}"


def _in_part(key: str) -> tuple[str, str]:
    """(``parts.<method>.`` or "", the rest of ``key``): a union's weights are its parts' under that prefix."""
    if key.startswith("parts.") and key.count(".") >= 2:
        head, method, rest = key.split(".", 2)
        return f"{head}.{method}.", rest
    return "", key


def number_decoder_layers(weights: dict[str, Any], encoder_layers: int | None, source: Path,
                          leave_out: tuple[int, ...] | dict[str, tuple[int, ...]] = ()
                          ) -> tuple[dict[str, Any], int | None]:
    """AdapterHub names a decoder layer by its index in the decoder and numbers it after the encoder's layers
    elsewhere (``leave_out``; a union's by part, {method: leave_out}): keys ``<location>.d<i>.<param>`` become
    ``<location>.<encoder_layers + i>.<param>``.
    A model passes its own encoder depth (and a file naming an encoder layer beyond it, made for another split of
    layers, is refused); without one (``adapt inspect``) it is the least the weights allow: above every encoder
    layer they name, with no decoder layer they name falling on a left-out number."""
    def layer_of(key: str) -> str:  # ``<location>.<layer>.<param>``
        bits = _in_part(key)[1].split(".")
        return bits[1] if len(bits) > 1 else ""

    decoder = {k for k in weights if re.fullmatch(r"d\d+", layer_of(k))}
    named = [int(layer_of(k)) for k in weights if layer_of(k).isdigit()]
    if encoder_layers is not None and max(named, default=-1) >= encoder_layers:
        raise ArtifactError(f"{source}: its weights name encoder layer {max(named)}, but this model's encoder has "
                            f"{encoder_layers} layers (0..{encoder_layers - 1}); it was made for another model")
    if not decoder:
        return weights, encoder_layers
    def left_out(key: str) -> tuple[int, ...]:  # the leave_out of the part whose weight ``key`` is
        if isinstance(leave_out, dict):
            return leave_out.get(_in_part(key)[0].removeprefix("parts.").rstrip("."), ())
        return leave_out

    if encoder_layers is None:
        used = {(int(layer_of(k)[1:]), left_out(k)) for k in decoder}
        encoder_layers = max(named, default=-1) + 1
        while any(encoder_layers + i in out for i, out in used):
            encoder_layers += 1
    out = {}
    for key, tensor in weights.items():
        if key in decoder:
            part, rest = _in_part(key)
            location, layer, param = rest.split(".", 2)
            key = f"{part}{location}.{encoder_layers + int(layer[1:])}.{param}"
        out[key] = tensor
    return out, encoder_layers


def _legacy(key: str) -> str:
    for old, new in LEGACY_KEYS.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key


def adapter_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, ln_before: bool,
                                    source: Path) -> tuple[str | None, dict[str, Any]]:
    out: dict[str, Any] = {}
    names: set[str] = set()
    patterns = _site_patterns(arch, "adapter")
    shared = re.compile(rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?shared_parameters\.([^.]+)\.([^.]+)$")
    invertible = re.compile(rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?{re.escape(arch.hub_invertible)}\."
                            r"([^.]+)\.(.+)$")
    for key, tensor in raw.items():
        key = _legacy(key)
        m = shared.match(key)
        if m:  # Compacter's PHM parameters, shared by every layer of the adapter
            names.add(m.group(1))
            out[f"shared.{m.group(2)}"] = tensor
            continue
        m = invertible.match(key)
        if m:  # MAD-X's invertible layer on the embeddings (F.0.weight ...: the same module names as ours)
            names.add(m.group(1))
            out[f"invertible.{m.group(2)}"] = tensor
            continue
        for location, pattern in patterns:
            m = pattern.match(key)
            if m:
                break
        else:
            raise ArtifactError(f"{source}: unexpected weight {key!r}")
        layer, name, param = _layer(m), m["name"], m["param"]
        names.add(name)
        module, _, leaf = param.partition(".")
        if module == "adapter_down":
            index, _, leaf = leaf.partition(".")
            ours = "norm_before" if (ln_before and index == "0") else "down"
        elif module in _ADAPTER_PARAMS:
            ours = _ADAPTER_PARAMS[module]
        else:
            raise ArtifactError(f"{source}: unexpected weight {key!r}")
        out[f"{location}.{layer}.{ours}" + (f".{leaf}" if leaf else "")] = tensor
    return one_adapter(names, out, source)


def adapter_weights_to_adapterhub(weights: dict[str, torch.Tensor], arch: Architecture, name: str,
                                  ln_before: bool, encoder_layers: int | None = None) -> dict[str, torch.Tensor]:
    reverse = {v: k for k, v in _ADAPTER_PARAMS.items()}
    out = {}
    for key, tensor in weights.items():
        if key.startswith("shared."):  # Compacter's shared PHM parameters
            out[f"{arch.adapterhub_prefix}.shared_parameters.{name}.{key.removeprefix('shared.')}"] = tensor
            continue
        if key.startswith("invertible."):  # the invertible layer: <prefix>.invertible_adapters.<name>.F.0.weight
            out[f"{arch.adapterhub_prefix}.{arch.hub_invertible}.{name}.{key.removeprefix('invertible.')}"] = tensor
            continue
        location, layer, param = key.split(".", 2)
        module, _, leaf = param.partition(".")
        layer_path = arch.layer_path(int(layer), encoder_layers or 0, hub=True)
        site = arch.site(location, arch.in_decoder(int(layer), encoder_layers))
        prefix = f"{arch.adapterhub_prefix}.{layer_path}.{site.adapterhub_path}.adapters.{name}."
        if module == "down":
            ah = [f"adapter_down.{1 if ln_before else 0}.{leaf}"]
        elif module == "norm_before":  # registered twice in AdapterHub's module tree
            ah = [f"adapter_norm_before.{leaf}", f"adapter_down.0.{leaf}"]
        else:
            ah = [reverse[module] + (f".{leaf}" if leaf else "")]
        for k in ah:
            out[prefix + k] = tensor
    return out


def read_adapter(path: Path, shapes_only: bool = False, encoder_layers: int | None = None) -> AdapterArtifact:
    """``encoder_layers``: an encoder-decoder's encoder depth, which numbers its decoder layers (AdapterHub's
    files do not record it); a model passes its own."""
    data = read_json(path / ADAPTER_CONFIG, "an adapter")
    if not isinstance(data.get("config"), dict):
        raise ArtifactError(f"corrupt {path / ADAPTER_CONFIG}: no 'config' object")
    _rename_activation(data, "non_linearity")
    base = _base(data, path / ADAPTER_CONFIG)
    raw = _weights(path, "adapter", shapes_only)
    gated = feed_forward_layout(raw, architecture_for(base.model_type))  # T5: which up-projection it changes
    arch = architecture_for(base.model_type).for_gated(gated)
    base = dataclasses.replace(base, gated_feed_forward=gated)
    config, key_name, weights = _read_method(data["config"], raw, arch, path, data)
    prefixed = any(c.architecture == "prefix_tuning" for c in getattr(config, "configs", None) or (config,))
    layer_count, prefix_encoder = prefix_layer_count(raw, arch) if prefixed else (None, None)
    if prefix_encoder is not None and encoder_layers not in (None, prefix_encoder):
        raise ArtifactError(f"{path}: its prefix was made for an encoder of {prefix_encoder} layers, but this "
                            f"model's has {encoder_layers}; it was made for another model")
    if arch.encoder_decoder:
        parts = getattr(config, "configs", None)  # a union: each part's weights by its own leave_out
        left_out = {p.architecture: tuple(getattr(p, "leave_out", ())) for p in parts} if parts \
            else tuple(getattr(config, "leave_out", ()))
        weights, found = number_decoder_layers(weights, encoder_layers or prefix_encoder, path, left_out)
        base = dataclasses.replace(base, encoder_layers=found)
    if base.num_layers is None and prefixed:
        base = dataclasses.replace(base, num_layers=layer_count)
    if data.get("type") == "text_lang" and getattr(config, "kind", "task") != "language":
        config = config.replace(kind="language")  # adapter-transformers' mark of a language adapter
    name = data.get("name") or key_name or path.name
    return AdapterArtifact(name=name, config=config, weights=weights, base=base, format="adapterhub",
                           path=path, meta=data)


def _read_method(raw_config: dict[str, Any], raw: dict[str, Any], arch: Architecture, path: Path,
                 data: dict[str, Any]) -> tuple[Any, str | None, dict[str, Any]]:
    """One method's config and weights (ours) from AdapterHub's, and the adapter name its keys carry."""
    source = str(path / ADAPTER_CONFIG)
    method = raw_config.get("architecture")
    if method == "union":
        return _read_union(raw_config, raw, arch, path, data)
    if method == "lora":
        config = lora_config_from_adapterhub(raw_config, source, data.get("version"))
        key_name, weights = lora_weights_from_adapterhub(raw, arch, path, tuple(config.matrices))
        return config, key_name, weights
    if method == "reft":
        key_name, weights = reft_weights_from_adapterhub(raw, arch, path)
        return reft_config_from_adapterhub(raw_config, source), key_name, weights
    if method == "prefix_tuning":
        key_name, weights = prefix_weights_from_adapterhub(raw, arch, path)
        return prefix_config_from_adapterhub(raw_config, source, weights), key_name, weights
    if method == "prompt_tuning":
        key_name, weights = prompt_weights_from_adapterhub(raw, arch, path)
        return prompt_config_from_adapterhub(raw_config, source), key_name, weights
    config = config_from_adapterhub(raw_config, source)
    key_name, weights = adapter_weights_from_adapterhub(raw, arch, config.ln_before, path)
    return _drop_unused_invertible(config, weights, data), key_name, weights


def _union_part(key: str) -> str:
    """Which part of a union an AdapterHub weight belongs to, by its module path."""
    if ".prefix_tuning." in key or key.startswith("prefix_tuning."):
        return "prefix_tuning"
    return "lora" if ".loras." in key else "bottleneck"


def _read_union(raw_config: dict[str, Any], raw: dict[str, Any], arch: Architecture, path: Path,
                data: dict[str, Any]) -> tuple[Any, str | None, dict[str, Any]]:
    from ..methods.union import UnionConfig

    parts = raw_config.get("configs")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise ArtifactError(f"corrupt {path / ADAPTER_CONFIG}: a union's configs must be a list of configs")
    configs, weights, names = [], {}, set()
    for part in parts:
        method = part.get("architecture") or "bottleneck"
        mine = {k: v for k, v in raw.items() if _union_part(k) == method}
        config, name, part_weights = _read_method({**part, "architecture": method}, mine, arch, path, data)
        configs.append(config.to_dict())
        weights.update({f"parts.{method}.{k}": v for k, v in part_weights.items()})
        names.add(name)
    left = [k for k in raw if _union_part(k) not in {p.get("architecture") or "bottleneck" for p in parts}]
    if left:
        raise ArtifactError(f"{path}: unexpected weight {left[0]!r} in a union adapter")
    names.discard(None)
    return UnionConfig.from_dict({"configs": configs}, str(path / ADAPTER_CONFIG)), \
        (names.pop() if len(names) == 1 else None), weights


def _header(base: BaseModelInfo, arch: Architecture, name: str) -> dict[str, Any]:
    return {"hidden_size": base.hidden_size, "model_class": arch.adapterhub_model_class,
            "model_name": base.name_or_path, "model_type": base.model_type, "name": name,
            "version": WRITTEN_VERSION}


def _save(weights: dict[str, torch.Tensor], directory: Path, kind: str, safetensors: bool,
          dtype: torch.dtype | None) -> None:
    _, bin_name, st_name = FILES[kind]
    if safetensors:
        save_safetensors(weights, directory / st_name, dtype)
    else:
        import torch

        torch.save({k: (v.detach().to(dtype) if dtype is not None else v.detach()).cpu().contiguous()
                    for k, v in weights.items()}, directory / bin_name)


def _write_method(config: Any, weights: dict[str, Any], arch: Architecture, name: str, hidden_size: int,
                  num_layers: int, encoder_layers: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One method's config and weights in AdapterHub's form."""
    method = config.architecture
    if method == "union":
        configs, out = [], {}
        for part in config.configs:
            mine = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"parts.{part.architecture}.")}
            part_config, part_weights = _write_method(part, mine, arch, name, hidden_size, num_layers, encoder_layers)
            configs.append(part_config)
            out.update(part_weights)
        return {"architecture": "union", "configs": configs}, out
    if method == "lora":
        return lora_config_to_adapterhub(config), lora_weights_to_adapterhub(weights, arch, name, encoder_layers)
    if method == "reft":
        return reft_config_to_adapterhub(config), reft_weights_to_adapterhub(weights, arch, name)
    if method == "prefix_tuning":
        return prefix_config_to_adapterhub(config), prefix_weights_to_adapterhub(weights, arch, name, num_layers,
                                                                                 encoder_layers)
    if method == "prompt_tuning":
        return prompt_config_to_adapterhub(config), prompt_weights_to_adapterhub(weights, arch, name)
    return config_to_adapterhub(config, hidden_size, num_layers), \
        adapter_weights_to_adapterhub(weights, arch, name, config.ln_before, encoder_layers)


def write_adapter(directory: Path, artifact: AdapterArtifact, num_layers: int, safetensors: bool = False,
                  dtype: torch.dtype | None = None) -> None:
    from ..fsutil import write_json

    arch = architecture_for(artifact.base.model_type).for_gated(artifact.base.gated_feed_forward)
    config, weights = _write_method(artifact.config, artifact.weights, arch, artifact.name,
                                    artifact.base.hidden_size, num_layers, artifact.base.encoder_layers)
    header = _header(artifact.base, arch, artifact.name)
    if getattr(artifact.config, "kind", "task") == "language":  # the config has no field for it; v1's key does
        header["type"] = "text_lang"
    write_json(directory / ADAPTER_CONFIG, {"config": config, **header})
    _save(weights, directory, "adapter", safetensors, dtype)


# ===================================================================== fusions


def read_fusion(path: Path, shapes_only: bool = False, encoder_layers: int | None = None) -> FusionArtifact:
    from ..fusion_config import FusionConfig

    data = read_json(path / FUSION_CONFIG, "a fusion")
    base = _base(data, path / FUSION_CONFIG)
    try:
        adapters = list(data["adapter_names"])
        config = FusionConfig.from_dict(data["config"], source=str(path / FUSION_CONFIG))
    except (KeyError, TypeError):
        raise ArtifactError(f"corrupt {path / FUSION_CONFIG}: adapter_names and config are required") from None
    name = data.get("name") or ",".join(adapters)
    arch = architecture_for(base.model_type)
    weights: dict[str, Any] = {}
    for key, tensor in _weights(path, "fusion", shapes_only).items():
        for location, pattern in _site_patterns(arch, "fusion"):
            m = pattern.match(key)
            if m:
                break
        else:
            raise ArtifactError(f"{path}: unexpected weight {key!r}")
        # AdapterHub selects fusion weights by substring, so a file may carry another fusion's keys.
        if m["name"] == name:
            weights[f"{location}.{_layer(m)}.{m['param']}"] = tensor
    if arch.encoder_decoder:
        weights, found = number_decoder_layers(weights, encoder_layers, path)
        base = dataclasses.replace(base, encoder_layers=found)
    return FusionArtifact(name=name, adapters=adapters, config=config, weights=weights, base=base,
                          format="adapterhub", path=path, meta=data)


def write_fusion(directory: Path, artifact: FusionArtifact, safetensors: bool = False,
                 dtype: torch.dtype | None = None) -> None:
    from ..fsutil import write_json

    arch = architecture_for(artifact.base.model_type)
    write_json(directory / FUSION_CONFIG, {"adapter_names": artifact.adapters, "config": artifact.config.to_dict(),
                                           **_header(artifact.base, arch, artifact.name)})
    weights = {}
    for key, tensor in artifact.weights.items():
        location, layer, param = key.split(".", 2)
        layer_path = arch.layer_path(int(layer), artifact.base.encoder_layers or 0, hub=True)
        site = arch.site(location, arch.in_decoder(int(layer), artifact.base.encoder_layers))
        weights[f"{arch.adapterhub_prefix}.{layer_path}.{site.adapterhub_path}"
                f".adapter_fusion_layer.{artifact.name}.{param}"] = tensor
    _save(weights, directory, "fusion", safetensors, dtype)


# ===================================================================== heads


def read_head(path: Path, shapes_only: bool = False) -> HeadArtifact:
    from ..head_config import HeadConfig

    data = read_json(path / HEAD_CONFIG, "a head")
    _rename_activation(data, "activation_function")
    base = _base(data, path / HEAD_CONFIG)
    if not isinstance(data.get("config"), dict):
        raise ArtifactError(f"corrupt {path / HEAD_CONFIG}: 'config' must be an object")
    raw = dict(data["config"])
    multilabel = raw.pop("multilabel", False)  # older files mark a multi-label head on a classification one
    head_type = raw.pop("head_type", None)
    if head_type == "image_classification":  # a vision model's classification head: the same module and losses
        head_type = "classification"
    if head_type == "classification" and multilabel:
        head_type = "multilabel_classification"
    elif head_type == "classification":
        if raw.get("num_labels") == 1:
            head_type = "regression"
    elif head_type == "masked_lm":
        if raw.pop("shift_labels", False):
            head_type = "causal_lm"  # AdapterHub's causal-LM head differs from its masked-LM head by this key alone
    elif head_type == "causal_lm":
        if not raw.pop("shift_labels", True):
            raise ArtifactError(f"{path}: a causal_lm head without shift_labels predicts each token from itself; "
                                "not supported")
    elif head_type == "seq2seq_lm":
        if raw.pop("shift_labels", False):
            raise ArtifactError(f"{path}: a seq2seq_lm head with shift_labels would score each position against "
                                "the label after its own; not supported")
    elif head_type not in ("multiple_choice", "multilabel_classification", "tagging", "question_answering"):
        raise ArtifactError(f"{path}: AdapterHub head type {head_type!r} is not supported (classification, "
                            "multilabel_classification, tagging, question_answering, regression, multiple_choice, "
                            "masked_lm, causal_lm, seq2seq_lm and image_classification are)")
    try:
        config = HeadConfig.from_dict({"head_type": head_type, **raw}, source=str(path / HEAD_CONFIG))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"corrupt {path / HEAD_CONFIG}: {exc}") from None
    name = data.get("name") or path.name
    groups: dict[str, dict[str, Any]] = {}
    pattern = re.compile(r"^heads\.([^.]+)\.(\d+\.(?:weight|bias))$")
    for key, tensor in _weights(path, "head", shapes_only).items():
        m = pattern.match(key)
        if not m:
            raise ArtifactError(f"{path}: unexpected head weight {key!r} (only flexible AdapterHub heads are supported)")
        groups.setdefault(m.group(1), {})[m.group(2)] = tensor
    # adapters 1.3.0 saves head "ml" with the weights of every head whose name starts with "ml" (ml1, ml_x): only
    # the head's own are read
    if name not in groups and len(groups) > 1:
        raise ArtifactError(f"{path}: its weights belong to heads {', '.join(sorted(groups))}, none named {name!r}")
    weights = groups.get(name) or next(iter(groups.values()), {})
    if config.head_type == "masked_lm":  # the decoder's weight is the model's input embeddings (tied)
        weights.pop(f"{config.decoder_index}.weight", None)
    # A causal-LM head's decoder weight stays: it is the head's own where the model does not tie its word
    # embeddings, and loading checks it against them where it does (AdapterModel.load_head).
    return HeadArtifact(name=name, config=config, weights=weights, base=base, format="adapterhub", path=path,
                        meta=data)


def write_head(directory: Path, artifact: HeadArtifact, safetensors: bool = False,
               dtype: torch.dtype | None = None) -> None:
    from ..fsutil import write_json

    arch = architecture_for(artifact.base.model_type)
    c = artifact.config
    config: dict[str, Any] = {"activation_function": c.activation_function, "dropout_prob": c.dropout_prob,
                              "label2id": c.label2id, "layers": c.layers, "use_pooler": c.use_pooler}
    if c.is_lm:  # BertStyleMaskedLMHead's, CausalLMHead's and Seq2SeqLMHead's config
        config = {"head_type": c.head_type, "vocab_size": c.vocab_size, "embedding_size": c.embedding_size,
                  "layers": c.layers, "activation_function": c.activation_function, "layer_norm": c.layer_norm,
                  "bias": c.bias, "shift_labels": c.head_type == "causal_lm", "label2id": None}
        if c.head_type == "seq2seq_lm":  # Seq2SeqLMHead's config has no embedding_size
            config.pop("embedding_size")
        if c.head_type == "causal_lm":  # BertStyleMaskedLMHead takes no dropout_prob
            config["dropout_prob"] = c.dropout_prob
    elif c.head_type == "multiple_choice":
        config.update(head_type="multiple_choice", num_choices=c.num_choices)
    elif c.head_type in ("tagging", "question_answering"):  # TaggingHead's, QuestionAnsweringHead's: no pooler
        config = {"head_type": c.head_type, "num_labels": c.num_labels, "layers": c.layers,
                  "activation_function": c.activation_function, "label2id": c.label2id,
                  "dropout_prob": c.dropout_prob}
    elif arch.vision:  # ImageClassificationHead: one head type, multi-label by a key, regression by one output
        config.update(head_type="image_classification", num_labels=c.outputs, bias=c.bias,
                      multilabel=c.head_type == "multilabel_classification")
    elif c.head_type == "multilabel_classification":
        config.update(head_type=c.head_type, num_labels=c.num_labels, bias=c.bias)
    else:
        config.update(head_type="classification", num_labels=c.outputs, bias=c.bias)
    write_json(directory / HEAD_CONFIG, {"config": config, **_header(artifact.base, arch, artifact.name)})
    _save({f"heads.{artifact.name}.{k}": v for k, v in artifact.weights.items()}, directory, "head",
          safetensors, dtype)
