"""AdapterFusion (Pfeiffer et al. 2021): per layer, attention over the outputs of N frozen adapters.

Numerics equal AdapterHub's ``BertFusion`` (no 1/sqrt(H) scaling, dropout on the logits). The forward
pass is restructured algebraically, which is exact up to fp32 rounding:

* scores ``(W_q q + b_q) . (W_k u_i + b_k)`` are computed as ``(W_k^T Q) . u_i + Q . b_k``: the key
  projection is applied once to the query instead of N times to the adapter outputs;
* the value projection has no bias, so ``sum_i p_i W_v u_i = W_v sum_i p_i u_i``: one projection after
  the weighted sum instead of N before it.

Which one runs is ``FusionLayer.restructured``: by default the restructured form (2N fewer H x H
products per token; docs/performance.md). ``ADAPT_REFERENCE_ORDER=1`` evaluates in AdapterHub's order
instead, so outputs match the reference library bit for bit on the same machine; the restructured form
is exact up to fp32 rounding, which ill-conditioned fusions (near-tied scores of large magnitude) amplify
(docs/numerics.md measures it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .fastpaths import ENABLED as FAST_PATHS
from .errors import ConfigError
from .fusion_config import FusionConfig


class FusionLayer(nn.Module):
    """Fusion at one site. ``forward(query, ups, residual)`` with ``ups`` a list of N tensors [B, T, H]."""

    restructured: bool = FAST_PATHS  # see the module docstring

    def __init__(self, config: FusionConfig, hidden_size: int, attention_dropout: float,
                 initializer_range: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout_prob if config.dropout_prob is not None else attention_dropout)
        self.query = nn.Linear(hidden_size, hidden_size) if config.query else None
        self.key = nn.Linear(hidden_size, hidden_size) if config.key else None
        self.value = nn.Linear(hidden_size, hidden_size, bias=False) if config.value else None
        with torch.no_grad():
            for lin in (self.query, self.key, self.value):
                if lin is not None:
                    lin.weight.normal_(0.0, initializer_range)
                    if lin.bias is not None:
                        lin.bias.zero_()
            if self.value is not None and config.value_initialized:
                # identity plus a tiny off-diagonal constant, as AdapterHub does
                self.value.weight.fill_(1e-6)
                self.value.weight.fill_diagonal_(1.0)
        # Temperature annealing (50 -> 1 in steps of 0.05). AdapterHub anneals on every call, eval
        # included; we anneal only in training mode so inference is deterministic.
        self.temperature = 50.0 if config.temperature else 1.0
        self._temperature_step = self.temperature / 1000.0
        self.last_attention: torch.Tensor | None = None
        self.keep_attention = False

    def _stack(self, ups: list[torch.Tensor] | torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # [B, T, N, H]: given as such by the stacked fast path, or a permuted view of [N, B, T, H] (the
        # layout AdapterHub's kernels see) when the members ran one by one.
        u = ups if isinstance(ups, torch.Tensor) else torch.stack(ups).permute(1, 2, 0, 3)
        if self.config.residual_before:
            u = u + residual.unsqueeze(2)
        return u

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        scores = self.dropout(scores)
        probs = torch.softmax(scores / self.temperature, dim=-1)
        if self.training and self.temperature > 1.0:
            self.temperature = max(self.temperature - self._temperature_step, 1.0)
        if self.keep_attention:
            self.last_attention = probs.detach()
        return probs

    def forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                residual: torch.Tensor) -> torch.Tensor:
        if self.restructured:
            return self.restructured_forward(query, ups, residual)
        return self.reference_forward(query, ups, residual)

    def restructured_forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                             residual: torch.Tensor) -> torch.Tensor:
        u = self._stack(ups, residual)
        q = self.query(query) if self.query is not None else query
        if self.key is not None:
            qk = q @ self.key.weight  # W_k^T q, [B, T, H]
            scores = torch.einsum("bth,btnh->btn", qk, u) + (q * self.key.bias).sum(-1, keepdim=True)
        else:
            scores = torch.einsum("bth,btnh->btn", q, u)
        probs = self._softmax(scores)
        context = torch.einsum("btn,btnh->bth", probs, u)
        if self.value is not None:
            context = self.value(context)
        if not self.config.residual_before:
            context = context + residual
        return context

    def reference_forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                          residual: torch.Tensor) -> torch.Tensor:
        """AdapterHub's formulation, term by term (for tests of the restructured forward)."""
        u = self._stack(ups, residual)
        q = self.query(query) if self.query is not None else query
        k = self.key(u) if self.key is not None else u
        v = self.value(u) if (self.value is not None and self.config.value_before_softmax) else u
        scores = torch.squeeze(torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)), dim=2)
        probs = self._softmax(scores)
        context = torch.squeeze(torch.matmul(probs.unsqueeze(2), v), dim=2)
        if self.value is not None and not self.config.value_before_softmax:
            context = self.value(context)
        if not self.config.residual_before:
            context = context + residual
        return context


class FusionSet(nn.Module):
    """All sites of one fusion. State-dict keys are ``<location>.<layer>.<query|key|value>.<param>``.

    Like AdapterHub, a fusion layer exists in every layer of each placement that all members share,
    including layers the members leave out, so AdapterHub's fusion files load key for key.
    """

    def __init__(self, config: FusionConfig, adapters: list[str], locations: list[str], hidden_size: int,
                 num_layers: int, attention_dropout: float, initializer_range: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.adapters = list(adapters)
        for loc in locations:
            self.add_module(loc, nn.ModuleDict({
                str(i): FusionLayer(config, hidden_size, attention_dropout, initializer_range)
                for i in range(num_layers)
            }))
        self.locations = list(locations)

    def sites(self) -> list[tuple[str, int, FusionLayer]]:
        return [(loc, int(i), m) for loc in self.locations for i, m in getattr(self, loc).items()]


def common_locations(configs: dict[str, Any]) -> list[str]:
    """Placements where a fusion over these adapters can sit; mixed placements are an error."""
    from .methods.bottleneck import LOCATIONS

    out = []
    for loc in LOCATIONS:
        values = {name: bool(getattr(cfg, loc)) for name, cfg in configs.items()}
        if all(values.values()):
            out.append(loc)
        elif any(values.values()):
            have = sorted(n for n, v in values.items() if v)
            lack = sorted(n for n, v in values.items() if not v)
            raise ConfigError(f"cannot fuse adapters with different placements: {', '.join(have)} "
                              f"{'has' if len(have) == 1 else 'have'} {loc} but {', '.join(lack)} "
                              f"{'does' if len(lack) == 1 else 'do'} not")
    if not out:
        raise ConfigError("the adapters share no placement to fuse at")
    return out
