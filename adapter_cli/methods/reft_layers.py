"""ReFT modules (torch): one intervention, the interventions of one layer, and the set of them for one adapter.

The numerics are AdapterHub's (``adapters`` 1.3.0, ``methods/reft.py``), operation for operation: see
``reft`` for the formulas and docs/numerics.md for the parity figures. Which positions a layer edits is
decided by ``reft_sites`` (from the attention mask); ``ReftModule.forward`` gathers those states, runs the
interventions and scatters the results back, as the reference does.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .activations import activation
from .reft import ReftConfig

_HALF = (torch.float16, torch.bfloat16)


class ReftUnit(nn.Module):
    """One intervention: ``dropout(h + Rᵀ(act(W h + b) − R h))`` (without ``− R h`` for DiReFT)."""

    def __init__(self, config: ReftConfig, hidden_size: int) -> None:
        super().__init__()
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.orthogonal = config.orthogonality
        self.subtract_projection = config.subtract_projection
        # Created in AdapterHub's order (W and b, then R, then the orthogonal completion of R), so that a
        # seeded initialisation draws the same numbers as the reference (see ReftAdapterSet).
        self.learned_source = nn.Linear(hidden_size, config.r, bias=True, dtype=dtype)
        projection = nn.Linear(hidden_size, config.r, bias=False, dtype=dtype)
        self.projection = nn.utils.parametrizations.orthogonal(projection) if self.orthogonal else projection
        name = config.non_linearity
        self.non_linearity: Callable[[torch.Tensor], torch.Tensor] | None = activation(name) if name else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.projection.weight  # R; an orthogonal one is recomputed from its parametrization here
        source = self.learned_source(x.to(self.learned_source.weight.dtype))
        if self.non_linearity is not None:
            source = self.non_linearity(source)
        source = source.to(x.dtype)
        if self.subtract_projection:
            source = source - nn.functional.linear(x, weight.to(x.dtype))
        return self.dropout(x + torch.matmul(source, weight.to(x.dtype)))

    def _apply(self, fn: Any, recurse: bool = True) -> ReftUnit:
        """An orthogonal R stays in float32 when the model is cast to half precision: torch's orthogonal
        parametrization (Householder products) has no half-precision kernels, and AdapterHub keeps that
        projection in float32 for the same reason. Devices still move."""
        if not (self.orthogonal and recurse):
            return super()._apply(fn, recurse)
        self.learned_source._apply(fn)

        def keep_wide(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return t.to(device=moved.device) if moved.dtype in _HALF and t.dtype not in _HALF else moved

        self.projection._apply(keep_wide)
        return self


class ReftModule(nn.Module):
    """The interventions of one layer: one shared by prefix and suffix (``tied_weights``), else one each."""

    def __init__(self, config: ReftConfig, hidden_size: int) -> None:
        super().__init__()
        self.prefix_positions = config.prefix_positions
        self.suffix_positions = config.suffix_positions
        self.tied_weights = config.tied_weights
        seed = config.init_weights_seed
        # AdapterHub reseeds torch's global generator before each intervention, so that all start from the
        # same weights; we draw the same numbers in a forked generator state, leaving the caller's alone.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            units = []
            for _ in range(config.units):
                if seed is not None:
                    torch.manual_seed(seed)
                units.append(ReftUnit(config, hidden_size))
        self.units = nn.ModuleList(units)

    def forward(self, hidden: torch.Tensor, prefix_index: torch.Tensor | None,
                suffix_index: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` [B, T, H] with the states at the given positions (gather indices [B, k, H]) edited."""
        empty = hidden.new_zeros(hidden.shape[0], 0, hidden.shape[2])
        prefix = hidden.gather(1, prefix_index) if prefix_index is not None else empty
        suffix = hidden.gather(1, suffix_index) if suffix_index is not None else empty
        states = [torch.cat([prefix, suffix], dim=1)] if self.tied_weights else [prefix, suffix]
        adapted = torch.cat([unit(s) for unit, s in zip(self.units, states)], dim=1).to(hidden.dtype)
        # AdapterHub slices by the configured counts, not by the (possibly clamped) number of positions;
        # scatter reads only as many source rows as the index has, which gives the rows it uses.
        if prefix_index is not None:
            hidden = torch.scatter(hidden, 1, prefix_index, adapted[:, :self.prefix_positions, :])
        if suffix_index is not None:
            hidden = torch.scatter(hidden, 1, suffix_index, adapted[:, -self.suffix_positions:, :])
        return hidden


class ReftAdapterSet(nn.Module):
    """Every layer's interventions for one adapter; state-dict keys are ``reft.<layer>.units.<u>.<param>``
    (our format; AdapterHub's names follow the same tree below ``reft_layer.refts.<name>``)."""

    def __init__(self, config: ReftConfig, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        config.check_rank(hidden_size)
        self.reft = nn.ModuleDict({str(i): ReftModule(config, hidden_size)
                                   for i in config.layer_indices(num_layers)})

    def sites(self) -> list[tuple[str, int, ReftModule]]:
        return [("reft", int(i), m) for i, m in self.reft.items()]
