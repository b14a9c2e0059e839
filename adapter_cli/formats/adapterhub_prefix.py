"""AdapterHub's format for prefix-tuning adapters (``"architecture": "prefix_tuning"``).

AdapterHub keeps an adapter's prefix generator in one pool module, ``<model>.prefix_tuning``, under a location
key (``self_prefix`` for BERT-like models, ``self`` for DistilBERT), and every layer's attention holds the pool
too, so ``save_adapter`` writes each tensor once more per layer:

    bert.prefix_tuning.prefix_tunings.<name>.self_prefix.wte.weight
    bert.encoder.layer.<i>.attention.self.prefix_tuning.pool.prefix_tunings.<name>.self_prefix.wte.weight
    bert.encoder.layer.<i>.attention.self.prefix_tuning.prefix_gates.<name>.weight      (gated prefixes)

We read the pool's copy (the per-layer copies must equal it), and write all of them, as AdapterHub does.
Ours are ``prefix.wte.weight``, ``prefix.control_trans`` (flat) and ``gates.<i>.weight``.

An encoder-decoder's pool holds one generator per location (``encoder_prefix``, ``self_prefix``,
``cross_prefix``; ours ``prefixes.encoder.*`` ...), copied at every self- and cross-attention module, and a
decoder layer's gates sit at its attention modules under the layer's index in the decoder (ours ``gates.<i>``
and ``cross_gates.<i>``, numbered after the encoder's layers).
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


def _attention_patterns(arch: Architecture) -> list[tuple[str, str]]:
    """(regular expression of an attention module's path with its layer index as group 1, what our gate keys
    call it: "gates." in an encoder, "gates.d" and "cross_gates.d" in a decoder, whose layers are renumbered
    later by ``number_decoder_layers``)."""
    top = re.escape(arch.hub_self_attention)
    if not arch.encoder_decoder:
        return [(rf"{re.escape(arch.hub_layers)}\.(\d+)\.{top}", "gates.")]
    decoder = re.escape(str(arch.decoder_layers))
    return [(rf"{re.escape(arch.hub_layers)}\.(\d+)\.{top}", "gates."), (rf"{decoder}\.(\d+)\.{top}", "gates.d"),
            (rf"{decoder}\.(\d+)\.{re.escape(arch.cross_attention)}", "cross_gates.d")]


def prefix_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, source: Path) -> tuple[str | None, dict]:
    import torch

    top = re.escape(arch.adapterhub_prefix)
    attentions = _attention_patterns(arch)
    anywhere = "|".join(pattern.replace(r"(\d+)", r"\d+") for pattern, _ in attentions)
    location = r"(encoder|self|cross)_prefix" if arch.encoder_decoder else f"()({re.escape(_location(arch))})"
    pool = re.compile(rf"^(?:{top}\.)?(?:(?:{anywhere})\.prefix_tuning\.pool|prefix_tuning)\."
                      rf"prefix_tunings\.([^.]+)\.{location}\.(.+)$")
    gates = [(re.compile(rf"^(?:{top}\.)?{pattern}\.prefix_tuning\.prefix_gates\.([^.]+)\.(.+)$"), ours)
             for pattern, ours in attentions]
    out: dict[str, Any] = {}
    names: set[str] = set()
    for key, tensor in raw.items():
        if m := pool.match(key):
            name, where, param = m.group(1), m.group(2), m.groups()[-1]
            key_ours = f"prefixes.{where}.{param}" if arch.encoder_decoder else f"prefix.{param}"
        elif found := next(((m, ours) for gate, ours in gates if (m := gate.match(key))), None):
            (layer, name, param), ours = found[0].groups(), found[1]
            key_ours = f"{ours}{layer}.{param}"
        else:
            raise ArtifactError(f"{source}: unexpected weight {key!r} in a prefix-tuning adapter")
        names.add(name)
        if key_ours in out and isinstance(tensor, torch.Tensor) and not torch.equal(out[key_ours], tensor):
            raise ArtifactError(f"{source}: the copies of {key_ours} in the file differ; the file is damaged")
        out[key_ours] = tensor
    return one_adapter(names, out, source)


def prefix_layer_count(raw: dict[str, Any], arch: Architecture) -> tuple[int | None, int | None]:
    """The layers of the model a prefix was saved from, and of its encoder (None but in an encoder-decoder):
    AdapterHub writes the pool once per attention module (its keys carry the layer's index), so their count is
    known even where the key width is not the hidden size's (grouped-query attention: 4 layers of 1 key head are
    as wide as 2 layers of 2). (None, None) where the file has no such copies."""
    counts = []
    for pattern, _ in _attention_patterns(arch)[:2]:  # the encoder's (or only) layers, then the decoder's
        alias = re.compile(rf"(?:^|\.){pattern}\.prefix_tuning\.pool\.")
        counts.append(max((int(m.group(1)) + 1 for key in raw if (m := alias.search(key))), default=0))
    if not counts[0]:
        return None, None
    return sum(counts), (counts[0] if arch.encoder_decoder else None)


def prefix_weights_to_adapterhub(weights: dict[str, Any], arch: Architecture, name: str, num_layers: int,
                                 encoder_layers: int | None = None) -> dict[str, Any]:
    top = arch.adapterhub_prefix
    paths = {(place, layer): path for place, layer, _, path in arch.attention_paths(num_layers, encoder_layers)}
    if not arch.encoder_decoder:  # AdapterHub's names where they are not transformers 5's (ViT)
        paths = {k: f"{arch.hub_layers}.{k[1]}.{arch.hub_self_attention}" for k in paths}
    out = {}
    for key, tensor in weights.items():
        kind, rest = key.split(".", 1)
        if kind in ("prefix", "prefixes"):
            if kind == "prefixes":
                where, rest = rest.split(".", 1)
                generator = f"{name}.{where}_prefix.{rest}"
            else:
                generator = f"{name}.{_location(arch)}.{rest}"
            out[f"{top}.prefix_tuning.prefix_tunings.{generator}"] = tensor
            for path in paths.values():
                out[f"{top}.{path}.prefix_tuning.pool.prefix_tunings.{generator}"] = tensor
        else:
            layer, param = rest.split(".", 1)
            path = paths["cross_attention" if kind == "cross_gates" else "attention", int(layer)]
            out[f"{top}.{path}.prefix_tuning.prefix_gates.{name}.{param}"] = tensor
    return out
