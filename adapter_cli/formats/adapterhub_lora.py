"""AdapterHub's format for LoRA-family adapters (``"architecture": "lora"`` in ``adapter_config.json``).

Weight names carry the changed linear layer's module path, e.g.
``bert.encoder.layer.3.attention.self.query.loras.mrpc.lora_A``; VeRA's shared projections are stored as
``bert.shared_parameters.mrpc.lora_A``. Ours are ``q.3.lora_A`` and ``shared.lora_A``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..architectures import Architecture
from ..errors import ArtifactError
from .artifacts import one_adapter

# Fields of AdapterHub's LoRAConfig; ours adds "kind" (metadata), which its files do not carry.
NOT_WRITTEN = ("architecture", "kind", "dora_style", "scaled_inputs")


def _older_than_1_1(version: Any) -> bool:
    match = re.match(r"^(?:adapters\.)?(\d+)\.(\d+)", str(version or ""))
    return bool(match) and (int(match.group(1)), int(match.group(2))) < (1, 1)


def lora_config_from_adapterhub(raw: dict[str, Any], source: str, version: Any) -> Any:
    from ..methods.lora import LoRAConfig

    values = {k: v for k, v in raw.items() if k != "architecture"}
    if _older_than_1_1(version) and values.get("alpha", 8) != values.get("r", 8):
        # Before adapters 1.1.0, LoRA ignored alpha (the scaling was 1); AdapterHub loads such files with
        # alpha := r to keep their outputs (its loading.py, PR #770), and so do we.
        values["alpha"] = values.get("r", 8)
    return LoRAConfig.from_dict(values, source=source)


def lora_config_to_adapterhub(config: Any) -> dict[str, Any]:
    from ..errors import UsageError

    if config.dora_style != "adapters" or config.scaled_inputs:
        raise UsageError("this adapter computes as PEFT does (dora_style 'peft' or scaled_inputs), which "
                         "AdapterHub's format cannot express; save it in the adapt or peft format")
    out = {k: v for k, v in config.to_dict().items() if k not in NOT_WRITTEN}
    out["architecture"] = "lora"
    return out


def feed_forward_layout(raw: dict[str, Any], arch: Architecture) -> bool | None:
    """Whether the file changes a gated feed-forward's up-projection (T5's ``wi_1``: True) or a plain one's (``wi``:
    False), as its weight names say; None where the family has one layout or the file changes neither."""
    if not arch.gated_attr:
        return None
    for key in raw:
        if ".DenseReluDense.wi_1." in key:
            return True
        if ".DenseReluDense.wi." in key:
            return False
    return None


def _patterns(arch: Architecture) -> list[tuple[str, str, re.Pattern[str]]]:
    """(matrix, how its layer is named in our keys, pattern); an encoder-decoder's decoder layers are named
    ``d<index in the decoder>``, which ``adapterhub.number_decoder_layers`` numbers after the encoder's."""
    stacks = [("", arch.hub_layers, arch.hub_linears)]
    if arch.decoder_layers is not None:
        stacks.append(("d", arch.decoder_layers, arch.linears_for(True)))
    out = []
    for mark, layers, linears in stacks:
        prefix = rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?{re.escape(layers)}\.(\d+)\."
        out += [(matrix, mark, re.compile(prefix + rf"{re.escape(path)}\.loras\.([^.]+)\.(.+)$"))
                for matrix, path in linears]
    return out


def lora_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, source: Path,
                                 matrices: tuple[str, ...] = ()) -> tuple[str | None, dict]:
    """Our weights from AdapterHub's; ``matrices`` (the config's) say how a fused layer's tensors split."""
    shared = re.compile(rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?shared_parameters\.([^.]+)\.(lora_[AB])$")
    out: dict[str, Any] = {}
    names: set[str] = set()
    patterns = _patterns(arch)
    for key, tensor in raw.items():
        m = shared.match(key)
        if m:
            names.add(m.group(1))
            out[f"shared.{m.group(2)}"] = tensor
            continue
        for matrix, mark, pattern in patterns:
            m = pattern.match(key)
            if m:
                layer, name, param = m.groups()
                layer = mark + layer
                names.add(name)
                if arch.fused(matrix) is not None:
                    out.update(_split(tensor, _fused_parts(arch, matrix, matrices), layer, param, source, key))
                else:
                    out[f"{matrix}.{layer}.{param}"] = tensor
                break
        else:
            raise ArtifactError(f"{source}: unexpected weight {key!r} in a LoRA-family adapter")
    return one_adapter(names, out, source)


def _fused_parts(arch: Architecture, matrix: str, matrices: tuple[str, ...]) -> list[str]:
    """The enabled matrices of the fused layer ``matrix`` is in, in their order there (GPT-2's q, k, v)."""
    if arch.fused(matrix) is None:
        return [matrix]
    path = arch.hub_linear(matrix)
    return [m for m, p in arch.hub_linears if p == path and m in matrices]


def _split(tensor: Any, parts: list[str], layer: str, param: str, source: Path, key: str) -> dict[str, Any]:
    """AdapterHub's ``LoRAMergedLinear`` stacks the enabled matrices' A, B, gates and (IA)³ vectors along
    the first dimension: one block each, in order."""
    if not parts:
        raise ArtifactError(f"{source}: {key!r} changes a fused layer, but the config enables none of its matrices")
    rows = tensor.shape[0]
    if rows % len(parts):
        raise ArtifactError(f"{source}: {key!r} has {rows} rows, which do not split among {', '.join(parts)}")
    size = rows // len(parts)
    if not hasattr(tensor, "narrow"):  # shapes only
        from .artifacts import TensorInfo

        return {f"{m}.{layer}.{param}": TensorInfo((size, *tensor.shape[1:]), tensor.dtype) for m in parts}
    return {f"{m}.{layer}.{param}": tensor.narrow(0, i * size, size).clone() for i, m in enumerate(parts)}


def lora_weights_to_adapterhub(weights: dict[str, Any], arch: Architecture, name: str,
                               encoder_layers: int | None = None) -> dict[str, Any]:
    """``encoder_layers``: an encoder-decoder's encoder depth (AdapterHub names its decoder layers from 0)."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, list[tuple[int, Any]]] = {}
    for key, tensor in weights.items():
        first, _, rest = key.partition(".")
        if first == "shared":
            out[f"{arch.adapterhub_prefix}.shared_parameters.{name}.{rest}"] = tensor
            continue
        layer, _, param = rest.partition(".")
        decoder = arch.in_decoder(int(layer), encoder_layers)
        hub = (f"{arch.adapterhub_prefix}.{arch.layer_path(int(layer), encoder_layers or 0, hub=True)}."
               f"{arch.hub_linear(first, decoder)}.loras.{name}.{param}")
        position = arch.fused(first)
        if position is None:
            out[hub] = tensor
        else:  # one block per enabled matrix, in the fused layer's order
            fused.setdefault(hub, []).append((position[0], tensor))
    for hub, blocks in fused.items():
        out[hub] = torch.cat([t for _, t in sorted(blocks, key=lambda b: b[0])], dim=0)
    return out
