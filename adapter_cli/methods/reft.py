"""Representation fine-tuning: LoReFT, NoReFT and DiReFT (Wu et al. 2024), configured as AdapterHub's
``ReftConfig`` (``adapters`` 1.3.0) so its ``adapter_config.json`` maps onto this class key for key.

A ReFT adapter changes no weight and adds no sub-layer: it edits the hidden states a transformer layer
outputs, at a few token positions only (the first ``prefix_positions`` and the last ``suffix_positions``
real tokens of each row). At each edited position, with ``h`` the layer's output there:

* LoReFT (``orthogonality``, ``subtract_projection``): ``h + Rᵀ(act(W h + b) − R h)``, R (r×hidden) with
  orthonormal rows (torch's orthogonal parametrization, as the reference uses it);
* NoReFT: the same with R unconstrained;
* DiReFT (no ``subtract_projection``): ``h + Rᵀ act(W h + b)``.

Dropout (AdapterHub's default 0.05) applies to the edited state, in training only. ``tied_weights`` shares one
intervention between the prefix and the suffix positions of a layer (else each has its own); ``layers``
names the layers that get one ("all" by default). The configuration is torch-free (``adapt add
--hidden-size`` counts parameters without a model); the modules live in ``reft_layers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .activations import ACTIVATION_NAMES
from .base import KINDS, MethodConfig

DTYPES = ("float32", "float16", "bfloat16", "float64")
HALF_DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class ReftConfig(MethodConfig):
    """One ReFT configuration; the defaults are AdapterHub's ``loreft`` preset."""

    architecture: ClassVar[str] = "reft"

    # "all", or the indices of the layers whose output is edited. (The field has AdapterHub's name, so it
    # hides MethodConfig.layers(); ``layer_indices`` answers that question here.)
    layers: Any = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True
    tied_weights: bool = False
    # A class attribute in AdapterHub, not a dataclass field: its files never record it, and a file loaded
    # there computes with True (see formats/adapterhub_reft.py). Here it is a field, written explicitly.
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None
    dtype: str | None = None
    output_reft: bool = True
    init_weights_seed: int | None = None
    kind: str = "task"  # metadata only, as for the other methods

    # ---------------------------------------------------------------- construction and validation
    @classmethod
    def _normalize(cls, data: dict[str, Any], source: str) -> None:
        layers = data.get("layers", "all")
        if isinstance(layers, (list, tuple)):
            data["layers"] = tuple(layers)
        elif layers != "all":
            raise ConfigError(f"{source}: layers must be \"all\" or a list of layer indices, got {layers!r}")

    def replace(self, **changes: Any) -> ReftConfig:
        return ReftConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        self._check_bools(bad, ("orthogonality", "tied_weights", "subtract_projection", "output_reft"))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise bad(f"the rank r must be a whole number of at least 1, got {self.r!r}")
        for key in ("prefix_positions", "suffix_positions"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(f"{key} must be a whole number of at least 0, got {value!r}")
        if self.prefix_positions == 0 and self.suffix_positions == 0:
            raise bad("the adapter edits no token: set prefix_positions or suffix_positions above 0 "
                      "(AdapterHub would silently leave every output unchanged)")
        if not self.output_reft:
            raise bad("output_reft: false places no intervention anywhere (AdapterHub adds none); set it to true")
        if self.layers != "all":
            wrong = [i for i in self.layers if isinstance(i, bool) or not isinstance(i, int) or i < 0]
            if wrong or not self.layers or len(set(self.layers)) != len(self.layers):
                raise bad(f"layers must be \"all\" or a non-empty list of distinct layer indices >= 0, got "
                          f"{list(self.layers)}")
        self._check_fractions(bad, ("dropout",))
        if self.non_linearity is not None and (not isinstance(self.non_linearity, str)
                                               or self.non_linearity.lower() not in ACTIVATION_NAMES):
            raise bad(f"unknown non_linearity {self.non_linearity!r}; use null (none) or one of "
                      f"{', '.join(ACTIVATION_NAMES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad(f"dtype must be one of {', '.join(DTYPES)} or null, got {self.dtype!r}")
        if self.orthogonality and self.dtype in HALF_DTYPES:
            raise bad(f"orthogonality needs float32 or float64 weights (torch has no {self.dtype} orthogonal "
                      "parametrization); drop dtype or set orthogonality: false")
        self._check_seed(bad)
        if self.kind not in KINDS:  # (no leave_out to check: ``layers`` says where the adapter is)
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    # ---------------------------------------------------------------- shape
    @property
    def variant(self) -> str:
        """The family member: loreft (orthogonal R), noreft (R free) or direft (no projection subtracted)."""
        if self.orthogonality:
            return "loreft"
        return "noreft" if self.subtract_projection else "direft"

    @property
    def named_layers(self) -> tuple[int, ...]:
        """The layers the config names explicitly (none for "all")."""
        return () if self.layers == "all" else tuple(self.layers)

    def layer_indices(self, num_layers: int) -> list[int]:
        """The layers whose output is edited, in a model of ``num_layers`` layers."""
        outside = [i for i in self.named_layers if i >= num_layers]
        if outside:
            raise ConfigError(f"layers names layers {outside} but the model has {num_layers} layers "
                              f"(0..{num_layers - 1})")
        return list(range(num_layers)) if self.layers == "all" else sorted(self.layers)

    @property
    def units(self) -> int:
        """Interventions per layer: one shared by prefix and suffix (``tied_weights``), else one each."""
        return 1 if self.tied_weights else 2

    def check_rank(self, hidden_size: int) -> None:
        """R has r rows of the hidden size; more rows than that cannot be orthonormal, and is a typo anyway."""
        if self.r > hidden_size:
            raise ConfigError(f"the rank r {self.r} is larger than the hidden size {hidden_size}; a ReFT rank is "
                              "usually 1 to 8")

    def unit_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """The weights of one intervention (AdapterHub's names). An orthogonal R is stored as torch's
        parametrization stores it: ``original`` (r×hidden) and the frozen ``base`` (hidden×hidden)."""
        shapes: dict[str, tuple[int, ...]] = {"learned_source.weight": (self.r, hidden_size),
                                              "learned_source.bias": (self.r,)}
        if self.orthogonality:
            shapes["projection.parametrizations.weight.original"] = (self.r, hidden_size)
            shapes["projection.parametrizations.weight.0.base"] = (hidden_size, hidden_size)
        else:
            shapes["projection.weight"] = (self.r, hidden_size)
        return shapes

    def weight_shapes(self, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        """Every stored tensor's name and shape, from the configuration alone (``reft.<layer>.units.<u>.*``)."""
        return {f"reft.{i}.units.{u}.{k}": v for i in self.layer_indices(num_layers) for u in range(self.units)
                for k, v in self.unit_shapes(hidden_size).items()}

    def parameter_count(self, hidden_size: int, num_layers: int) -> dict[str, Any]:
        """Trained parameters per layer and in total, as AdapterHub counts them; the bytes are what a file
        holds, which for LoReFT includes the frozen hidden×hidden ``base`` of every orthogonal R."""
        self.check_rank(hidden_size)
        per_unit = 2 * self.r * hidden_size + self.r
        layers = self.layer_indices(num_layers)
        total = per_unit * self.units * len(layers)
        stored = sum(math.prod(s) for s in self.weight_shapes(hidden_size, num_layers).values())
        placement = {"location": "output", "layers": layers, "widths": [self.r] * len(layers), "parameters": total}
        return {"placements": [placement], "parameters": total, "trainable_parameters": total,
                "bytes_fp32": stored * 4, "bytes_fp16": stored * 2}
