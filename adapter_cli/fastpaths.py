"""Many bottleneck adapters at one site without a Python loop over them.

* ``stacked_bottlenecks``: the N members of a fusion see the same input, so their down-projections are one
  matrix product with the N weight matrices side by side, and their up-projections one batched product;
  the result is already in the [B, T, N, H] layout the fusion attends over.
* ``routed_adapters``: rows of a batch that each use a different adapter (per-example routing) run as one
  batched product over weights gathered per row, so the cost does not grow with the number of distinct
  adapters in the batch (``Site`` runs a batch split of stacks as one such product per stack level);
* ``routed_deltas``: the same for LoRA and (IA)³ at a linear layer: the terms of all rows in one batched
  product over per-row A and B (or one gathered scaling vector per row).

The row -> adapter index of a batch split comes from its sizes, which are Python ints: ``route`` builds it
in Python (cached per composition and device), never from a data-dependent op such as
``repeat_interleave``, so ``torch.compile`` traces a routed batch without a graph break.

All are the straightforward per-adapter computation reordered, exact up to fp32 rounding (tests compare
them with the loop). They apply when the adapters are alike (same class, configuration, width; no layer
norms or gates of their own, no stochastic depth while training); otherwise the caller loops.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

from .methods.bottleneck_layers import BottleneckAdapter
from .methods.lora_layers import LinearDelta

# ADAPT_REFERENCE_ORDER=1 runs every adapter, fusion and routed row one by one in AdapterHub's operation
# order instead (bit-level agreement with the reference library on the same machine; slower).
ENABLED = os.environ.get("ADAPT_REFERENCE_ORDER") != "1"


def _plain(adapter: BottleneckAdapter) -> bool:
    """An adapter whose bottleneck is exactly up(act(down(a))) * scaling, with plain linear projections (a
    Compacter's PHM layers build their weight from Kronecker products: they run one by one)."""
    cfg = adapter.config
    return adapter.norm_before is None and isinstance(adapter.down, torch.nn.Linear) \
        and not (cfg.stochastic_depth > 0.0 and adapter.training)


def _alike(adapters: Sequence[BottleneckAdapter]) -> bool:
    first = adapters[0]
    return all(
        type(m) is type(first) and _plain(m) and m.config.non_linearity == first.config.non_linearity
        and m.down.out_features == first.down.out_features for m in adapters)


def _scales(adapters: Sequence[BottleneckAdapter], like: torch.Tensor) -> torch.Tensor | None:
    """Per adapter scaling as [N, H] (or None when every adapter scales by 1)."""
    if all(isinstance(m.scaling, float) and m.scaling == 1.0 for m in adapters):
        return None
    hidden = like.shape[-1]
    return torch.stack([torch.as_tensor(m.scaling, dtype=like.dtype, device=like.device).expand(hidden)
                        for m in adapters])


def stackable(adapters: Sequence[BottleneckAdapter]) -> bool:
    """Whether ``stacked_bottlenecks`` computes these members (fast paths on, members alike)."""
    return ENABLED and len(adapters) > 1 and _alike(adapters)


def stacked_bottlenecks(adapters: Sequence[BottleneckAdapter], a: torch.Tensor) -> torch.Tensor | None:
    """The N members' scaled up-projections of the shared input ``a`` [B, T, H] as [B, T, N, H], or None
    when the members are not alike."""
    if not stackable(adapters):
        return None
    n, width = len(adapters), adapters[0].down.out_features
    down_w = torch.cat([m.down.weight for m in adapters])                   # [N*d, H]
    down_b = torch.cat([m.down.bias for m in adapters])
    hidden = adapters[0].act(F.linear(a, down_w, down_b)).unflatten(-1, (n, width))   # [B, T, N, d]
    up_w = torch.stack([m.up.weight for m in adapters])                     # [N, H, d]
    up_b = torch.stack([m.up.bias for m in adapters])                       # [N, H]
    up = torch.einsum("btnd,nhd->btnh", hidden, up_w) + up_b
    scales = _scales(adapters, up)
    return up * scales if scales is not None else up


class Route(NamedTuple):
    """Which adapter each row of a batch split uses: ``rows`` [B] indexes the distinct adapters (0 for a row
    that no adapter here changes), ``present`` [B] marks the rows some adapter changes (None: every row)."""

    rows: torch.Tensor
    present: torch.Tensor | None


def route(slots: Sequence[int], sizes: Sequence[int], device: torch.device) -> Route | None:
    """The ``Route`` of a batch split whose part i has ``sizes[i]`` rows through adapter ``slots[i]`` (-1: none
    here), or None when the fast paths are off (the reference order runs part by part). Built from Python
    ints, so its shape never depends on tensor data (no graph break under torch.compile, which bakes it into
    the graph as a constant); cached otherwise, so that an inference loop that sees the same composition
    batch after batch builds it once."""
    if not ENABLED:
        return None
    if torch.compiler.is_compiling():
        return _build_route(tuple(slots), tuple(sizes), device)
    return _cached_route(tuple(slots), tuple(sizes), device)


def _build_route(slots: tuple[int, ...], sizes: tuple[int, ...], device: torch.device) -> Route:
    per_row = [slot for slot, size in zip(slots, sizes) for _ in range(size)]
    rows = torch.tensor([max(slot, 0) for slot in per_row], dtype=torch.long, device=device)
    present = None if min(slots) >= 0 else torch.tensor([slot >= 0 for slot in per_row], device=device)
    return Route(rows, present)


@functools.lru_cache(maxsize=256)  # bounded: an inference run sees one composition per distinct batch
def _cached_route(slots: tuple[int, ...], sizes: tuple[int, ...], device: torch.device) -> Route:
    # A cached tensor first built under inference_mode would be an inference tensor, which a later training
    # forward cannot save for its backward (indexing keeps its index): build it as a normal tensor.
    with torch.inference_mode(False):
        return _build_route(slots, sizes, device)


def routable(adapters: Sequence[BottleneckAdapter]) -> bool:
    """Whether ``routed_adapters`` computes these adapters: fast paths on, alike, one configuration (so one
    ``pre_forward`` and ``post_forward`` serve every row), no gate or LayerNorm after the bottleneck."""
    first = adapters[0]
    return ENABLED and _alike(adapters) and all(m.config == first.config for m in adapters) \
        and first.gate is None and first.norm_after is None


def routed_adapters(adapters: Sequence[BottleneckAdapter], rows: torch.Tensor, a: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor | None:
    """Row i of ``a`` [B, T, H] through ``adapters[rows[i]]``: the adapter output (residual added), or None
    when the adapters are not alike or have parts of their own after the bottleneck."""
    first = adapters[0]
    if not routable(adapters):
        return None
    down_w = torch.stack([m.down.weight for m in adapters])[rows]          # [B, d, H]
    down_b = torch.stack([m.down.bias for m in adapters])[rows]            # [B, d]
    up_w = torch.stack([m.up.weight for m in adapters])[rows]              # [B, H, d]
    up_b = torch.stack([m.up.bias for m in adapters])[rows]                # [B, H]
    hidden = first.act(torch.baddbmm(down_b.unsqueeze(1), a, down_w.transpose(1, 2)))
    up = torch.baddbmm(up_b.unsqueeze(1), hidden, up_w.transpose(1, 2))   # [B, T, H]
    scales = _scales(adapters, up)
    if scales is not None:
        up = up * scales[rows].unsqueeze(1)
    return first.plain_output(up, residual)


def _delta_shape(delta: LinearDelta) -> tuple[Any, ...] | None:
    """What decides the computation of a LoRA-family term, or None for the variants ``routed_deltas`` does not
    cover: DoRA (its close rescales by a per-adapter norm of ``W + B A``), gated LoRA (a gate per adapter),
    VeRA (its Λ is out×out per adapter: gathered per row it would cost B·out² memory) and a LoRA on a part of
    a fused projection (computed in the reference's order for all parts). The caller loops over those."""
    if delta.m is not None or delta.gate is not None or delta.vera_D is not None:
        return None
    if delta._fused and not delta.scale_mode:  # a part of GPT-2's c_attn: its own order (LinearDelta._fused_term)
        return None
    weights = (delta.lora_B,) if delta.scale_mode else (delta.lora_A, delta.lora_B)
    return (delta.scale_mode, delta.scales_input, delta.config.dropout,
            tuple((tuple(w.shape), w.dtype, w.device) for w in weights))


def routed_deltas(deltas: Sequence[LinearDelta], rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """Row i of the layer input ``x`` [B, T, in] through ``deltas[rows[i]]``: the terms (LoRA [B, T, out],
    (IA)³ [B, 1, n]) that ``deltas[0].close`` combines with the frozen output, or None when the fast paths
    are off or the adapters are not alike (another variant, rank, mode or dropout)."""
    first = deltas[0]
    shape = _delta_shape(first)
    if not ENABLED or shape is None or x.dim() != 3 or any(_delta_shape(d) != shape for d in deltas[1:]):
        return None
    if first.scale_mode:  # (IA)³: one vector per row, as LinearDelta.forward's [B, 1, n]
        term = torch.stack([d.lora_B.view(-1) for d in deltas])[rows].unsqueeze(1)
    else:
        down = torch.stack([d.lora_A for d in deltas])[rows]               # [B, r, in]
        up = torch.stack([d.lora_B for d in deltas])[rows]                 # [B, out, r]
        term = torch.bmm(torch.bmm(first.dropout(x), down.transpose(1, 2)), up.transpose(1, 2))
    scalings = [d.scaling for d in deltas]
    if all(s == scalings[0] for s in scalings):  # one Python float, as the loop multiplies by
        return term * scalings[0]
    per_row = torch.tensor(scalings, dtype=term.dtype, device=term.device)[rows]
    return term * per_row.view(-1, 1, 1)
