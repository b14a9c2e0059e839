"""Prefix tuning (Li & Liang 2021), configured as AdapterHub's ``PrefixTuningConfig`` (``adapters`` 1.3.0) so
its ``adapter_config.json`` maps onto this class key for key.

A prefix-tuning adapter adds no sub-layer and changes no weight: every self-attention layer (but those in
``leave_out``) attends to ``prefix_length`` extra keys and values of its own, placed before the sequence's
keys and values and never masked. The queries and the output length do not change.

How the prefix keys and values are made:

* reparametrised (``flat: false``, AdapterHub's ``prefix_tuning``, the way it trains best): a table of
  ``prefix_length`` embeddings (``wte``) goes through an MLP, hidden → ``bottleneck_size`` →
  ``non_linearity`` → layers × 2 × hidden, which gives every layer's keys and values at once;
* flat (``flat: true``, ``prefix_tuning_flat``): the same numbers stored directly, one vector of
  ``prefix_length`` × layers × 2 × hidden. A reparametrised prefix is exported flat (``eject``) with the
  same outputs in a file 10-20 times smaller, since the MLP only serves training.

``dropout`` applies to the keys and values in training. ``use_gating`` (UniPELT) scales each layer's prefix
keys and values by a learned gate, the mean over tokens of ``sigmoid(Linear(x))`` of the attention's input
``x``: one gate for both (``shared_gating``) or one each.

An encoder-decoder (BART, T5) has three kinds of attention, and as in AdapterHub each gets a generator of its own
(a *location*): the encoder's self-attention (``encoder``, if ``encoder_prefix``), the decoder's self-attention
(``self``, always) and its cross-attention (``cross``, if ``cross_prefix``), each over its layers not in
``leave_out`` (the decoder's numbered after the encoder's). A model with one stack of layers has one generator,
and both fields have no effect there.
The configuration is torch-free; the modules live in ``prefix_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .activations import ACTIVATION_NAMES
from .base import MethodConfig


@dataclass(frozen=True)
class PrefixTuningConfig(MethodConfig):
    """One prefix-tuning configuration; the defaults are AdapterHub's ``prefix_tuning`` preset."""

    architecture: ClassVar[str] = "prefix_tuning"

    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: tuple[int, ...] = ()
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: int | None = None
    kind: str = "task"  # metadata only, as for the other methods

    @classmethod
    def _normalize(cls, data: dict[str, Any], source: str) -> None:
        if isinstance(data.get("leave_out"), list):
            data["leave_out"] = tuple(data["leave_out"])

    def replace(self, **changes: Any) -> PrefixTuningConfig:
        return PrefixTuningConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        self._check_bools(bad, ("encoder_prefix", "cross_prefix", "flat", "use_gating", "shared_gating"))
        for key, low in (("prefix_length", 1), ("bottleneck_size", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                hint = " (a prefix of no tokens changes nothing; AdapterHub's default is 30)" \
                    if key == "prefix_length" else ""
                raise bad(f"{key} must be a whole number of at least {low}, got {value!r}{hint}")
        if not isinstance(self.non_linearity, str) or self.non_linearity.lower() not in ACTIVATION_NAMES:
            raise bad(f"unknown non_linearity {self.non_linearity!r}; use one of {', '.join(ACTIVATION_NAMES)}")
        self._check_fractions(bad, ("dropout",))
        self._check_seed(bad)
        self._check_kind_and_leave_out(bad)
        if not isinstance(self.leave_out, tuple):
            raise bad(f"leave_out must be a list of layer indices, got {self.leave_out!r}")

    @property
    def variant(self) -> str:
        """AdapterHub's preset name for this kind: prefix_tuning (reparametrised) or prefix_tuning_flat."""
        return "prefix_tuning_flat" if self.flat else "prefix_tuning"

    @property
    def gates(self) -> int:
        """Gate outputs per layer: 0 without gating, 1 shared by keys and values, else 2."""
        return 0 if not self.use_gating else (1 if self.shared_gating else 2)

    def layers(self, num_layers: int) -> list[int]:
        layers = super().layers(num_layers)
        if not layers:
            raise ConfigError(f"leave_out {list(self.leave_out)} leaves out every layer of {num_layers}: the prefix "
                              "would change nothing; leave at least one layer in")
        return layers

    def locations(self, num_layers: int, encoder_layers: int | None = None) -> dict[str, list[int]]:
        """Each generator's prefixed layers: {"": layers} in a model with one stack; in an encoder-decoder
        (``encoder_layers`` set) those of "encoder", "self" and "cross" that prefix any layer."""
        layers = self.layers(num_layers)
        if encoder_layers is None:
            return {"": layers}
        decoder = [i for i in layers if i >= encoder_layers]
        found = {"encoder": [i for i in layers if i < encoder_layers] if self.encoder_prefix else [],
                 "self": decoder, "cross": decoder if self.cross_prefix else []}
        kept = {where: ids for where, ids in found.items() if ids}
        if not kept:
            raise ConfigError(f"leave_out {list(self.leave_out)} with encoder_prefix: false leaves no attention to "
                              "prefix: the prefix would change nothing; leave a decoder layer in")
        return kept

    # ---------------------------------------------------------------- shape
    @staticmethod
    def generator_key(location: str) -> str:
        """Where a location's generator sits among the weights: ``prefix.`` alone, ``prefixes.<location>.``."""
        return f"prefixes.{location}." if location else "prefix."

    @staticmethod
    def gate_key(location: str) -> str:
        """Where a layer's gate sits: ``gates.<i>.`` at self-attention, ``cross_gates.<i>.`` at cross-attention."""
        return "cross_gates" if location == "cross" else "gates"

    def weight_shapes(self, hidden_size: int, num_layers: int, kv_size: int | None = None,
                      encoder_layers: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every stored tensor's name and shape (our names: ``prefix.*`` as AdapterHub's prefix module, or
        ``prefixes.<location>.*`` in an encoder-decoder; ``gates.<layer>.*``, ``cross_gates.<layer>.*`` for the
        gates). ``kv_size``: the width of a layer's keys (and values), narrower than ``hidden_size`` under
        grouped-query attention."""
        shapes: dict[str, tuple[int, ...]] = {}
        for location, layers in self.locations(num_layers, encoder_layers).items():
            head = self.generator_key(location)
            values = len(layers) * 2 * (kv_size or hidden_size)  # keys and values of every prefixed layer
            if self.flat:
                shapes[f"{head}control_trans"] = (self.prefix_length * values,)
            else:
                shapes.update({f"{head}wte.weight": (self.prefix_length, hidden_size),
                               f"{head}control_trans.0.weight": (self.bottleneck_size, hidden_size),
                               f"{head}control_trans.0.bias": (self.bottleneck_size,),
                               f"{head}control_trans.2.weight": (values, self.bottleneck_size),
                               f"{head}control_trans.2.bias": (values,)})
            for i in layers if self.gates else ():
                shapes[f"{self.gate_key(location)}.{i}.weight"] = (self.gates, hidden_size)
                shapes[f"{self.gate_key(location)}.{i}.bias"] = (self.gates,)
        return shapes

    def parameter_count(self, hidden_size: int, num_layers: int, kv_size: int | None = None,
                        encoder_layers: int | None = None) -> dict[str, Any]:
        """Trained parameters, as AdapterHub counts them (the MLP included while it is not ejected)."""
        import math

        shapes = self.weight_shapes(hidden_size, num_layers, kv_size, encoder_layers)
        placements = []
        for location, layers in self.locations(num_layers, encoder_layers).items():
            mine = (self.generator_key(location), *(f"{self.gate_key(location)}.{i}." for i in layers))
            placements.append({"location": "cross_attention" if location == "cross" else "attention",
                               "layers": layers, "widths": [self.prefix_length] * len(layers),
                               "parameters": sum(math.prod(v) for k, v in shapes.items() if k.startswith(mine))})
        total = sum(math.prod(v) for v in shapes.values())
        return {"placements": placements, "parameters": total, "trainable_parameters": total,
                "bytes_fp32": total * 4, "bytes_fp16": total * 2}
