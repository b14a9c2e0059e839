"""Stitching LoRA-family adapters into the linear layers of a transformers model, and running a composition
at one linear layer.

Each changed ``nn.Linear`` gets one forward hook. When no adapter of the active composition changes this
layer, the hook returns nothing and the layer's output is untouched (bit-identical to plain transformers);
otherwise the composition's terms are computed from the layer input and combined with the frozen output,
as AdapterHub's ``LoRALinear.forward`` does:

* ``stack(a, b)``: b's term is computed from a's term (AdapterHub's order), then the last member closes;
* ``batch_split`` (and ``parallel``, which the model runs as a batch split over a repeated batch): each part
  of the rows is closed by its own member (AdapterHub closes all rows with the last member, which differs
  only for DoRA and for mixing LoRA with (IA)³). When every part is a plain adapter name and the adapters
  here are alike, all rows run as one batched product over per-row weights (``fastpaths.routed_deltas``);
  otherwise, and in the reference order (``ADAPT_REFERENCE_ORDER=1``), part by part;
* ``average``: ``sum_i w_i term_i`` with weights summing to 1, closed by the last member (AdapterHub also
  divides by the number of members; see docs/numerics.md);
* ``fuse`` over LoRA-family adapters is refused before any forward pass (``AdapterModel.resolve_composition``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .composition import Average, BatchSplit, Block, Fuse, Stack
from .errors import CompositionError
from .fastpaths import route, routed_deltas


@dataclass(frozen=True)
class _Terms:
    x: torch.Tensor
    hidden: torch.Tensor | None = None
    last: str | None = None


class LinearSite:
    """One linear layer of the base model and the LoRA-family adapters that change it."""

    def __init__(self, linear: nn.Linear, layer: int, matrix: str, context: Any) -> None:
        self.layer, self.matrix, self.context = layer, matrix, context
        self.linear = linear
        self.loras: dict[str, nn.Module] = {}
        self.merged: str | None = None  # the adapter folded into this layer's weights, if any
        # First among the layer's hooks: a bottleneck site may take the same module's output as its ``h`` (BART's
        # fc2), and must see it with the LoRA-family change made, as AdapterHub's wrapped layer gives it.
        self._handle = linear.register_forward_hook(self._forward_hook, prepend=True)

    def _forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        setup = self.context.setup
        if setup is None or self.context.leaves.isdisjoint(self.loras):
            return None
        if self.merged is not None:
            others = sorted((self.context.leaves & self.loras.keys()) - {self.merged})
            if not others:
                return None  # the merged adapter is already in the weights
            raise CompositionError(f"adapter {self.merged!r} is merged into the model's weights, so "
                                   f"{', '.join(map(repr, others))} cannot run beside it; unmerge it first")
        return self._run(setup, output, args[0])

    def _run(self, block: Block, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        if isinstance(block, BatchSplit):
            return self._batch_split(block, output, x)
        node: Any = block
        while isinstance(node, Stack) and len(node.children) == 1 and isinstance(node.children[0], BatchSplit):
            node = node.children[0]
        if isinstance(node, BatchSplit):
            return self._batch_split(node, output, x)
        terms = self._compose(block, _Terms(x=x))
        if terms.last is None:
            return None
        return self.loras[terms.last].close(output, terms.hidden, self.linear.weight, self.linear.bias, x)

    def _compose(self, block: Block | str, terms: _Terms) -> _Terms:
        if isinstance(block, str):
            if block not in self.loras:
                return terms
            if terms.hidden is not None and self.loras[block].config.composition_mode == "add" \
                    and self.linear.in_features != self.linear.out_features:
                raise CompositionError(f"stack({terms.last},{block}): a stack of LoRA adapters feeds one's output "
                                       f"into the next (AdapterHub's order), which needs a layer with as many "
                                       f"outputs as inputs, but {self.matrix} of layer {self.layer} maps "
                                       f"{self.linear.in_features} to {self.linear.out_features} features")
            return replace(terms, hidden=self.loras[block](terms.hidden, terms.x), last=block)
        if isinstance(block, Stack):
            for child in block.children:
                terms = self._compose(child, terms)
            return terms
        if isinstance(block, Average):
            return self._average(block, terms)
        if isinstance(block, Fuse):  # only bottleneck adapters are fused; none of them lives here
            return terms
        raise CompositionError(f"{block} cannot run inside another composition at a LoRA-family adapter")

    def _average(self, block: Average, terms: _Terms) -> _Terms:
        members = [(c, w) for c, w in zip(block.children, block.normalized_weights())
                   if (c in self.loras if isinstance(c, str) else not self.loras.keys().isdisjoint(c.leaves()))]
        if not members:
            return terms
        total = sum(w for _, w in members)
        mixed, last = None, None
        for child, weight in members:
            done = self._compose(child, terms)
            part = done.hidden * (weight / total)
            mixed = part if mixed is None else mixed + part
            last = done.last
        return replace(terms, hidden=mixed, last=last)

    def _batch_split(self, block: BatchSplit, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if sum(block.sizes) != rows:
            raise CompositionError(f"{block}: the sizes add up to {sum(block.sizes)} rows but the batch has {rows}")
        routed = self._routed(block, output, x)
        if routed is not None:
            return routed
        parts, start = [], 0
        for child, size in zip(block.children, block.sizes):
            part = slice(start, start + size)
            start += size
            done = self._run(child if isinstance(child, Block) else Stack((child,)), output[part], x[part])
            parts.append(output[part] if done is None else done)
        return torch.cat(parts, dim=0)

    def _routed(self, block: BatchSplit, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Every part a plain adapter name: the terms of all rows at once, closed once (alike adapters close
        alike, so one close is each row's own), rows of parts with no adapter here left as they are. None:
        a part is a block, or the adapters here are not alike (``routed_deltas`` says which): the loop."""
        if not all(isinstance(c, str) for c in block.children):
            return None
        distinct = list(dict.fromkeys(c for c in block.children if c in self.loras))
        if not distinct:
            return None
        deltas = [self.loras[n] for n in distinct]
        routing = route([distinct.index(c) if c in self.loras else -1 for c in block.children], block.sizes,
                        x.device)
        if routing is None:  # the fast paths are off: part by part, in the reference order
            return None
        # One adapter here (the others live elsewhere, e.g. bottleneck adapters): it runs on all rows as it
        # is, whatever its variant (DoRA, gated), since every term and close is row by row.
        hidden = deltas[0](None, x) if len(deltas) == 1 else routed_deltas(deltas, routing.rows, x)
        if hidden is None:
            return None
        out = deltas[0].close(output, hidden, self.linear.weight, self.linear.bias, x)
        if routing.present is None:
            return out
        return torch.where(routing.present.view((-1,) + (1,) * (out.dim() - 1)), out, output)
