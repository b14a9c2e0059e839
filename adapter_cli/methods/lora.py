"""The low-rank and scaling family: LoRA (Hu et al. 2021), (IA)³ (Liu et al. 2022), DoRA (Liu et al. 2024) and
VeRA (Kopiczko et al. 2024), configured as AdapterHub's ``LoRAConfig`` so its ``adapter_config.json`` maps onto
this class key for key.

Unlike a bottleneck adapter, which adds a module after a sub-layer, these methods change what a linear layer
of the base model computes (``y = W x + b``):

* LoRA, ``composition_mode: add``:  ``y + (alpha / r) · dropout(x) Aᵀ Bᵀ`` (A: r×in, B: out×r);
* (IA)³, ``composition_mode: scale``: ``y ⊙ (alpha · l)`` with one vector ``l`` (out) per linear layer;
* DoRA, ``use_dora``: the LoRA output rescaled per output feature by ``m / ‖W + B A‖`` (a learned magnitude);
* VeRA, ``vera_d`` / ``vera_b`` set: A and B frozen, random and shared by all layers; trained are the
  matrices D (r×r, initialised to ``vera_d``·I) and Λ (out×out, ``vera_b``·I): ``Λ B D A`` replaces ``B A``.

Which linear layers: the self-attention projections named in ``attn_matrices`` (q, k, v) when
``selfattn_lora``, the feed-forward up-projection when ``intermediate_lora``, its down-projection when
``output_lora``; every layer but those in ``leave_out``. In an encoder-decoder's decoder layers the attention
matrices chosen are changed in the cross-attention too (``cross_q`` ...), as AdapterHub wraps every attention
module alike. The configuration is torch-free (``adapt add
--hidden-size`` counts parameters without a model); the modules live in ``lora_layers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, suggest
from .base import MethodConfig

ATTENTION_MATRICES = ("q", "k", "v")
MATRICES = ATTENTION_MATRICES + ("intermediate", "output")  # every linear layer a config can name
CROSS = "cross_"  # the prefix of a decoder layer's cross-attention matrices: cross_q, cross_k, cross_v
COMPOSITION_MODES = ("add", "scale")
INIT_SCHEMES = ("lora", "bert", "ia3", "vera")
DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """One LoRA-family configuration; the defaults are AdapterHub's ``lora`` preset."""

    architecture: ClassVar[str] = "lora"

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: tuple[int, ...] = ()
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    attn_matrices: tuple[str, ...] = ("q", "v")
    composition_mode: str = "add"
    init_weights: str = "lora"
    init_weights_seed: int | None = None
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None
    kind: str = "task"  # metadata only, as for bottleneck adapters
    # Two variants PEFT computes differently from AdapterHub, so that PEFT adapters load exactly (not
    # AdapterHub fields; its format cannot express them). dora_style "peft": the magnitude rescales
    # ``W x + s·B A x`` with the norm of ``W + s·B A`` and leaves the bias alone. scaled_inputs: the
    # matrices whose (IA)³ vector scales the layer's input instead of its output (PEFT's feedforward_modules).
    dora_style: str = "adapters"
    scaled_inputs: tuple[str, ...] = ()

    # ---------------------------------------------------------------- construction and validation
    @classmethod
    def _normalize(cls, data: dict[str, Any], source: str) -> None:
        for key in ("leave_out", "attn_matrices", "scaled_inputs"):
            if key in data:
                value = data[key] if data[key] is not None else ()
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"{source}: {key} must be a list, got {data[key]!r}")
                data[key] = tuple(value)
        for key in ("alpha", "vera_d", "vera_b"):  # AdapterHub writes ints here as often as floats
            if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
                data[key] = float(data[key])

    def replace(self, **changes: Any) -> LoRAConfig:
        return LoRAConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        self._check_bools(bad, ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora"))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise bad(f"the rank r must be a whole number of at least 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, float) or not math.isfinite(self.alpha) \
                or self.alpha == 0:
            raise bad(f"alpha must be a non-zero number, got {self.alpha!r}")
        self._check_fractions(bad, ("dropout",))
        unknown = [m for m in self.attn_matrices if m not in ATTENTION_MATRICES]
        if unknown:
            raise bad(f"attn_matrices names {unknown[0]!r}, which is not an attention matrix"
                      f"{suggest(str(unknown[0]), ATTENTION_MATRICES)}; choose from q, k, v")
        if len(set(self.attn_matrices)) != len(self.attn_matrices):
            raise bad(f"attn_matrices names a matrix twice: {list(self.attn_matrices)}")
        if not self.matrices:
            raise bad("the adapter changes no linear layer: set selfattn_lora (with attn_matrices), "
                      "intermediate_lora or output_lora")
        if self.composition_mode not in COMPOSITION_MODES:
            raise bad(f"composition_mode must be 'add' (LoRA) or 'scale' ((IA)³), got {self.composition_mode!r}")
        if self.init_weights not in INIT_SCHEMES:
            raise bad(f"unknown init_weights {self.init_weights!r}{suggest(str(self.init_weights), INIT_SCHEMES)};"
                      f" choose from {', '.join(INIT_SCHEMES)}")
        self._check_seed(bad)
        for key in ("vera_d", "vera_b"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, float) or not math.isfinite(value)):
                raise bad(f"{key} must be a number or null, got {value!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad(f"dtype must be one of {', '.join(DTYPES)} or null, got {self.dtype!r}")
        if self.dora_style not in ("adapters", "peft"):
            raise bad(f"dora_style must be 'adapters' or 'peft', got {self.dora_style!r}")
        stray = [m for m in self.scaled_inputs if m not in self.matrices]
        if stray or (self.scaled_inputs and self.composition_mode != "scale"):
            raise bad("scaled_inputs names (IA)³ matrices the adapter changes (composition_mode 'scale'), "
                      f"got {list(self.scaled_inputs)}")
        self._check_kind_and_leave_out(bad)
        self._validate_mode(bad)

    def _validate_mode(self, bad: Any) -> None:
        """The combinations AdapterHub's modules refuse, refused here before any weight is made."""
        if self.composition_mode == "scale":
            if self.r != 1:
                raise bad(f"composition_mode 'scale' ((IA)³) learns one vector per layer and needs r: 1, got {self.r}")
            if self.dropout:
                raise bad("composition_mode 'scale' ((IA)³) does not take dropout; set dropout: 0")
            if self.use_dora or self.is_vera:
                raise bad("composition_mode 'scale' ((IA)³) cannot be combined with DoRA or VeRA")
            if self.init_weights == "vera":
                raise bad("init_weights 'vera' is for VeRA; (IA)³ takes 'ia3', 'lora' or 'bert'")
        if self.is_vera and (self.intermediate_lora or self.output_lora):
            raise bad("VeRA shares one frozen A and B across all layers, so it can only change the square "
                      "self-attention matrices; set intermediate_lora and output_lora to false")

    # ---------------------------------------------------------------- shape
    @property
    def is_vera(self) -> bool:
        return self.vera_d is not None or self.vera_b is not None

    @property
    def variant(self) -> str:
        """The family member: lora, ia3, dora, vera or dvora (VeRA with DoRA)."""
        if self.composition_mode == "scale":
            return "ia3"
        if self.is_vera:
            return "dvora" if self.use_dora else "vera"
        return "dora" if self.use_dora else "lora"

    @property
    def matrices(self) -> tuple[str, ...]:
        """The linear layers changed in every layer, in AdapterHub's order."""
        chosen = [m for m in ATTENTION_MATRICES if self.selfattn_lora and m in self.attn_matrices]
        return tuple(chosen + [m for m, on in (("intermediate", self.intermediate_lora),
                                                ("output", self.output_lora)) if on])

    def layer_matrices(self, decoder: bool) -> tuple[str, ...]:
        """The linear layers changed in one layer; ``decoder``: an encoder-decoder's decoder layer, whose
        cross-attention matrices change along with the self-attention's."""
        cross = [CROSS + m for m in self.matrices if m in ATTENTION_MATRICES] if decoder else []
        return (*self.matrices, *cross)

    def placed(self, num_layers: int, encoder_layers: int | None) -> list[tuple[str, list[int]]]:
        """(matrix, the layers it is changed in): the cross-attention's in the decoder's layers only."""
        layers = self.layers(num_layers)
        out = [(m, layers) for m in self.matrices]
        if encoder_layers is not None:
            decoder = [i for i in layers if i >= encoder_layers]
            out += [(m, decoder) for m in self.layer_matrices(True)[len(self.matrices):] if decoder]
        return out

    def check_rank(self, hidden_size: int) -> None:
        """A rank above the hidden size is no longer low-rank: almost surely a typo (r=768 for r=8)."""
        if self.composition_mode == "add" and self.r > hidden_size:
            raise ConfigError(f"the rank r {self.r} is larger than the hidden size {hidden_size}; a LoRA rank is "
                              "usually 4 to 64")

    @staticmethod
    def linear_shape(matrix: str, hidden_size: int, intermediate_size: int) -> tuple[int, int]:
        """(in_features, out_features) of a linear layer of a BERT-like encoder."""
        return {"intermediate": (hidden_size, intermediate_size),
                "output": (intermediate_size, hidden_size)}.get(matrix, (hidden_size, hidden_size))

    def site_shapes(self, fan_in: int, fan_out: int) -> dict[str, tuple[int, ...]]:
        """The weights of one changed linear layer (AdapterHub's parameter names)."""
        r, shapes = self.r, {}
        if self.composition_mode == "scale":
            shapes["lora_B"] = (fan_out, 1)  # scaled_inputs: (fan_in, 1), see weight_shapes
        elif self.is_vera:
            shapes.update(vera_D=(r, r), vera_B=(fan_out, fan_out))
        else:
            shapes.update(lora_A=(r, fan_in), lora_B=(fan_out, r))
        if self.use_dora:
            shapes["m.weight"] = (fan_out, 1)
        if self.use_gating:
            shapes.update({"gate.weight": (1, fan_in), "gate.bias": (1,)})
        return shapes

    def shared_shapes(self, fan_in: int, fan_out: int) -> dict[str, tuple[int, ...]]:
        """VeRA's frozen random projections, shared by every layer (stored with the adapter), shaped as the
        changed layers are (all alike; T5's attention may be wider than its hidden size)."""
        if not self.is_vera:
            return {}
        return {"shared.lora_A": (self.r, fan_in), "shared.lora_B": (fan_out, self.r)}

    def _fans(self, matrix: str, hidden_size: int, inner: int,
              linear_shapes: dict[str, tuple[int, int]] | None) -> tuple[int, int]:
        """(in, out) of ``matrix``'s weights; a cross-attention matrix is shaped as its self-attention twin
        unless ``linear_shapes`` says otherwise."""
        own = (linear_shapes or {}).get(matrix) or (linear_shapes or {}).get(matrix.removeprefix(CROSS))
        fan_in, fan_out = own or self.linear_shape(matrix.removeprefix(CROSS), hidden_size, inner)
        return (fan_in, fan_in) if matrix in self.scaled_inputs else (fan_in, fan_out)

    def _shapes(self, hidden_size: int, num_layers: int, intermediate_size: int | None,
                linear_shapes: dict[str, tuple[int, int]] | None, encoder_layers: int | None
                ) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, list[int], dict[str, tuple[int, ...]]]]]:
        """The shared tensors' shapes (VeRA's projections) and, per changed matrix, its layers and the shapes
        of one layer's tensors."""
        inner = intermediate_size or 4 * hidden_size
        shared = self.shared_shapes(*self._fans(self.matrices[0], hidden_size, inner, linear_shapes))
        return shared, [(matrix, layers, self.site_shapes(*self._fans(matrix, hidden_size, inner, linear_shapes)))
                        for matrix, layers in self.placed(num_layers, encoder_layers)]

    def weight_shapes(self, hidden_size: int, num_layers: int, intermediate_size: int | None = None,
                      linear_shapes: dict[str, tuple[int, int]] | None = None,
                      encoder_layers: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, from the configuration alone (``matrix.layer.parameter``); a family
        whose linear layers are not BERT's (a decoder's grouped-query keys and values) gives their (in, out)
        in ``linear_shapes``; an encoder-decoder its ``encoder_layers`` (its decoder's cross-attention)."""
        shared, sites = self._shapes(hidden_size, num_layers, intermediate_size, linear_shapes, encoder_layers)
        out = dict(shared)
        for matrix, layers, shapes in sites:
            for i in layers:
                out.update({f"{matrix}.{i}.{k}": v for k, v in shapes.items()})
        return out

    def parameter_count(self, hidden_size: int, num_layers: int, intermediate_size: int | None = None,
                        linear_shapes: dict[str, tuple[int, int]] | None = None,
                        encoder_layers: int | None = None) -> dict[str, Any]:
        """Parameters per changed linear layer kind and in total (VeRA's frozen shared projections count in
        the total, as AdapterHub counts them, and not in ``trainable_parameters``). ``linear_shapes`` and
        ``encoder_layers``: as for ``weight_shapes``."""
        self.check_rank(hidden_size)
        shared, sites = self._shapes(hidden_size, num_layers, intermediate_size, linear_shapes, encoder_layers)
        placements = [{"location": matrix, "layers": layers, "widths": [self.r] * len(layers),
                       "parameters": sum(math.prod(s) for s in shapes.values()) * len(layers)}
                      for matrix, layers, shapes in sites]
        trained = sum(p["parameters"] for p in placements)
        total = trained + sum(math.prod(s) for s in shared.values())  # what the adapter stores, as AdapterHub counts it
        return {"placements": placements, "parameters": total, "trainable_parameters": trained,
                "bytes_fp32": total * 4, "bytes_fp16": total * 2}
