"""LoRA-family modules (torch): what one changed linear layer adds, and the set of them for one adapter.

The numerics are AdapterHub's (``adapters`` 1.3.0, ``methods/lora.py``); see ``lora`` for the formulas and
docs/numerics.md for the parity figures. A module computes the adapter's ``hidden`` term from the layer input
``x`` (and, inside a stack, from the previous member's ``hidden``); ``close`` combines it with the frozen
layer's output ``y = W x + b``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .lora import LoRAConfig


def _dtype(config: LoRAConfig) -> torch.dtype | None:
    return getattr(torch, config.dtype) if config.dtype else None


class SharedProjections(nn.Module):
    """VeRA's frozen random A (r×in) and B (out×r), shared by every layer of one adapter."""

    def __init__(self, config: LoRAConfig, fan_in: int, fan_out: int, generator: torch.Generator | None) -> None:
        super().__init__()
        dtype = _dtype(config)
        self.lora_A = nn.Parameter(torch.zeros(config.r, fan_in, dtype=dtype), requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(fan_out, config.r, dtype=dtype), requires_grad=False)
        _init_pair(self.lora_A, self.lora_B, config.init_weights, generator)


@torch.no_grad()
def _init_pair(a: torch.Tensor, b: torch.Tensor, scheme: str, generator: torch.Generator | None) -> None:
    if scheme == "lora":  # A as nn.Linear initialises its weight, B zero: the adapter starts as the identity
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        b.zero_()
    elif scheme == "bert":
        a.normal_(0.0, 0.02, generator=generator)
        b.normal_(0.0, 0.02, generator=generator)
    elif scheme == "ia3":
        a.fill_(1.0)
        b.fill_(1.0)
    else:  # "vera"
        nn.init.kaiming_uniform_(a, generator=generator)
        nn.init.kaiming_uniform_(b, generator=generator)


class LinearDelta(nn.Module):
    """One adapter on one linear layer (in -> out)."""

    def __init__(self, config: LoRAConfig, fan_in: int, fan_out: int, frozen_weight: torch.Tensor | None = None,
                 shared: SharedProjections | None = None, generator: torch.Generator | None = None,
                 scales_input: bool = False) -> None:
        super().__init__()
        self.config = config
        self.scale_mode = config.composition_mode == "scale"
        self.scales_input = scales_input  # PEFT's (IA)³ on a feed-forward layer: y = W (x ⊙ l) + b
        if scales_input:
            fan_out = fan_in
        # VeRA's shared projections belong to the adapter set; a tuple keeps them out of this state dict.
        self._shared = (shared,) if shared is not None else ()
        dtype = _dtype(config)
        self.lora_A = self.lora_B = self.vera_D = self.vera_B = None
        if self.scale_mode:
            self.lora_B = nn.Parameter(torch.zeros(fan_out, 1, dtype=dtype))
            with torch.no_grad():
                scheme = config.init_weights
                self.lora_B.fill_(1.0) if scheme == "ia3" else self.lora_B.zero_() if scheme == "lora" \
                    else self.lora_B.normal_(0.0, 0.02, generator=generator)
        elif config.is_vera:
            self.vera_D = nn.Parameter(torch.eye(config.r, dtype=dtype) * (config.vera_d or 0.0))
            self.vera_B = nn.Parameter(torch.eye(fan_out, dtype=dtype) * (config.vera_b or 0.0))
        else:
            self.lora_A = nn.Parameter(torch.zeros(config.r, fan_in, dtype=dtype))
            self.lora_B = nn.Parameter(torch.zeros(fan_out, config.r, dtype=dtype))
            _init_pair(self.lora_A, self.lora_B, config.init_weights, generator)
        self.scaling = config.alpha if self.scale_mode else config.alpha / config.r
        self.m = None
        if config.use_dora:  # the magnitude starts as the row norms of the frozen weight
            assert frozen_weight is not None
            self.m = nn.Linear(1, fan_out, bias=False, dtype=dtype)
            with torch.no_grad():
                self.m.weight.copy_(torch.linalg.norm(frozen_weight.float(), dim=1).unsqueeze(1))
        self.gate = None
        if config.use_gating:
            self.gate = nn.Linear(fan_in, 1)
            with torch.no_grad():
                self.gate.weight.normal_(0.0, 0.02, generator=generator)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # Set by LoRAAdapterSet on a part of a fused projection (GPT-2's c_attn): the parts' deltas and this
        # one's index, in a tuple so that they stay out of this module's state dict.
        self._fused: tuple[tuple[LinearDelta, ...], int] | tuple[()] = ()

    def delta_w(self) -> torch.Tensor:
        """The change to the weight matrix (out×in) before scaling; (IA)³: the scaling vector (out×1)."""
        if self.scale_mode:
            return self.lora_B
        if self.vera_D is not None:
            shared = self._shared[0]
            return self.vera_B @ shared.lora_B @ self.vera_D @ shared.lora_A
        return self.lora_B @ self.lora_A

    def forward(self, hidden: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """The adapter's term; ``hidden`` is the previous stack member's term (None for the first)."""
        own = self.lora_B if self.lora_B is not None else self.vera_D
        if own.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            from ..errors import UsageError

            raise UsageError(f"this LoRA-family adapter computes in {str(own.dtype).removeprefix('torch.')} (its "
                             f"dtype) but the model runs in {str(x.dtype).removeprefix('torch.')}; run the model in "
                             "that precision (or under autocast to it), or give the adapter no dtype")
        if self.scale_mode:
            vector = self.lora_B.view(1, 1, -1).repeat(x.shape[0], 1, 1)
            out = vector if hidden is None else hidden * vector
        elif self._fused and hidden is None and self.vera_D is None:
            out = self._fused_term(self.dropout(x))
        else:
            source = self.dropout(x if hidden is None else hidden)
            if self.vera_D is not None:
                out = source @ torch.t(self.delta_w())
            else:
                out = source @ torch.t(self.lora_A) @ torch.t(self.lora_B)
        if self.gate is not None:  # the gate replaces the alpha / r scaling
            return out * torch.mean(torch.sigmoid(self.gate(x)), dim=1).unsqueeze(-1)
        return out * self.scaling

    def _fused_term(self, source: torch.Tensor) -> torch.Tensor:
        """This part's term computed as AdapterHub's ``LoRAMergedLinear`` computes all parts at once (one
        product with every part's A, then a grouped 1x1 convolution with their B), and its share taken: the
        same numbers bit for bit, where a product per part rounds differently. The other parts' work is
        repeated; at a LoRA's rank it costs little."""
        group, index = self._fused
        after_a = nn.functional.linear(source, torch.cat([d.lora_A for d in group]))
        kernels = torch.cat([d.lora_B for d in group]).unsqueeze(-1)
        after_b = nn.functional.conv1d(after_a.transpose(-2, -1), kernels, groups=len(group)).transpose(-2, -1)
        width = self.lora_B.shape[0]
        return after_b[..., index * width:(index + 1) * width]

    def close(self, output: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              x: torch.Tensor) -> torch.Tensor:
        """The changed layer's output from the frozen one's (``W x + b``), its input and the composed term."""
        if self.scales_input:
            return nn.functional.linear(x * hidden, weight, bias)
        if self.scale_mode:
            return output * hidden
        if self.m is None:
            return output + hidden
        if self.config.dora_style == "peft":  # PEFT: the norm of the scaled update; the bias is not rescaled
            norm = torch.linalg.norm(weight + self.scaling * self.delta_w(), dim=1).detach()
            plain = output - bias if bias is not None else output
            gained = self.m.weight.view(-1) / norm * (plain + hidden)
            return gained + bias if bias is not None else gained
        norm = torch.linalg.norm(weight + self.delta_w(), dim=1)  # AdapterHub: unscaled, bias rescaled too
        return self.m.weight.view(-1) / norm * (output + hidden)


class LoRAAdapterSet(nn.Module):
    """Every changed linear layer of one adapter; state-dict keys are ``<matrix>.<layer>.<param>`` (and
    ``shared.lora_A/B`` for VeRA), our format."""

    def __init__(self, config: LoRAConfig, num_layers: int, linear: Callable[[str, int], nn.Linear],
                 encoder_layers: int | None = None) -> None:
        """``encoder_layers``: an encoder-decoder's encoder depth (its decoder layers' cross-attention changes
        too)."""
        super().__init__()
        self.config = config
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        layers = config.layers(num_layers)
        placed = config.placed(num_layers, encoder_layers)
        self._matrices = tuple(m for m, _ in placed)
        self.shared = None
        if config.is_vera:
            first = linear(config.matrices[0], layers[0])
            for matrix, where in placed[1:]:  # one A and one B serve every changed layer: one shape for all
                other = linear(matrix, where[0])
                if (other.in_features, other.out_features) != (first.in_features, first.out_features):
                    raise ConfigError(f"VeRA shares one random projection pair among the layers it changes, but "
                                      f"{matrix} maps {other.in_features} to {other.out_features} features and "
                                      f"{config.matrices[0]} {first.in_features} to {first.out_features} (e.g. "
                                      "grouped-query keys and values); change layers of one shape only")
            self.shared = SharedProjections(config, first.in_features, first.out_features, generator)
        for matrix, where in placed:
            modules = {}
            for i in where:
                target = linear(matrix, i)
                modules[str(i)] = LinearDelta(config, target.in_features, target.out_features,
                                              target.weight if config.use_dora else None, self.shared, generator,
                                              scales_input=matrix in config.scaled_inputs)
            self.add_module(matrix, nn.ModuleDict(modules))
        self._link_fused(linear, layers)

    def _link_fused(self, linear: Callable[[str, int], Any], layers: list[int]) -> None:
        """Tell the parts of one fused projection (views of one module) about each other, in its order."""
        for i in layers:
            groups: dict[int, list[tuple[int, LinearDelta]]] = {}
            for matrix in self.config.matrices:
                target = linear(matrix, i)
                if getattr(target, "parts", 1) > 1:
                    groups.setdefault(id(target.module), []).append((target.part, getattr(self, matrix)[str(i)]))
            for members in groups.values():
                deltas = tuple(d for _, d in sorted(members, key=lambda m: m[0]))
                for index, delta in enumerate(deltas):
                    delta._fused = (deltas, index)

    def sites(self) -> list[tuple[str, int, LinearDelta]]:
        return [(matrix, int(i), m) for matrix in self._matrices for i, m in getattr(self, matrix).items()]

    def requires_grad_(self, requires_grad: bool = True) -> LoRAAdapterSet:
        super().requires_grad_(requires_grad)
        if self.shared is not None:  # VeRA's projections stay frozen: only D and Λ are trained
            self.shared.requires_grad_(False)
        return self
