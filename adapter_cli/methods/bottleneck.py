"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): configuration and layers.

The configuration exposes the whole search space of the AdapterHub paper (Fig. 3) and the AdapterFusion
appendix. Field names are AdapterHub's, so its ``adapter_config.json`` maps onto this class key for key.

Numerics follow AdapterHub's ``Adapter`` / ``ParallelAdapter`` exactly (see docs/numerics.md): at one
site a transformers sub-layer computes ``LN(h + x)`` where ``h`` is the sub-layer output (after its
dropout) and ``x`` the residual input. An adapter replaces that with
``pre_forward`` (choose adapter input ``a``, fusion query and residual) -> ``forward`` -> ``post_forward``.

The configuration is torch-free (``adapt add --hidden-size`` and ``adapt inspect`` need no torch); the
layers live in ``bottleneck_layers`` and are imported from there on first use of their names here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, suggest
from . import phm
from .activations import ACTIVATION_NAMES
from .base import KINDS, MAX_SEED, MethodConfig
from .invertible import check_invertible, invertible_placement, invertible_shapes

# KINDS and MAX_SEED live in .base; named here too, as before (training.recipe imports MAX_SEED from here).
__all__ = ["BottleneckConfig", "INIT_SCHEMES", "KINDS", "LOCATIONS", "MAX_SEED"]

# After self-attention, after the feed-forward block, and (encoder-decoders' decoder layers) after cross-attention.
LOCATIONS = ("mh_adapter", "output_adapter", "cross_adapter")


def location_layers(location: str, num_layers: int, encoder_layers: int | None = None) -> range:
    """The layers that have ``location``: every layer, except that cross-attention is only in an encoder-decoder's
    decoder, whose layers are numbered after the encoder's (AdapterHub's numbering); none without a decoder."""
    if location != "cross_adapter":
        return range(num_layers)
    return range(encoder_layers, num_layers) if encoder_layers is not None else range(0)
INIT_SCHEMES = ("bert", "houlsby", "mam_adapter")


@dataclass(frozen=True)
class BottleneckConfig(MethodConfig):
    """One bottleneck adapter architecture. Defaults are the Pfeiffer (``seq_bn``) configuration."""

    architecture: ClassVar[str] = "bottleneck"

    # Placement: after multi-head attention and/or after the feed-forward block.
    mh_adapter: bool = False
    output_adapter: bool = True
    cross_adapter: bool = False  # after cross-attention: encoder-decoders' decoder layers only
    # Width: hidden_size // reduction_factor, or an explicit bottleneck_size. Either may be a mapping
    # {"<layer index>": value, "default": value} to vary it per layer.
    reduction_factor: float | dict[str, float] | None = 16
    bottleneck_size: int | dict[str, int] | None = None
    non_linearity: str = "relu"
    # Use of the pre-trained LayerNorm of the sub-layer: before the adapter (the adapter then sees
    # LN(h + x)) and/or after it (the output is LN(adapter_out + x)).
    original_ln_before: bool = True
    original_ln_after: bool = True
    # Residual position: True = the sub-layer output h before the add & norm, False = the adapter
    # input, "post_add" = h + x before the norm.
    residual_before_ln: bool | str = True
    adapter_residual_before_ln: bool = False
    # New LayerNorms of the adapter's own, before its down-projection / after its up-projection.
    ln_before: bool = False
    ln_after: bool = False
    is_parallel: bool = False
    scaling: float | str = 1.0
    use_gating: bool = False
    init_weights: str = "bert"
    init_weights_seed: int | None = None
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    leave_out: tuple[int, ...] = ()
    # Compacter: down/up projections as PHM layers (AdapterHub's names and defaults; see methods/phm.py).
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool = True
    shared_W_phm: bool = False
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    learn_phm: bool = True
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_rank: int = 1
    phm_bias: bool = True
    # MAD-X invertible adapter on the embeddings' output ("nice" or null) and its subnets' reduction factor;
    # see methods/invertible.py.
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    # Metadata only: a task adapter or a language adapter (MAD-X).
    kind: str = "task"

    # ---------------------------------------------------------------- construction and validation
    @classmethod
    def _normalize(cls, data: dict[str, Any], source: str) -> None:
        if "leave_out" in data:
            leave_out = data["leave_out"] or ()
            if not isinstance(leave_out, (list, tuple)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in leave_out):
                raise ConfigError(f"{source}: leave_out must be a list of layer indices, e.g. [0, 1], "
                                  f"got {data['leave_out']!r}")
            data["leave_out"] = tuple(leave_out)
        for key in ("reduction_factor", "bottleneck_size"):
            if isinstance(data.get(key), dict):  # YAML gives int keys for {0: 4}; layers are looked up as str
                data[key] = {str(k): v for k, v in data[key].items()}
        for key in ("scaling", "phm_init_range"):
            if key in data and isinstance(data[key], int) and not isinstance(data[key], bool):
                data[key] = float(data[key])  # AdapterHub rejects an int scaling; we do not

    def replace(self, **changes: Any) -> BottleneckConfig:
        merged = self.to_dict()
        if "bottleneck_size" in changes and "reduction_factor" not in changes:
            merged["reduction_factor"] = None  # an explicit width replaces the preset's factor
        if "reduction_factor" in changes and "bottleneck_size" not in changes:
            merged["bottleneck_size"] = None
        if changes.get("inv_adapter", "") is None and "inv_adapter_reduction_factor" not in changes:
            merged["inv_adapter_reduction_factor"] = None  # no invertible adapter, so no factor for one
        merged.update(changes)
        return BottleneckConfig.from_dict(merged)

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        self._check_bools(bad, ("mh_adapter", "output_adapter", "cross_adapter", "original_ln_before", "original_ln_after",
                                "adapter_residual_before_ln", "ln_before", "ln_after", "is_parallel", "use_gating"))
        if not (self.mh_adapter or self.output_adapter or self.cross_adapter):
            raise bad("the adapter has no placement: set mh_adapter, output_adapter and/or cross_adapter to true")
        if (self.reduction_factor is None) == (self.bottleneck_size is None):
            raise bad("set exactly one of reduction_factor and bottleneck_size")
        for label, spec, kind in (("reduction_factor", self.reduction_factor, (int, float)),
                                  ("bottleneck_size", self.bottleneck_size, (int,))):
            if spec is None:
                continue
            values = spec.items() if isinstance(spec, dict) else [("", spec)]
            for key, value in values:
                if key and key != "default" and not str(key).isdigit():
                    raise bad(f"{label} keys must be layer indices or 'default', got {key!r}")
                if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
                    raise bad(f"{label} must be a positive number, got {value!r}")
        for key in ("non_linearity", "init_weights", "kind"):
            if not isinstance(getattr(self, key), str):
                raise bad(f"{key} must be a string, got {getattr(self, key)!r}")
        self._check_seed(bad)
        if self.non_linearity.lower() not in ACTIVATION_NAMES:
            raise bad(f"unknown non_linearity {self.non_linearity!r}{suggest(self.non_linearity, ACTIVATION_NAMES)};"
                      f" choose from {', '.join(ACTIVATION_NAMES)}")
        if not (self.residual_before_ln is True or self.residual_before_ln is False
                or self.residual_before_ln == "post_add"):
            raise bad(f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}")
        if isinstance(self.scaling, str):
            if self.scaling not in ("learned", "channel"):
                raise bad(f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}")
        elif isinstance(self.scaling, bool) or not isinstance(self.scaling, float) or not math.isfinite(self.scaling):
            raise bad(f"scaling must be a finite number, 'learned' or 'channel', got {self.scaling!r}")
        if self.init_weights not in INIT_SCHEMES:
            raise bad(f"unknown init_weights {self.init_weights!r}{suggest(self.init_weights, INIT_SCHEMES)};"
                      f" choose from {', '.join(INIT_SCHEMES)}")
        self._check_fractions(bad, ("dropout", "stochastic_depth"))
        self._check_kind_and_leave_out(bad)
        phm.check(self, bad)
        check_invertible(self, bad)

    # ---------------------------------------------------------------- shape
    @property
    def locations(self) -> tuple[str, ...]:
        return tuple(loc for loc in LOCATIONS if getattr(self, loc))

    def width(self, layer: int, hidden_size: int) -> int:
        """Bottleneck width in ``layer``; a zero-width bottleneck is an error, not a silent 1."""

        def per_layer(spec: Any, label: str) -> Any:
            if not isinstance(spec, dict):
                return spec
            if str(layer) in spec:
                return spec[str(layer)]
            if "default" in spec:
                return spec["default"]
            raise ConfigError(f"{label} has no entry for layer {layer} and no 'default'")

        if self.bottleneck_size is not None:
            size = int(per_layer(self.bottleneck_size, "bottleneck_size"))
            if size > hidden_size:
                raise ConfigError(f"bottleneck_size {size} is wider than the hidden size {hidden_size}")
        else:
            factor = per_layer(self.reduction_factor, "reduction_factor")
            if not hidden_size // factor <= hidden_size:  # a factor below 1 (or NaN): wider than the model
                raise ConfigError(f"reduction_factor {factor} gives a bottleneck wider than the hidden size "
                                  f"{hidden_size}; use a factor of at least 1 (or set bottleneck_size)")
            size = int(hidden_size // factor)
            if size < 1:
                raise ConfigError(
                    f"reduction_factor {factor} gives a zero-width bottleneck for hidden size {hidden_size}"
                    f" ({hidden_size} // {factor} = 0); use a factor of at most {hidden_size}"
                )
        if self.phm_layer:
            phm.check_width(self, hidden_size, size, layer)
        return size

    def _projection_shapes(self, h: int, d: int) -> dict[str, tuple[int, ...]]:
        """The down- and up-projection's own parameters at one site: linear layers, or PHM layers."""
        if not self.phm_layer:
            return {"down.weight": (d, h), "down.bias": (d,), "up.weight": (h, d), "up.bias": (h,)}
        return {**{f"down.{k}": v for k, v in phm.projection_shapes(self, h, d).items()},
                **{f"up.{k}": v for k, v in phm.projection_shapes(self, d, h).items()}}

    def shared_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """What every layer of the adapter shares (Compacter's PHM rule and W, ``shared.<name>``), else {}."""
        width = self.width(0, hidden_size) if self.phm_layer and self.shared_W_phm else 0  # one width (checked)
        return {f"shared.{k}": v for k, v in phm.shared_shapes(self, hidden_size, width).items()}

    def site_layers(self, location: str, num_layers: int, encoder_layers: int | None = None) -> list[int]:
        """The layers where this adapter has a module at ``location`` (``location_layers`` less ``leave_out``)."""
        where = location_layers(location, num_layers, encoder_layers)
        return [i for i in self.layers(num_layers) if i in where]

    def weight_shapes(self, hidden_size: int, num_layers: int, embedding_size: int | None = None,
                      encoder_layers: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, from the configuration alone: what ``BottleneckAdapterSet`` holds
        (``adapt inspect`` checks a file against it without torch)."""
        h, out = hidden_size, self.shared_shapes(hidden_size)
        for loc in self.locations:
            for i in self.site_layers(loc, num_layers, encoder_layers):
                d, site = self.width(i, h), f"{loc}.{i}."
                shapes: dict[str, tuple[int, ...]] = {}
                if self.ln_before:
                    shapes.update({"norm_before.weight": (h,), "norm_before.bias": (h,)})
                shapes.update(self._projection_shapes(h, d))
                if self.ln_after:
                    shapes.update({"norm_after.weight": (h,), "norm_after.bias": (h,)})
                if self.use_gating:
                    shapes.update({"gate.weight": (1, h), "gate.bias": (1,)})
                if self.scaling in ("learned", "channel"):
                    shapes["scaling"] = (1,) if self.scaling == "learned" else (h,)
                out.update({site + k: v for k, v in shapes.items()})
        out.update(invertible_shapes(self, embedding_size or hidden_size))  # ELECTRA: embedding_size < hidden
        return out

    def parameter_count(self, hidden_size: int, num_layers: int, embedding_size: int | None = None,
                        encoder_layers: int | None = None) -> dict[str, Any]:
        """Parameters per placement and in total, from the configuration alone (no model needed)."""
        h = hidden_size
        extra = (2 * h if self.ln_before else 0) + (2 * h if self.ln_after else 0)
        extra += (h + 1) if self.use_gating else 0
        extra += {"learned": 1, "channel": h}.get(self.scaling, 0) if isinstance(self.scaling, str) else 0
        placements = []
        for loc in self.locations:
            layers = self.site_layers(loc, num_layers, encoder_layers)
            widths = [self.width(i, h) for i in layers]
            params = sum(sum(math.prod(s) for s in self._projection_shapes(h, d).values()) + extra for d in widths)
            placements.append({"location": loc, "layers": layers, "widths": widths,
                               "parameters": params})
        shared = sum(math.prod(s) for s in self.shared_shapes(h).values())
        if shared:  # once per adapter, as AdapterHub counts its shared_parameters
            placements.append({"location": "shared", "layers": self.layers(num_layers),
                               "widths": placements[0]["widths"], "parameters": shared})
        placements += invertible_placement(self, embedding_size or hidden_size)
        total = sum(p["parameters"] for p in placements)
        counts = {"placements": placements, "parameters": total, "bytes_fp32": total * 4, "bytes_fp16": total * 2}
        if self.phm_layer and not self.learn_phm:  # the rules stay fixed in training (phm_layers.freeze_rules)
            rules = sum(math.prod(s) for k, s in self.weight_shapes(h, num_layers).items()
                        if k.rsplit(".", 1)[-1] in phm.RULES)
            counts.update(trainable_parameters=total - rules, frozen_what="the PHM rules, learn_phm: false")
        return counts
