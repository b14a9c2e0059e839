"""AdapterHub's format for prefix-tuning adapters (``"architecture": "prefix_tuning"``).

AdapterHub keeps an adapter's prefix generator in one pool module, ``<model>.prefix_tuning``, under a location
key (``self_prefix`` for BERT-like models, ``self`` for DistilBERT), and every layer's attention holds the pool
too, so ``save_adapter`` writes each tensor once more per layer:

    bert.prefix_tuning.prefix_tunings.<name>.self_prefix.wte.weight
    bert.encoder.layer.<i>.attention.self.prefix_tuning.pool.prefix_tunings.<name>.self_prefix.wte.weight
    bert.encoder.layer.<i>.attention.self.prefix_tuning.prefix_gates.<name>.weight      (gated prefixes)

We read the pool's copy (the per-layer copies must equal it), and write all of them, as AdapterHub does.
Ours are ``prefix.wte.weight``, ``prefix.control_trans`` (flat) and ``gates.<i>.weight``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..architectures import Architecture
from ..errors import ArtifactError
from .artifacts import one_adapter

NOT_WRITTEN = ("architecture", "kind")


def _location(arch: Architecture) -> str:
    return "self" if arch.name == "DistilBERT" else "self_prefix"


def prefix_config_from_adapterhub(raw: dict[str, Any], source: str, weights: dict[str, Any]) -> Any:
    """The config, flat when the weights are: AdapterHub's ``eject_prefix_tuning`` makes a prefix flat but
    leaves ``"flat": false`` in what it saves, and its own loader then runs the prefix on random weights."""
    from ..methods.prefix import PrefixTuningConfig

    values = {k: v for k, v in raw.items() if k != "architecture"}
    if "prefix.control_trans" in weights and "prefix.wte.weight" not in weights:
        values["flat"] = True
    return PrefixTuningConfig.from_dict(values, source=source)


def prefix_config_to_adapterhub(config: Any) -> dict[str, Any]:
    return {**{k: v for k, v in config.to_dict().items() if k not in NOT_WRITTEN}, "architecture": "prefix_tuning"}


def prefix_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, source: Path) -> tuple[str | None, dict]:
    import torch

    top, layers = re.escape(arch.adapterhub_prefix), re.escape(arch.hub_layers)
    attention = re.escape(arch.hub_self_attention)
    pool = re.compile(rf"^(?:{top}\.)?(?:{layers}\.\d+\.{attention}\.prefix_tuning\.pool|prefix_tuning)\."
                      rf"prefix_tunings\.([^.]+)\.{re.escape(_location(arch))}\.(.+)$")
    gate = re.compile(rf"^(?:{top}\.)?{layers}\.(\d+)\.{attention}\.prefix_tuning\.prefix_gates\.([^.]+)\.(.+)$")
    out: dict[str, Any] = {}
    names: set[str] = set()
    for key, tensor in raw.items():
        if m := pool.match(key):
            name, param = m.groups()
            key_ours = f"prefix.{param}"
        elif m := gate.match(key):
            layer, name, param = m.groups()
            key_ours = f"gates.{layer}.{param}"
        else:
            raise ArtifactError(f"{source}: unexpected weight {key!r} in a prefix-tuning adapter")
        names.add(name)
        if key_ours in out and isinstance(tensor, torch.Tensor) and not torch.equal(out[key_ours], tensor):
            raise ArtifactError(f"{source}: the copies of {key_ours} in the file differ; the file is damaged")
        out[key_ours] = tensor
    return one_adapter(names, out, source)


def prefix_layer_count(raw: dict[str, Any], arch: Architecture) -> int | None:
    """The layers of the model a prefix was saved from: AdapterHub writes the pool once per layer (its keys carry
    the layer's index), so their count is known even where the key width is not the hidden size's (grouped-query
    attention: 4 layers of 1 key head are as wide as 2 layers of 2). None where the file has no such copies."""
    layers, attention = re.escape(arch.hub_layers), re.escape(arch.hub_self_attention)
    alias = re.compile(rf"(?:^|\.){layers}\.(\d+)\.{attention}\.prefix_tuning\.pool\.")
    found = [int(m.group(1)) for key in raw if (m := alias.search(key))]
    return max(found) + 1 if found else None


def prefix_weights_to_adapterhub(weights: dict[str, Any], arch: Architecture, name: str,
                                 num_layers: int) -> dict[str, Any]:
    top, location = arch.adapterhub_prefix, _location(arch)
    out = {}
    for key, tensor in weights.items():
        kind, rest = key.split(".", 1)
        if kind == "prefix":
            out[f"{top}.prefix_tuning.prefix_tunings.{name}.{location}.{rest}"] = tensor
            for i in range(num_layers):
                out[f"{top}.{arch.hub_layers}.{i}.{arch.hub_self_attention}.prefix_tuning.pool.prefix_tunings."
                    f"{name}.{location}.{rest}"] = tensor
        else:
            layer, param = rest.split(".", 1)
            out[f"{top}.{arch.hub_layers}.{layer}.{arch.hub_self_attention}.prefix_tuning.prefix_gates.{name}."
                f"{param}"] = tensor
    return out
