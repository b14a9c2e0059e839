"""On-disk formats of adapters, fusions and heads: ours (``adapt``) and AdapterHub's.

Both are read into the same in-memory artifacts whose weights use our canonical, model-independent
key names (``<location>.<layer>.<param>``), so the model never sees a file format.

Reading with ``shapes_only=True`` (what ``adapt inspect`` does) gives ``TensorInfo`` records instead of
tensors: for safetensors files they come from the file's JSON header, without torch; only AdapterHub's
legacy ``.bin`` pickles need torch to be read at all.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from . import adapterhub, native, peft
from .artifacts import (ADAPTER_CONFIG, FUSION_CONFIGS, HEAD_CONFIG, AdapterArtifact, BaseModelInfo,
                        FusionArtifact, HeadArtifact, TensorInfo, check_shapes, load_safetensors, load_torch_bin,
                        read_json, safetensors_header, save_safetensors)

# The package is the formats' facade: the shared artifacts and the readers that pick the format.
__all__ = ["ADAPTER_CONFIG", "FUSION_CONFIGS", "HEAD_CONFIG", "AdapterArtifact", "BaseModelInfo", "FusionArtifact",
           "HeadArtifact", "TensorInfo", "load_safetensors", "load_torch_bin", "read_json", "safetensors_header",
           "save_safetensors", "adapterhub", "native", "peft", "detect", "read_adapter", "read_fusion", "read_head",
           "has_head", "check_weight_shapes"]


def detect(path: Path, kind: str) -> str:
    """'adapt', 'peft' or 'adapterhub' for an adapter/fusion/head directory."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"no {kind} directory at {path}")
    if native.is_native(path, kind):
        return "adapt"
    if kind == "adapter" and peft.is_peft(path):  # before AdapterHub's: both write adapter_config.json
        return "peft"
    if adapterhub.is_adapterhub(path, kind):
        return "adapterhub"
    names = {"adapter": ADAPTER_CONFIG, "fusion": " or ".join(FUSION_CONFIGS), "head": HEAD_CONFIG}[kind]
    article = "an" if kind[0] in "aeiou" else "a"
    raise ArtifactError(f"{path} is not {article} {kind} directory: {names} is missing")


def read_adapter(path: Path | str, shapes_only: bool = False, encoder_layers: int | None = None) -> AdapterArtifact:
    """An adapter directory in any format; ``shapes_only``: ``TensorInfo`` weights, no torch for safetensors.
    ``encoder_layers``: the depth of the encoder-decoder it is for, which AdapterHub's files do not record."""
    path = Path(path)
    found = detect(path, "adapter")
    if found == "adapterhub":
        return adapterhub.read_adapter(path, shapes_only=shapes_only, encoder_layers=encoder_layers)
    return {"adapt": native.read_adapter, "peft": peft.read_adapter}[found](path, shapes_only=shapes_only)


def read_fusion(path: Path | str, shapes_only: bool = False, encoder_layers: int | None = None) -> FusionArtifact:
    path = Path(path)
    if detect(path, "fusion") == "adapt":
        return native.read_fusion(path, shapes_only=shapes_only)
    return adapterhub.read_fusion(path, shapes_only=shapes_only, encoder_layers=encoder_layers)


def read_head(path: Path | str, shapes_only: bool = False) -> HeadArtifact:
    path = Path(path)
    reader = native.read_head if detect(path, "head") == "adapt" else adapterhub.read_head
    return reader(path, shapes_only=shapes_only)


def has_head(path: Path) -> bool:
    return (Path(path) / HEAD_CONFIG).is_file()


def check_weight_shapes(artifact: AdapterArtifact | FusionArtifact | HeadArtifact) -> None:
    """An artifact (read with ``shapes_only``) checked as loading checks it against the built modules: every
    weight its config implies, in the shape it implies, and no other; without torch (``adapt inspect``)."""
    from ..architectures import MAX_LAYERS
    from ..methods.bottleneck import LOCATIONS

    base, weights = artifact.base, artifact.weights

    def layers(leave_out: tuple[int, ...] = ()) -> int:
        """The recorded layer count, else (AdapterHub's configs record none) as many as the weights name."""
        if base.num_layers is not None:
            return base.num_layers
        named = [int(k.split(".")[1]) for k in weights if k.count(".") > 1 and k.split(".")[1].isdigit()]
        return min(max([*named, *leave_out], default=-1) + 1, MAX_LAYERS)

    if isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "union":
        import dataclasses

        for part in artifact.config.configs:  # each part as an adapter of its own; nothing else in the file
            head = f"parts.{part.architecture}."
            check_weight_shapes(dataclasses.replace(artifact, config=part, weights={
                k.removeprefix(head): v for k, v in weights.items() if k.startswith(head)}))
        methods = {part.architecture for part in artifact.config.configs}
        stray = [k for k in weights if k.split(".")[0] != "parts" or k.split(".")[1] not in methods]
        if stray:
            raise ArtifactError(f"{artifact.path or 'the artifact'}: unexpected weight {stray[0]!r} in a union adapter")
        return
    if isinstance(artifact, HeadArtifact):
        expected = artifact.config.weight_shapes(base.hidden_size,
                                                 f"{artifact.config.decoder_index}.weight" in weights)
    elif isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "lora":
        expected = artifact.config.weight_shapes(base.hidden_size, layers(artifact.config.leave_out),
                                                 _intermediate_size(weights, artifact.config.scaled_inputs),
                                                 _decoder_linear_shapes(base.model_type, weights), base.encoder_layers)
    elif isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "reft":
        expected = artifact.config.weight_shapes(base.hidden_size, layers(artifact.config.named_layers))
    elif isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "prefix_tuning":
        expected = _prefix_shapes(artifact.config, weights, base)
    elif isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "prompt_tuning":
        width = weights.get("prompt_embedding.weight")  # no format records ELECTRA's narrower embeddings
        expected = artifact.config.weight_shapes(base.hidden_size, 0, tuple(width.shape)[1] if width is not None else None)
    elif isinstance(artifact, AdapterArtifact) and artifact.config.architecture == "bottleneck":
        from ..methods.invertible import embedding_size_of  # no format records ELECTRA's narrower embeddings

        expected = artifact.config.weight_shapes(base.hidden_size, layers(artifact.config.leave_out),
                                                 embedding_size_of(weights), base.encoder_layers)
    elif isinstance(artifact, AdapterArtifact):
        expected = artifact.config.weight_shapes(base.hidden_size, layers(artifact.config.leave_out))
    else:
        locations = [loc for loc in LOCATIONS if any(k.startswith(f"{loc}.") for k in weights)]
        expected = artifact.config.weight_shapes(base.hidden_size, locations, layers(), base.encoder_layers)
    check_shapes(weights, expected, artifact.path or "the artifact")


_PREFIX_OUTPUTS = ("prefix.control_trans.2.weight", "prefix.control_trans.2.bias", "prefix.control_trans")


def _prefix_shapes(config: Any, weights: dict[str, Any], base: Any) -> dict[str, tuple[int, ...]]:
    """What a prefix's tensors must look like. A decoder's keys may be narrower than its hidden size (grouped-
    query attention) and no format records their width: it is read off the generator's output (prefixed layers
    x 2 x key width per prefix token) where the layer count is recorded, and that output's width is taken as it
    is where it is not (AdapterHub's files); loading checks it against the model's own keys."""
    from ..architectures import ARCHITECTURES

    layers = _prefix_layers(config, weights, base)
    arch = ARCHITECTURES.get(base.model_type or "")
    if arch is not None and arch.encoder_decoder:  # one generator per location, counted from both stacks
        return config.weight_shapes(base.hidden_size, layers, _encoder_decoder_kv_size(config, weights, base, layers),
                                    base.encoder_layers)
    if arch is None or not arch.kv_heads_attr:
        return config.weight_shapes(base.hidden_size, layers)
    if base.num_layers is None:  # the count read off a width that need not be the hidden size's: at least one
        gated = [int(k.split(".")[1]) for k in weights if k.startswith("gates.") and k.split(".")[1].isdigit()]
        layers = max(layers, max(gated, default=-1) + 1, max(config.leave_out, default=-1) + 2)
    out = weights.get("prefix.control_trans.2.bias", weights.get("prefix.control_trans"))
    per_token = math.prod(tuple(out.shape)) // (1 if "prefix.control_trans.2.bias" in weights else
                                                config.prefix_length) if out is not None else 0
    prefixed = 2 * len(config.layers(layers))
    kv_size = per_token // prefixed if prefixed and per_token % prefixed == 0 else None
    expected = config.weight_shapes(base.hidden_size, layers, kv_size)
    if base.num_layers is None:
        expected.update({k: tuple(weights[k].shape) for k in _PREFIX_OUTPUTS if k in weights and k in expected})
    return expected


def _encoder_decoder_kv_size(config: Any, weights: dict[str, Any], base: Any, layers: int) -> int | None:
    """The width of an encoder-decoder's keys, read off its first generator's output (prefixed layers x 2 x key
    width per prefix token): T5's attention (heads x d_kv) may be wider than d_model, and no format records it.
    None (the hidden size) where the output is missing or does not divide; the check then names the weight."""
    location, prefixed = next(iter(config.locations(layers, base.encoder_layers).items()))
    head = config.generator_key(location)
    out = weights.get(f"{head}control_trans.2.bias", weights.get(f"{head}control_trans"))
    per_key = 2 * len(prefixed) * (1 if f"{head}control_trans.2.bias" in weights else config.prefix_length)
    size = math.prod(tuple(out.shape)) if out is not None else 0
    return size // per_key if size and size % per_key == 0 else None


def _prefix_layers(config: Any, weights: dict[str, Any], base: Any) -> int:
    """The layers a prefix was made for: recorded in our files; in AdapterHub's, read off the width of the
    generator's output (prefix length x prefixed layers x 2 x hidden) plus the layers it leaves out."""
    if base.num_layers is not None:
        return int(base.num_layers)
    out = weights.get("prefix.control_trans.2.bias", weights.get("prefix.control_trans"))
    size = math.prod(tuple(out.shape)) if out is not None else 0
    per_layer = 2 * base.hidden_size * (1 if "prefix.control_trans.2.bias" in weights else config.prefix_length)
    return size // per_layer + len(config.leave_out)


def _decoder_linear_shapes(model_type: str, weights: dict[str, Any]) -> dict[str, tuple[int, int]] | None:
    """A decoder's or an encoder-decoder's linear layers are not BERT's (grouped-query keys and values are
    narrower; AdapterHub's Llama names down_proj "intermediate"; T5's attention may be wider than d_model), and
    no format records their widths: each matrix's (in, out) is read off its first layer's weights, so the check
    still finds a missing, extra or inconsistent weight."""
    from ..architectures import ARCHITECTURES

    arch = ARCHITECTURES.get(model_type)
    if arch is None or not (arch.causal or arch.encoder_decoder):
        return None
    found: dict[str, list[int | None]] = {}
    for key, tensor in weights.items():
        parts = key.split(".", 2)
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        shape, (matrix, _, param) = tuple(tensor.shape), parts
        seen = found.setdefault(matrix, [None, None])
        if param == "lora_A" or param == "gate.weight":
            seen[0] = seen[0] or shape[1]
        elif param in ("lora_B", "m.weight", "vera_B"):
            seen[1] = seen[1] or shape[0]
    shared = weights.get("shared.lora_A")  # VeRA's (r, in): every changed layer takes that many inputs
    if shared is not None:
        for seen in found.values():
            seen[0] = seen[0] or tuple(shared.shape)[1]
    return {m: (i or o or 0, o or i or 0) for m, (i, o) in found.items() if i or o}


def _intermediate_size(weights: dict[str, Any], scaled_inputs: tuple[str, ...] = ()) -> int | None:
    """The feed-forward width a LoRA-family adapter was made for, read off its feed-forward weights (no
    format records it); None when it changes no feed-forward layer. An (IA)³ vector on a layer's input
    (``scaled_inputs``) has that layer's input width."""
    for key, tensor in weights.items():
        parts = key.split(".", 2)
        if len(parts) < 3:
            continue
        matrix, _, param = parts
        if matrix == "intermediate" and param in ("lora_B", "m.weight", "vera_B") and matrix not in scaled_inputs:
            return int(tensor.shape[0])
        if matrix == "output" and param == "lora_B" and matrix in scaled_inputs:
            return int(tensor.shape[0])
        if matrix == "output" and param in ("lora_A", "gate.weight"):
            return int(tensor.shape[1])
    return None


def describe(path: Path | str) -> dict[str, Any]:
    """What an adapter, fusion or head directory holds (`adapt inspect`), checked as loading would check it;
    weights are described from their safetensors headers, without torch."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"no adapter or fusion directory at {path}")
    files = sorted(p for p in path.iterdir() if p.is_file())
    file_bytes = sum(p.stat().st_size for p in files)
    if (path / "adapter_config.json").is_file():
        art: Any = read_adapter(path, shapes_only=True)
        out: dict[str, Any] = {"kind": "adapter", "name": art.name, "format": art.format,
                               "method": art.config.architecture, "config": art.config.to_dict(),
                               # MAD-X: task or language adapter, its language, the one it was trained under
                               "adapter_kind": art.config.kind, "language": art.meta.get("language"),
                               "trained_under": art.meta.get("trained_under")}
        if has_head(path):
            head = read_head(path, shapes_only=True)
            check_weight_shapes(head)  # as loading would: shapes and dtypes from the headers, without torch
            out["head"] = {"name": head.name, "config": head.config.to_dict(),
                           "parameters": sum(t.numel() for t in head.weights.values())}
    elif any((path / f).is_file() for f in FUSION_CONFIGS):
        art = read_fusion(path, shapes_only=True)
        out = {"kind": "fusion", "name": art.name, "format": art.format, "adapters": art.adapters,
               "config": art.config.to_dict()}
    elif (path / HEAD_CONFIG).is_file():
        art = read_head(path, shapes_only=True)
        out = {"kind": "head", "name": art.name, "format": art.format, "config": art.config.to_dict()}
    else:
        raise ArtifactError(f"{path} holds no adapter_config.json, fusion config or head_config.json")
    check_weight_shapes(art)
    out.update(base_model=art.base.to_dict(), parameters=sum(t.numel() for t in art.weights.values()),
               bytes=file_bytes, files=[p.name for p in files], path=str(path))
    versions = art.meta.get("versions") or ({"adapters": art.meta["version"]} if "version" in art.meta else {})
    out["versions"] = versions
    return out
