"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): configuration and layers.

The configuration exposes the whole search space of the AdapterHub paper (Fig. 3) and the AdapterFusion
appendix. Field names are AdapterHub's, so its ``adapter_config.json`` maps onto this class key for key.

Numerics follow AdapterHub's ``Adapter`` / ``ParallelAdapter`` exactly (see docs/numerics.md): at one
site a transformers sub-layer computes ``LN(h + x)`` where ``h`` is the sub-layer output (after its
dropout) and ``x`` the residual input. An adapter replaces that with
``pre_forward`` (choose adapter input ``a``, fusion query and residual) -> ``forward`` -> ``post_forward``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, suggest
from .activations import ACTIVATION_NAMES, activation

LOCATIONS = ("mh_adapter", "output_adapter")
INIT_SCHEMES = ("bert", "houlsby", "mam_adapter")
KINDS = ("task", "language")


@dataclass(frozen=True)
class BottleneckConfig:
    """One bottleneck adapter architecture. Defaults are the Pfeiffer (``seq_bn``) configuration."""

    architecture: ClassVar[str] = "bottleneck"

    # Placement: after multi-head attention and/or after the feed-forward block.
    mh_adapter: bool = False
    output_adapter: bool = True
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
    # Metadata only: a task adapter or a language adapter (MAD-X).
    kind: str = "task"

    # ---------------------------------------------------------------- construction and validation
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> BottleneckConfig:
        data = dict(data)
        data.pop("architecture", None)
        known = set(cls.field_names())
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key {key!r} in {source}{suggest(key, known)}")
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
        if "scaling" in data and isinstance(data["scaling"], int) and not isinstance(data["scaling"], bool):
            data["scaling"] = float(data["scaling"])  # AdapterHub rejects an int here; we do not
        config = cls(**data)
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        out = {"architecture": self.architecture}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> BottleneckConfig:
        merged = self.to_dict()
        if "bottleneck_size" in changes and "reduction_factor" not in changes:
            merged["reduction_factor"] = None  # an explicit width replaces the preset's factor
        if "reduction_factor" in changes and "bottleneck_size" not in changes:
            merged["bottleneck_size"] = None
        merged.update(changes)
        return BottleneckConfig.from_dict(merged)

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        for name in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after",
                     "adapter_residual_before_ln", "ln_before", "ln_after", "is_parallel", "use_gating"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.mh_adapter or self.output_adapter):
            raise bad("the adapter has no placement: set mh_adapter and/or output_adapter to true")
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
                if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                    raise bad(f"{label} must be a positive number, got {value!r}")
        for key in ("non_linearity", "init_weights", "kind"):
            if not isinstance(getattr(self, key), str):
                raise bad(f"{key} must be a string, got {getattr(self, key)!r}")
        if self.init_weights_seed is not None and (isinstance(self.init_weights_seed, bool)
                                                   or not isinstance(self.init_weights_seed, int)):
            raise bad(f"init_weights_seed must be an integer or null, got {self.init_weights_seed!r}")
        if self.non_linearity.lower() not in ACTIVATION_NAMES:
            raise bad(f"unknown non_linearity {self.non_linearity!r}{suggest(self.non_linearity, ACTIVATION_NAMES)};"
                      f" choose from {', '.join(ACTIVATION_NAMES)}")
        if not (self.residual_before_ln is True or self.residual_before_ln is False
                or self.residual_before_ln == "post_add"):
            raise bad(f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}")
        if isinstance(self.scaling, str):
            if self.scaling not in ("learned", "channel"):
                raise bad(f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}")
        elif isinstance(self.scaling, bool) or not isinstance(self.scaling, float):
            raise bad(f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}")
        if self.init_weights not in INIT_SCHEMES:
            raise bad(f"unknown init_weights {self.init_weights!r}{suggest(self.init_weights, INIT_SCHEMES)};"
                      f" choose from {', '.join(INIT_SCHEMES)}")
        for label in ("dropout", "stochastic_depth"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise bad(f"{label} must be in [0, 1), got {value!r}")
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if any(i < 0 for i in self.leave_out):
            raise bad(f"leave_out holds layer indices >= 0, got {list(self.leave_out)}")

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
            return size
        factor = per_layer(self.reduction_factor, "reduction_factor")
        size = int(hidden_size // factor)
        if size < 1:
            raise ConfigError(
                f"reduction_factor {factor} gives a zero-width bottleneck for hidden size {hidden_size}"
                f" ({hidden_size} // {factor} = 0); use a factor of at most {hidden_size}"
            )
        return size

    def layers(self, num_layers: int) -> list[int]:
        outside = [i for i in self.leave_out if i >= num_layers]
        if outside:
            raise ConfigError(f"leave_out names layers {outside} but the model has {num_layers} layers "
                              f"(0..{num_layers - 1})")
        return [i for i in range(num_layers) if i not in set(self.leave_out)]

    def parameter_count(self, hidden_size: int, num_layers: int) -> dict[str, Any]:
        """Parameters per placement and in total, from the configuration alone (no model needed)."""
        h = hidden_size
        extra = (2 * h if self.ln_before else 0) + (2 * h if self.ln_after else 0)
        extra += (h + 1) if self.use_gating else 0
        extra += {"learned": 1, "channel": h}.get(self.scaling, 0) if isinstance(self.scaling, str) else 0
        placements = []
        for loc in self.locations:
            widths = [self.width(i, h) for i in self.layers(num_layers)]
            params = sum(2 * h * d + d + h + extra for d in widths)
            placements.append({"location": loc, "layers": self.layers(num_layers), "widths": widths,
                               "parameters": params})
        total = sum(p["parameters"] for p in placements)
        return {"placements": placements, "parameters": total, "bytes_fp32": total * 4, "bytes_fp16": total * 2}


# ==================================================================== layers


class BottleneckAdapter(nn.Module):
    """One sequential bottleneck adapter at one site (one layer, one placement)."""

    def __init__(self, config: BottleneckConfig, hidden_size: int, width: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.norm_before = nn.LayerNorm(hidden_size) if config.ln_before else None
        self.down = nn.Linear(hidden_size, width)
        self.up = nn.Linear(width, hidden_size)
        self.norm_after = nn.LayerNorm(hidden_size) if config.ln_after else None
        self.gate = nn.Linear(hidden_size, 1) if config.use_gating else None
        if config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif config.scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(hidden_size))
        else:
            self.scaling = float(config.scaling)
        self.act = activation(config.non_linearity)
        self.dropout = nn.Dropout(config.dropout)
        self._init(generator)

    @torch.no_grad()
    def _init(self, generator: torch.Generator | None) -> None:
        scheme = self.config.init_weights
        linears = [m for m in (self.down, self.up, self.gate) if m is not None]
        if scheme == "bert":
            for lin in linears:
                lin.weight.normal_(0.0, 0.02, generator=generator)
                lin.bias.zero_()
        elif scheme == "houlsby":
            for lin in linears:
                nn.init.trunc_normal_(lin.weight, 0.0, 1e-2, -2e-2, 2e-2, generator=generator)
                lin.bias.zero_()
        elif scheme == "mam_adapter":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()
            if self.gate is not None:
                self.gate.weight.normal_(0.0, 0.02, generator=generator)
                self.gate.bias.zero_()

    # AdapterHub's Adapter.pre_forward: choose the adapter input, the fusion query and the residual.
    def pre_forward(self, h: torch.Tensor, x: torch.Tensor, ln: nn.Module | None,
                    fusion: Any | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        cfg = self.config
        query = None
        residual = h if cfg.residual_before_ln is True else None
        if fusion is not None and fusion.query_before_ln:
            query = h
        if cfg.original_ln_before:
            if ln is not None:
                summed = h + x
                if cfg.residual_before_ln == "post_add":
                    residual = summed
                h = ln(summed)
            elif x is not None:
                h = h + x
        if not cfg.residual_before_ln:
            residual = h
        if fusion is not None and not fusion.query_before_ln:
            query = h
        assert residual is not None
        return h, query, residual

    def bottleneck(self, a: torch.Tensor) -> torch.Tensor:
        """The scaled up-projection: what AdapterFusion attends over."""
        if self.norm_before is not None:
            a = self.norm_before(a)
        up = self.up(self.act(self.down(a)))
        if self.config.stochastic_depth > 0.0 and self.training:
            keep = 1.0 - self.config.stochastic_depth
            mask = up.new_empty((up.shape[0],) + (1,) * (up.dim() - 1)).bernoulli_(keep)
            up = up * mask / keep
        return up * self.scaling

    def forward(self, a: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.bottleneck(a)
        out = self.dropout(up)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(a)).mean(dim=1, keepdim=True)
            out = out * gate
        if self.config.adapter_residual_before_ln:
            out = out + residual
        if self.norm_after is not None:
            out = self.norm_after(out)
        if not self.config.adapter_residual_before_ln:
            out = out + residual
        return out, up

    def plain_output(self, up: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``forward``'s output from its ``up``, for an adapter without a gate or a LayerNorm after
        (what batched paths that compute ``up`` themselves need)."""
        return self.dropout(up) + residual

    def post_forward(self, out: torch.Tensor, h: torch.Tensor, x: torch.Tensor,
                     ln: nn.Module | None) -> torch.Tensor:
        if self.config.original_ln_after:
            out = ln(out + x) if ln is not None else out + x
        return out


class ParallelBottleneckAdapter(BottleneckAdapter):
    """A bottleneck computed from the sub-layer input x, added beside the sub-layer (He et al. 2022)."""

    def pre_forward(self, h: torch.Tensor, x: torch.Tensor, ln: nn.Module | None,
                    fusion: Any | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        return x, (x if fusion is not None else None), x

    def forward(self, a: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.bottleneck(a)
        out = self.dropout(up)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(a)).mean(dim=1, keepdim=True)
            out = out * gate
        if self.norm_after is not None:
            out = self.norm_after(out)
        return out, up

    def plain_output(self, up: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(up)  # added beside the sub-layer in post_forward

    def post_forward(self, out: torch.Tensor, h: torch.Tensor, x: torch.Tensor,
                     ln: nn.Module | None) -> torch.Tensor:
        out = out + h
        if self.config.original_ln_after:
            out = ln(out + x) if ln is not None else out + x
        return out


class BottleneckAdapterSet(nn.Module):
    """All sites of one named adapter. State-dict keys are ``<location>.<layer>.<param>``, our format."""

    def __init__(self, config: BottleneckConfig, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        bad = [i for i in config.leave_out if i >= num_layers]
        if bad:
            raise ConfigError(f"leave_out names layers {bad} but the model has {num_layers} layers (0..{num_layers - 1})")
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        cls = ParallelBottleneckAdapter if config.is_parallel else BottleneckAdapter
        for loc in config.locations:
            sites = nn.ModuleDict({str(i): cls(config, hidden_size, config.width(i, hidden_size), generator)
                                   for i in config.layers(num_layers)})
            self.add_module(loc, sites)

    def site(self, location: str, layer: int) -> BottleneckAdapter | None:
        sites = getattr(self, location, None)
        if sites is None:
            return None
        return sites[str(layer)] if str(layer) in sites else None

    def sites(self) -> list[tuple[str, int, BottleneckAdapter]]:
        return [(loc, int(i), m) for loc in self.config.locations for i, m in getattr(self, loc).items()]

