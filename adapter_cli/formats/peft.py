"""PEFT's format (Hugging Face ``peft``): LoRA, DoRA and (IA)³ adapters, read and written.

Files: ``adapter_config.json`` (it has ``peft_type``) + ``adapter_model.safetensors`` (``adapter_model.bin``
from older peft). Weight names are the base model's module paths under ``base_model.model.``, with the adapter
name taken out::

    base_model.model.encoder.layer.3.attention.self.query.lora_A.weight   ours: q.3.lora_A
    base_model.model.encoder.layer.3.attention.self.query.lora_B.weight   ours: q.3.lora_B
    base_model.model.encoder.layer.3.attention.self.query.lora_magnitude_vector (out,)  ours: q.3.m.weight (out, 1)
    base_model.model.encoder.layer.3.attention.self.key.ia3_l (out, 1), or (1, in) on feedforward_modules
                                                                          ours: k.3.lora_B (out, 1) / (in, 1)

PEFT computes DoRA and feed-forward (IA)³ differently from AdapterHub; ``LoRAConfig`` carries both
(``dora_style: peft``, ``scaled_inputs``), so PEFT adapters load exactly. The weight names, not
``target_modules``, say which layers an adapter changes. PEFT records neither the model type nor the hidden
size: the hidden size is read off the weights, the model type off ``auto_mapping`` (written for adapters made
on a bare ``AutoModel``) or the key layout, and is None (unknown) when neither tells it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..architectures import ARCHITECTURES, Architecture, architecture_for
from ..errors import ArtifactError, UsageError
from .artifacts import (ADAPTER_CONFIG, AdapterArtifact, BaseModelInfo, TensorInfo, load_safetensors, load_torch_bin,
                        read_json, save_safetensors)

if TYPE_CHECKING:
    import torch

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # written, and read first; older peft's pickle
PREFIX = "base_model.model."
# PEFT's parameter names -> ours, per peft_type (DoRA's magnitude only with use_dora)
PARAMS = {"LORA": {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B", "lora_magnitude_vector": "m.weight"},
          "IA3": {"ia3_l": "lora_B"}}
SUPPORTED = "adapt reads PEFT's LORA (also with use_dora) and IA3 adapters"
# Fields that are harmless whatever their value: bookkeeping, or initialisation that leaves the base model alone.
KNOWN = {"peft_type", "peft_version", "task_type", "auto_mapping", "base_model_name_or_path", "revision",
         "inference_mode", "target_modules", "exclude_modules", "layers_pattern", "layers_to_transform", "r",
         "lora_alpha", "lora_dropout", "use_dora", "init_lora_weights", "feedforward_modules", "init_ia3_weights",
         "eva_config", "corda_config", "megatron_core", "qalora_group_size", "ensure_weight_tying", "runtime_config"}
# Fields that change what the adapter computes (or need weights adapt has no place for), with why, when set.
REFUSED = {
    "bias": "trained biases (adapt's LoRA leaves the base biases alone); only bias 'none' is supported",
    "use_rslora": "rank-stabilised scaling (alpha / sqrt(r)); only alpha / r is supported",
    "rank_pattern": "per-module ranks; one r for every module is supported",
    "alpha_pattern": "per-module alphas; one lora_alpha for every module is supported",
    "modules_to_save": "whole modules saved with the adapter (e.g. a classifier), which adapt cannot load",
    "fan_in_fan_out": "transposed (Conv1D) weights; only nn.Linear layers are supported",
    "layer_replication": "replicated layers",
    "lora_bias": "a bias on lora_B",
    "loftq_config": "LoftQ, which changes the base model's weights",
    "megatron_config": "Megatron parallel layers",
    "trainable_token_indices": "trained token embeddings",
    "target_parameters": "LoRA on raw parameters",
}
# init_lora_weights values that leave the base model's weights alone (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA change them)
PLAIN_INITS = (True, False, "gaussian", "eva")
# BERT-like layers also hold attention.output.dense, whose name ends in output.dense; PEFT matches
# target_modules by suffix, so the feed-forward down-projection is written layer by layer.
SUFFIX_CLASHES = ("output.dense",)


def is_peft(path: Path) -> bool:
    """An adapter directory whose adapter_config.json is PEFT's (it has ``peft_type``)."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except Exception:  # unreadable here; the reader that claims it reports why
        return False
    return isinstance(data, dict) and "peft_type" in data


# ===================================================================== reading


def read_adapter(path: Path, shapes_only: bool = False) -> AdapterArtifact:
    path = Path(path)
    source = path / ADAPTER_CONFIG
    data = read_json(source, "an adapter")
    peft_type = _check_fields(data, source)
    raw = _load_weights(path, shapes_only)
    allowed = {k: v for k, v in PARAMS[peft_type].items() if data.get("use_dora") or k != "lora_magnitude_vector"}
    model_types, weights = _map_weights(raw, allowed, path)
    scaled = _scaled_inputs(weights, path) if peft_type == "IA3" else ()
    weights = _canonical_shapes(weights, peft_type == "IA3", path)
    layers = _layers(weights, data, source)
    config = _config(data, peft_type, sorted({k.split(".")[0] for k in weights}), layers, scaled, source)
    base = _base(data, weights, scaled, _model_type(data, model_types), source)
    meta = {**data, "versions": {"peft": data["peft_version"]}} if data.get("peft_version") else data
    return AdapterArtifact(name=path.name, config=config, weights=weights, base=base, format="peft", path=path,
                           meta=meta)


def _check_fields(data: dict[str, Any], source: Path) -> str:
    """The peft_type, once every field that would change what the adapter computes is known to be off."""
    peft_type = data.get("peft_type")
    if peft_type not in PARAMS:
        raise ArtifactError(f"{source}: PEFT method {peft_type!r} is not supported; {SUPPORTED}")
    for key, value in data.items():
        off = value is None or value is False or value in ({}, [], "") or (key == "bias" and value == "none")
        if key in REFUSED and not off:
            raise ArtifactError(f"{source}: {key} {value!r} is not supported: {REFUSED[key]}")
        if key not in KNOWN and key not in REFUSED and not off:  # a variant adapt does not know (kasa_config, ...)
            raise ArtifactError(f"{source}: PEFT field {key!r} is set ({str(value)[:60]}), which adapt does not "
                                f"implement; {SUPPORTED} without it")
    if peft_type == "LORA" and data.get("init_lora_weights", True) not in PLAIN_INITS:
        raise ArtifactError(f"{source}: init_lora_weights {data['init_lora_weights']!r} changes the base model's "
                            "weights, which PEFT does not save with the adapter; supported: true, false, gaussian, eva")
    return peft_type


def _load_weights(path: Path, shapes_only: bool) -> dict[str, Any]:
    st_name, bin_name = WEIGHTS
    if (path / st_name).is_file():
        raw = load_safetensors(path / st_name, shapes_only)
    elif (path / bin_name).is_file():
        raw = load_torch_bin(path / bin_name, shapes_only)
    else:
        raise ArtifactError(f"{path} has no weights: neither {st_name} nor {bin_name} is there")
    if not raw:
        raise ArtifactError(f"{path}: the PEFT adapter holds no weights")
    return raw


def _locate(module: str) -> list[tuple[str, Architecture, int, str]]:
    """Every (model type, architecture, layer, matrix) whose layout names ``module`` (a path inside the model,
    optionally under transformers' base_model_prefix, as task models have it)."""
    found = []
    for model_type, arch, layers, paths in _layouts():
        m = re.fullmatch(rf"(?:([^.]+)\.)?{re.escape(layers)}\.(\d+)\.(.+)", module)
        if m and m.group(1) in (None, arch.adapterhub_prefix) and m.group(3) in paths:
            matrix = paths[m.group(3)]
            if not arch.peft:
                raise ArtifactError(f"the PEFT adapter changes {module}, {_no_peft(arch)}, which adapt does not "
                                    "read from PEFT's files; use AdapterHub's or adapt's format")
            found.append((model_type, arch, int(m.group(2)), matrix))
    return found


def _layouts() -> list[tuple[str, Architecture, str, dict[str, str]]]:
    """(model type, architecture, a layer list's path, its linear layers' paths -> matrix): an encoder-decoder's
    decoder layers too, so that a PEFT file made for one is named as such (refused: ``_no_peft``)."""
    out = []
    for model_type, arch in ARCHITECTURES.items():
        out.append((model_type, arch, arch.layers, {path: matrix for matrix, path in arch.linears}))
        if arch.decoder_layers is not None:
            out.append((model_type, arch, arch.decoder_layers,
                        {path: matrix for matrix, path in arch.linears_for(True)}))
    return out


def _map_weights(raw: dict[str, Any], allowed: dict[str, str], path: Path) -> tuple[set[str], dict[str, Any]]:
    """The model types whose layout fits every key, and the weights under our keys (PEFT's shapes)."""
    pattern = re.compile(rf"^{re.escape(PREFIX)}(.+)\.({'|'.join(map(re.escape, allowed))})$")
    out: dict[str, Any] = {}
    model_types = set(ARCHITECTURES)
    for key in sorted(raw):
        m = pattern.match(key)
        if not m:
            raise ArtifactError(f"{path}: unexpected weight {key!r}; {SUPPORTED} (weights "
                                f"{', '.join(allowed)} under {PREFIX})")
        found = _locate(m.group(1))
        if not found:
            raise ArtifactError(f"{path}: the PEFT adapter changes {m.group(1)}, which adapt cannot express; adapt "
                                f"changes only {', '.join(_paths(m.group(1)))} in each layer")
        model_types &= {t for t, *_ in found}
        _, _, layer, matrix = found[0]  # every layout that fits names the same matrix
        out[f"{matrix}.{layer}.{allowed[m.group(2)]}"] = raw[key]
    if not model_types:
        raise ArtifactError(f"{path}: the PEFT adapter's weights mix the layouts of different model types")
    return model_types, out


def _paths(module: str) -> list[str]:
    """The linear layers adapt can change, in the layout whose layer list ``module`` is in (else BERT's)."""
    arch = next((a for a in ARCHITECTURES.values() if f"{a.layers}." in module), ARCHITECTURES["bert"])
    return [path for _, path in arch.linears]


def _scaled_inputs(weights: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The matrices whose (IA)³ vector scales the input: PEFT stores those as (1, in), the others (out, 1)."""
    by_matrix: dict[str, set[bool]] = {}
    for key, tensor in weights.items():
        by_matrix.setdefault(key.split(".")[0], set()).add(len(tensor.shape) == 2 and tensor.shape[0] == 1
                                                            and tensor.shape[1] > 1)
    mixed = [m for m, kinds in by_matrix.items() if len(kinds) > 1]
    if mixed:
        raise ArtifactError(f"{path}: (IA)³ on {mixed[0]} scales the input in some layers and the output in others; adapt "
                            "needs one or the other in every layer")
    return tuple(m for m, kinds in by_matrix.items() if True in kinds)


def _canonical_shapes(weights: dict[str, Any], ia3: bool, path: Path) -> dict[str, Any]:
    """(IA)³ vectors as (n, 1) whichever way PEFT stored them; DoRA's magnitude (out,) as (out, 1)."""
    out = {}
    for key, tensor in weights.items():
        shape = tuple(tensor.shape)
        vector = ia3 or key.endswith(".m.weight")
        if vector and not (len(shape) in (1, 2) and math.prod(shape) == max(shape)):
            raise ArtifactError(f"{path}: {key} has shape {shape}, expected a vector")
        out[key] = _reshape(tensor, (max(shape), 1)) if vector else tensor
    return out


def _reshape(tensor: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(tensor, TensorInfo):
        return TensorInfo(shape=shape, dtype=tensor.dtype)
    return tensor.reshape(shape)


def _layers(weights: dict[str, Any], data: dict[str, Any], source: Path) -> dict[str, set[int]]:
    """The layers each matrix is changed in; refused unless every matrix is changed in the same layers
    (and in those layers_to_transform names, when set)."""
    layers: dict[str, set[int]] = {}
    for key in weights:
        matrix, layer, _ = key.split(".", 2)
        layers.setdefault(matrix, set()).add(int(layer))
    first, *_ = layers.values()
    for matrix, found in layers.items():
        if found != first:
            raise ArtifactError(f"{source}: the PEFT adapter changes {matrix} in layers {sorted(found)} but other "
                                f"matrices in layers {sorted(first)}; adapt changes every matrix in the same layers")
    wanted = data.get("layers_to_transform")
    if wanted not in (None, []) and set([wanted] if isinstance(wanted, int) else wanted) != first:
        raise ArtifactError(f"{source}: layers_to_transform {wanted!r} does not match the layers its weights "
                            f"change ({sorted(first)})")
    return layers


def _config(data: dict[str, Any], peft_type: str, matrices: list[str], layers: dict[str, set[int]],
            scaled: tuple[str, ...], source: Path) -> Any:
    from ..methods.lora import ATTENTION_MATRICES, LoRAConfig

    changed = next(iter(layers.values()))
    attn = [m for m in ATTENTION_MATRICES if m in matrices]
    # Layers below the highest changed one that no weight names are left out; PEFT does not record the
    # layer count, so a model with more layers than the highest changed one refuses the weights on load.
    values: dict[str, Any] = {"selfattn_lora": bool(attn), "attn_matrices": attn or list(ATTENTION_MATRICES),
                              "intermediate_lora": "intermediate" in matrices, "output_lora": "output" in matrices,
                              "leave_out": [i for i in range(max(changed)) if i not in changed]}
    if peft_type == "IA3":  # PEFT's (IA)³: y = (W x + b) ⊙ l, or W (x ⊙ l) + b on feedforward_modules
        values.update(composition_mode="scale", r=1, alpha=1.0, init_weights="ia3", scaled_inputs=list(scaled))
    else:
        use_dora = bool(data.get("use_dora"))
        values.update(r=data.get("r", 8), alpha=data.get("lora_alpha", 8), dropout=data.get("lora_dropout") or 0.0,
                      use_dora=use_dora, dora_style="peft" if use_dora else "adapters")
    return LoRAConfig.from_dict(values, source=str(source))


def _hidden_size(weights: dict[str, Any], scaled: tuple[str, ...], model_type: str | None = None) -> int | None:
    """The hidden size read off the weights: the input width of q, k, v and the up-projection, the output
    width of q, k, v and the down-projection ((IA)³: whichever side its vector scales). A decoder's keys and
    values may be narrower (grouped-query attention) and AdapterHub's names for its feed-forward layers are
    the other way round, so there only q's widths, the input of "output" (up_proj) and the output of
    "intermediate" (down_proj) count."""
    from ..architectures import ARCHITECTURES

    arch = ARCHITECTURES.get(model_type or "")
    if arch is not None and arch.causal:
        return _decoder_hidden_size(weights, scaled)
    for key, tensor in weights.items():
        matrix, _, param = key.split(".", 2)
        if param == "lora_A" and matrix != "output":
            return int(tensor.shape[1])
        reads_input = matrix in scaled  # an (IA)³ vector on the input: (in, 1)
        if param in ("lora_B", "m.weight") and (matrix in ("q", "k", "v") or (matrix == "output") != reads_input):
            return int(tensor.shape[0])
    return None


def _decoder_hidden_size(weights: dict[str, Any], scaled: tuple[str, ...]) -> int | None:
    for key, tensor in weights.items():
        matrix, _, param = key.split(".", 2)
        if param == "lora_A" and matrix in ("q", "k", "v", "output"):
            return int(tensor.shape[1])
        reads_input = matrix in scaled
        if param in ("lora_B", "m.weight") and (matrix == "q" or (matrix == "intermediate" and not reads_input)
                                                 or (matrix == "output" and reads_input)):
            return int(tensor.shape[0])
    return None


def _model_type(data: dict[str, Any], layouts: set[str]) -> str | None:
    """PEFT's auto_mapping names the transformers module the base model came from; else the one model type
    whose layout fits the keys (DistilBERT's; a task model's ``bert.`` prefix), else unknown."""
    library = str((data.get("auto_mapping") or {}).get("parent_library") or "")
    m = re.match(r"^transformers\.models\.(\w+)\.modeling_", library)
    if m:
        return m.group(1).replace("_", "-")
    return next(iter(layouts)) if len(layouts) == 1 else None


def _base(data: dict[str, Any], weights: dict[str, Any], scaled: tuple[str, ...], model_type: str | None,
          source: Path) -> BaseModelInfo:
    hidden = _hidden_size(weights, scaled, model_type)
    if hidden is None:
        raise ArtifactError(f"{source}: cannot tell the hidden size from the weights (PEFT does not record it, "
                            "and no weight of this adapter is as wide as the hidden states)")
    name = data.get("base_model_name_or_path")
    try:
        return BaseModelInfo(model_type=model_type, hidden_size=hidden,
                             name_or_path=str(name) if name else None,
                             revision=str(data["revision"]) if data.get("revision") else None)
    except ValueError as exc:
        raise ArtifactError(f"corrupt {source}: {exc}") from None


# ===================================================================== writing


def write_adapter(directory: Path, artifact: AdapterArtifact, dtype: torch.dtype | None = None) -> None:
    """``adapter_config.json`` and ``adapter_model.safetensors`` as peft 0.21 writes them for a bare AutoModel,
    loadable with ``PeftModel.from_pretrained``. Refuses (one line) what PEFT cannot compute."""
    from ..fsutil import write_json

    config, base = artifact.config, artifact.base
    _check_writable(config, artifact.name)
    arch = architecture_for(base.model_type)
    if not arch.peft:
        raise UsageError(f"cannot save adapter {artifact.name!r} in PEFT's format: it changes {_no_peft(arch)}, "
                         "which adapt does not write in PEFT's layout; save it in the adapt or adapterhub format")
    write_json(Path(directory) / ADAPTER_CONFIG, _peft_config(config, base, arch))
    save_safetensors(_peft_weights(artifact.weights, config, arch), Path(directory) / WEIGHTS[0], dtype)


def _no_peft(arch: Architecture) -> str:
    """What of ``arch``'s layers PEFT's files are not read or written for."""
    if arch.encoder_decoder:  # PEFT names the decoder's layers, and their cross-attention, apart
        return f"a layer of {arch.name}, an encoder-decoder"
    # Conv1D layers with weights of PEFT's own layout, and q, k and v in one module (GPT-2)
    return f"one of {arch.name}'s Conv1D layers (q, k and v are one of them)"


def _check_writable(config: Any, name: str) -> None:
    if config.architecture != "lora":
        why = f"{config.architecture} adapters have no PEFT equivalent"
    elif config.use_gating:
        why = "gated LoRA (use_gating) has no PEFT equivalent"
    elif config.is_vera:
        why = "AdapterHub's VeRA (trained r×r and out×out matrices) is not PEFT's VeRA"
    elif config.use_dora and config.dora_style != "peft":
        why = ("AdapterHub-style DoRA normalises W + BA and rescales the bias, PEFT normalises W + (alpha/r)·BA "
               "and does not, so PEFT would compute different outputs (a DoRA made with dora_style=peft computes "
               "as PEFT does and can be saved)")
    elif config.composition_mode == "scale" and config.alpha != 1.0:
        why = f"(IA)³ with alpha {config.alpha} (PEFT's (IA)³ has no scaling; alpha must be 1)"
    elif config.dtype is not None:
        why = f"PEFT has no per-adapter compute dtype (dtype {config.dtype!r})"
    else:
        return
    raise UsageError(f"cannot save adapter {name!r} in PEFT's format: {why}; save it in the adapt format")


def _targets(arch: Architecture, layers: list[int], matrices: Any, per_layer: bool) -> list[str]:
    """target_modules (or feedforward_modules) entries: a module path's suffix, or each layer's full path
    where the suffix would also match another layer (SUFFIX_CLASHES) or some layers are left out and the
    config has no layers_to_transform ((IA)³)."""
    out = []
    for matrix in matrices:
        path = arch.linear(matrix)
        if per_layer or path in SUFFIX_CLASHES:
            out += [f"{arch.layers}.{i}.{path}" for i in layers]
        else:
            out.append(path)
    return out


def _peft_config(config: Any, base: BaseModelInfo, arch: Architecture) -> dict[str, Any]:
    if base.num_layers is None:
        raise UsageError("cannot save in PEFT's format without the model's layer count")
    layers = config.layers(base.num_layers)
    module = base.model_type.replace("-", "_")
    out: dict[str, Any] = {
        "peft_type": "IA3" if config.composition_mode == "scale" else "LORA", "task_type": None,
        # what PEFT writes for a bare AutoModel: AutoPeftModel (and adapt) read the base model class from it
        "auto_mapping": {"base_model_class": arch.adapterhub_model_class.replace("AdapterModel", "Model"),
                         "parent_library": f"transformers.models.{module}.modeling_{module}"},
        "base_model_name_or_path": base.name_or_path, "revision": base.revision, "inference_mode": True,
        "fan_in_fan_out": False, "modules_to_save": None, "exclude_modules": None}
    if config.composition_mode == "scale":  # IA3Config has no layers_to_transform: name each layer's module
        left_out = bool(config.leave_out)
        out.update(target_modules=_targets(arch, layers, config.matrices, left_out),
                   feedforward_modules=_targets(arch, layers, config.scaled_inputs, left_out),
                   init_ia3_weights=True)
        return out
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    out.update(r=config.r, lora_alpha=alpha, lora_dropout=config.dropout, use_dora=config.use_dora, bias="none",
               use_rslora=False, init_lora_weights=True, rank_pattern={}, alpha_pattern={}, layers_pattern=None,
               target_modules=_targets(arch, layers, config.matrices, False),
               layers_to_transform=layers if config.leave_out else None)
    return out


def _peft_weights(weights: dict[str, Any], config: Any, arch: Architecture) -> dict[str, Any]:
    out = {}
    for key, tensor in weights.items():
        matrix, layer, param = key.split(".", 2)
        module = f"{PREFIX}{arch.layers}.{layer}.{arch.linear(matrix)}"
        if param == "lora_A":
            out[f"{module}.lora_A.weight"] = tensor
        elif param == "lora_B" and config.composition_mode == "scale":  # (1, in) on feedforward_modules
            out[f"{module}.ia3_l"] = tensor.reshape((1, -1) if matrix in config.scaled_inputs else (-1, 1))
        elif param == "lora_B":
            out[f"{module}.lora_B.weight"] = tensor
        elif param == "m.weight":
            out[f"{module}.lora_magnitude_vector"] = tensor.reshape(-1)
        else:
            raise UsageError(f"cannot save {key!r} in PEFT's format")
    return out
