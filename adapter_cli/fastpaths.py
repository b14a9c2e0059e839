"""Many bottleneck adapters at one site without a Python loop over them.

* ``stacked_bottlenecks``: the N members of a fusion see the same input, so their down-projections are one
  matrix product with the N weight matrices side by side, and their up-projections one batched product;
  the result is already in the [B, T, N, H] layout the fusion attends over.
* ``routed_adapters``: rows of a batch that each use a different adapter (per-example routing) run as one
  batched product over weights gathered per row, so the cost does not grow with the number of distinct
  adapters in the batch.

Both are the straightforward per-adapter computation reordered, exact up to fp32 rounding (tests compare
them with the loop). They apply when the adapters are alike (same class, configuration, width; no layer
norms or gates of their own, no stochastic depth while training); otherwise the caller loops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .methods.bottleneck_layers import BottleneckAdapter

# ADAPT_REFERENCE_ORDER=1 runs every adapter, fusion and routed row one by one in AdapterHub's operation
# order instead (bit-level agreement with the reference library on the same machine; slower).
ENABLED = os.environ.get("ADAPT_REFERENCE_ORDER") != "1"


def _plain(adapter: BottleneckAdapter) -> bool:
    """An adapter whose bottleneck is exactly up(act(down(a))) * scaling."""
    cfg = adapter.config
    return adapter.norm_before is None and not (cfg.stochastic_depth > 0.0 and adapter.training)


def _alike(adapters: Sequence[BottleneckAdapter]) -> bool:
    first = adapters[0]
    return len(adapters) > 1 and all(
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
    return ENABLED and _alike(adapters)


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


def routed_adapters(adapters: Sequence[BottleneckAdapter], rows: torch.Tensor, a: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor | None:
    """Row i of ``a`` [B, T, H] through ``adapters[rows[i]]``: the adapter output (residual added), or None
    when the adapters are not alike or have parts of their own after the bottleneck."""
    first = adapters[0]
    cfg = first.config
    if not ENABLED or not _alike(adapters) or any(m.config != cfg for m in adapters) or first.gate is not None \
            or first.norm_after is not None:
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
