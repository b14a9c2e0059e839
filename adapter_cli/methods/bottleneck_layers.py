"""Bottleneck adapter layers (torch): the modules built from a ``BottleneckConfig``.

See ``bottleneck`` for the numerics; ``bottleneck`` re-exports these names lazily.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .activations import activation
from .bottleneck import BottleneckConfig
from .invertible_layers import invertible_layer
from .phm_layers import PHMLinear, PHMShared, freeze_rules


class BottleneckAdapter(nn.Module):
    """One sequential bottleneck adapter at one site (one layer, one placement)."""

    def __init__(self, config: BottleneckConfig, hidden_size: int, width: int,
                 generator: torch.Generator | None = None, shared: PHMShared | None = None) -> None:
        super().__init__()
        self.config = config
        self.norm_before = nn.LayerNorm(hidden_size) if config.ln_before else None
        self.down: nn.Module
        self.up: nn.Module
        if config.phm_layer:  # Compacter: PHM projections that initialise themselves (``_init`` skips them)
            self.down = PHMLinear(config, hidden_size, width, "down", shared, generator)
            self.up = PHMLinear(config, width, hidden_size, "up", shared, generator)
        else:
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
        linears = [m for m in (self.down, self.up, self.gate) if isinstance(m, nn.Linear)]
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

    def _gated(self, out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``out`` scaled by the learned gate (the mean over the sequence of sigmoid(gate(a))), if any."""
        if self.gate is None:
            return out
        return out * torch.sigmoid(self.gate(a)).mean(dim=1, keepdim=True)

    def forward(self, a: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.bottleneck(a)
        out = self._gated(self.dropout(up), a)
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
        out = self._gated(self.dropout(up), a)
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

    def __init__(self, config: BottleneckConfig, hidden_size: int, num_layers: int,
                 embedding_size: int | None = None, encoder_layers: int | None = None) -> None:
        super().__init__()
        self.config = config
        bad = [i for i in config.leave_out if i >= num_layers]
        if bad:
            raise ConfigError(f"leave_out names layers {bad} but the model has {num_layers} layers (0..{num_layers - 1})")
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        cls = ParallelBottleneckAdapter if config.is_parallel else BottleneckAdapter
        self.shared = None  # Compacter's shared PHM parameters (``shared.<name>``), created before the layers
        if config.shared_shapes(hidden_size):
            width = config.width(0, hidden_size) if config.shared_W_phm else 0
            self.shared = PHMShared(config, hidden_size, width, generator)
        for loc in config.locations:
            sites = nn.ModuleDict({str(i): cls(config, hidden_size, config.width(i, hidden_size), generator,
                                               self.shared)
                                   for i in config.site_layers(loc, num_layers, encoder_layers)})
            self.add_module(loc, sites)
        # MAD-X: the invertible layer (``invertible.<param>``) on the embeddings' output, which is
        # ``embedding_size`` wide (ELECTRA's is narrower than its hidden size); the model attaches it there.
        self.invertible = invertible_layer(config, embedding_size or hidden_size, generator)

    def requires_grad_(self, requires_grad: bool = True) -> BottleneckAdapterSet:
        super().requires_grad_(requires_grad)
        if self.config.phm_layer and not self.config.learn_phm:
            freeze_rules(self)
        return self

    def site(self, location: str, layer: int) -> BottleneckAdapter | None:
        sites = getattr(self, location, None)
        if sites is None:
            return None
        return sites[str(layer)] if str(layer) in sites else None

    def sites(self) -> list[tuple[str, int, BottleneckAdapter]]:
        return [(loc, int(i), m) for loc in self.config.locations for i, m in getattr(self, loc).items()]
