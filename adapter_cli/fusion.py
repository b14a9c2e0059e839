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

In a training step ``FusionLayer.fuse`` keeps neither the members' [B, T, N, H] outputs nor the
attention's intermediates for the backward: the site's member stack and fusion attention run under
``torch.utils.checkpoint`` (non-reentrant, RNG state restored so that dropout masks repeat) and are
recomputed in the backward from the shared input and the query. The forward is the same computation in
the same order (bit for bit); without autograd recording it is a plain call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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

    def _stack(self, ups: list[torch.Tensor] | torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
        # [B, T, N, H]: given as such by the stacked fast path, or a permuted view of [N, B, T, H] (the
        # layout AdapterHub's kernels see) when the members ran one by one.
        u = ups if isinstance(ups, torch.Tensor) else torch.stack(ups).permute(1, 2, 0, 3)
        if inside is not None:
            u = u + inside.unsqueeze(2)
        return u

    def _anneal(self) -> float:
        """The temperature of this call; one annealing step follows it in training mode."""
        temperature = self.temperature
        if self.training and temperature > 1.0:
            self.temperature = max(temperature - self._temperature_step, 1.0)
        return temperature

    def _softmax(self, scores: torch.Tensor, temperature: float) -> torch.Tensor:
        scores = self.dropout(scores)
        probs = torch.softmax(scores / temperature, dim=-1)
        if self.keep_attention:
            self.last_attention = probs.detach()
        return probs

    def _close(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return context if self.config.residual_before else context + residual

    def _inside(self, residual: torch.Tensor) -> torch.Tensor | None:
        """The residual where it enters the attention (``residual_before``), else None (added after it)."""
        return residual if self.config.residual_before else None

    def forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                residual: torch.Tensor) -> torch.Tensor:
        form = self._restructured if self.restructured else self._reference
        return self._close(form(query, ups, self._inside(residual), self._anneal()), residual)

    def fuse(self, query: torch.Tensor, residual: torch.Tensor,
             members_up: Callable[..., list[torch.Tensor] | torch.Tensor], inputs: Sequence[torch.Tensor],
             members: Sequence[nn.Module] = ()) -> torch.Tensor:
        """``forward(query, members_up(*inputs), residual)``, the members' up-projections computed here.

        While autograd records (a training step), the backward keeps only ``inputs``, ``query`` and (with
        ``residual_before``) ``residual``: the members' up-projections and the attention are recomputed
        in the backward, with the same temperature and the RNG state of the forward (same dropout masks).
        ``members`` are the modules ``members_up`` uses (their parameters may be trainable)."""
        form = self._restructured if self.restructured else self._reference
        temperature, inside = self._anneal(), self._inside(residual)

        def region(query: torch.Tensor, inside: torch.Tensor | None, *inputs: torch.Tensor) -> torch.Tensor:
            return form(query, members_up(*inputs), inside, temperature)

        if self._records((query, inside, *inputs), members):
            context = checkpoint(region, query, inside, *inputs, use_reentrant=False, preserve_rng_state=True)
        else:
            context = region(query, inside, *inputs)
        return self._close(context, residual)

    def _records(self, tensors: Sequence[torch.Tensor | None], members: Sequence[nn.Module]) -> bool:
        """Whether autograd records this call: grad mode on and a tensor or parameter requiring grad."""
        if not torch.is_grad_enabled():
            return False
        return any(t is not None and t.requires_grad for t in tensors) or any(
            p.requires_grad for m in (self, *members) for p in m.parameters())

    def restructured_forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                             residual: torch.Tensor) -> torch.Tensor:
        return self._close(self._restructured(query, ups, self._inside(residual), self._anneal()), residual)

    def reference_forward(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                          residual: torch.Tensor) -> torch.Tensor:
        """AdapterHub's formulation, term by term (for tests of the restructured forward)."""
        return self._close(self._reference(query, ups, self._inside(residual), self._anneal()), residual)

    # The two forms compute the attention's output before a residual added after it; ``inside`` is the
    # residual where it enters the members' outputs (``residual_before``), else None.
    def _restructured(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                      inside: torch.Tensor | None, temperature: float) -> torch.Tensor:
        u = self._stack(ups, inside)
        q = self.query(query) if self.query is not None else query
        if self.key is not None:
            qk = q @ self.key.weight  # W_k^T q, [B, T, H]
            scores = torch.einsum("bth,btnh->btn", qk, u) + (q * self.key.bias).sum(-1, keepdim=True)
        else:
            scores = torch.einsum("bth,btnh->btn", q, u)
        probs = self._softmax(scores, temperature)
        context = torch.einsum("btn,btnh->bth", probs, u)
        return self.value(context) if self.value is not None else context

    def _reference(self, query: torch.Tensor, ups: list[torch.Tensor] | torch.Tensor,
                   inside: torch.Tensor | None, temperature: float) -> torch.Tensor:
        u = self._stack(ups, inside)
        q = self.query(query) if self.query is not None else query
        k = self.key(u) if self.key is not None else u
        v = self.value(u) if (self.value is not None and self.config.value_before_softmax) else u
        scores = torch.squeeze(torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)), dim=2)
        probs = self._softmax(scores, temperature)
        context = torch.squeeze(torch.matmul(probs.unsqueeze(2), v), dim=2)
        if self.value is not None and not self.config.value_before_softmax:
            context = self.value(context)
        return context


class FusionSet(nn.Module):
    """All sites of one fusion. State-dict keys are ``<location>.<layer>.<query|key|value>.<param>``.

    Like AdapterHub, a fusion layer exists in every layer of each placement that all members share,
    including layers the members leave out, so AdapterHub's fusion files load key for key.
    """

    def __init__(self, config: FusionConfig, adapters: list[str], locations: list[str], hidden_size: int,
                 num_layers: int, attention_dropout: float, initializer_range: float = 0.02,
                 encoder_layers: int | None = None) -> None:
        from .methods.bottleneck import location_layers

        super().__init__()
        self.config = config
        self.adapters = list(adapters)
        for loc in locations:
            self.add_module(loc, nn.ModuleDict({
                str(i): FusionLayer(config, hidden_size, attention_dropout, initializer_range)
                for i in location_layers(loc, num_layers, encoder_layers)
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
