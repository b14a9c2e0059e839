"""Stitching adapters into a transformers model with hooks, and running a composition at one site.

For each site (layer x placement) three hooks are installed:

* a forward pre-hook on the module that receives the residual input ``x`` stores it;
* a forward hook on the module that produces the sub-layer output ``h`` stores it;
* the site's LayerNorm gets an instance-level ``forward``: when no adapter of the active composition
  lives at this site it calls the original LayerNorm unchanged (bit-identical to plain transformers),
  otherwise it ignores its input ``h + x`` and returns the composition's output computed from ``h``
  and ``x``, exactly as AdapterHub's ``bottleneck_layer_forward``.

In a pre-norm layer (GPT-2, Llama) there is no LayerNorm after the sum: the layer adds ``x`` to the
sub-layer's output itself. There the forward hook on the sub-layer returns, in place of ``h``, the value
the layer then adds ``x`` to: the composition's output before its final ``+ x`` (AdapterHub adds it last
too, so the sum is the same operation on the same operands). A plain site returns ``h`` unchanged.

The active composition travels in a ``ForwardContext`` owned by the model and set per forward call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from .architectures import SiteSpec
from .composition import Average, BatchSplit, Block, Fuse, Stack
from .fastpaths import routable, route, routed_adapters, stackable, stacked_bottlenecks


class ForwardContext:
    """The composition active during the current forward pass, per thread.

    Copying a model (``copy.deepcopy``) gives the copy a fresh, empty context of its own.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def setup(self) -> Block | None:
        return getattr(self._local, "setup", None)

    @property
    def leaves(self) -> frozenset[str]:
        return getattr(self._local, "leaves", frozenset())

    @property
    def captures(self) -> dict[int, list]:
        """Per site, the [h, x] captured by its hooks in this thread's current forward pass."""
        found = getattr(self._local, "captures", None)
        if found is None:
            found = self._local.captures = {}
        return found

    def set(self, setup: Block | None) -> tuple[Block | None, frozenset[str]]:
        """Activate ``setup``; returns the previous state for ``restore``."""
        previous = (self.setup, self.leaves)
        self._local.setup = setup
        self._local.leaves = frozenset(setup.leaves()) if setup is not None else frozenset()
        return previous

    def restore(self, previous: tuple[Block | None, frozenset[str]]) -> None:
        self._local.setup, self._local.leaves = previous

    def wrap_checkpoint(self, checkpoint: Any) -> Any:
        """Wrap a gradient-checkpointing function so the recomputation in backward runs with the
        composition that was active in the forward pass (the context is gone by then)."""

        def run(function: Any, *args: Any, **kwargs: Any) -> Any:
            setup = self.setup

            def with_setup(*a: Any, **k: Any) -> Any:
                previous = self.set(setup)
                try:
                    return function(*a, **k)
                finally:
                    self.restore(previous)

            return checkpoint(with_setup, *args, **kwargs)

        return run

    def __deepcopy__(self, memo: dict) -> ForwardContext:
        return ForwardContext()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()


@dataclass(frozen=True)
class _State:
    hidden: torch.Tensor
    x: torch.Tensor
    ln: Any  # the LayerNorm (a bound forward), None at a pre-norm site
    residual: torch.Tensor | None = None
    up: torch.Tensor | None = None
    last: str | None = None
    final: bool = False  # hidden is already the sub-layer output (a batch split closed each part itself)


# Added in place of x where a pre-norm layer adds x itself after the site: ``out + 0.0`` is ``out`` exactly.
_NOTHING_ADDED = 0.0


def _replaced(output: Any, first: torch.Tensor) -> Any:
    """A module's output with its first tensor replaced."""
    return (first,) + tuple(output[1:]) if isinstance(output, tuple) else first


def _take_over_dropout(layer: nn.Module, attribute: str) -> nn.Module | None:
    """Set the layer's functional dropout to 0 and keep its probability in ``_adapt_dropout``, for its sites to
    apply before their adapters (once per layer: every site of the layer then applies it); None without one."""
    if not attribute:
        return None
    if not hasattr(layer, "_adapt_dropout"):
        layer._adapt_dropout = float(getattr(layer, attribute) or 0.0)
        setattr(layer, attribute, 0.0)
    return layer


def _submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


class Site:
    """One adapter site: the adapters and fusion layers placed there, and its hooks."""

    def __init__(self, layer_module: nn.Module, layer: int, spec: SiteSpec, context: ForwardContext) -> None:
        self.layer = layer
        self.location = spec.location
        self.context = context
        self.adapters: dict[str, nn.Module] = {}
        self.fusions: dict[str, nn.Module] = {}
        self.pre_norm = not spec.layer_norm
        output_module = _submodule(layer_module, spec.output_of)
        self.layer_norm = None if self.pre_norm else _submodule(layer_module, spec.layer_norm)
        marked = output_module if self.pre_norm else self.layer_norm
        # A module may carry several sites (ViT's one Dropout after both sub-layers), each location once.
        if "forward" in vars(marked) or spec.location in getattr(marked, "_adapt_sites", ()):
            from .errors import UsageError

            raise UsageError("this transformers model already has adapters stitched in by another AdapterModel; "
                             "load a fresh copy of the base model")
        self._residual_arg, self._residual_kwarg = spec.residual_arg, spec.residual_kwarg
        self._dropout_layer = _take_over_dropout(layer_module, spec.functional_dropout)
        # Bound methods, not closures: copy.deepcopy rebinds them to the copied site.
        self._handles = [
            _submodule(layer_module, spec.residual_module).register_forward_pre_hook(self._keep_residual,
                                                                                      with_kwargs=True),
            output_module.register_forward_hook(self._adapt_output if self.pre_norm else self._keep_output),
        ]
        if self.pre_norm:
            self._original_ln_forward = None
            output_module._adapt_sites = getattr(output_module, "_adapt_sites", frozenset()) | {spec.location}
        else:
            self._original_ln_forward = type(self.layer_norm).forward.__get__(self.layer_norm)
            self.layer_norm.forward = self._layer_norm_forward

    # h and x live in the thread-local context, so concurrent forward passes on one model do not mix.
    def _keep_residual(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.context.setup is not None:
            x = kwargs[self._residual_kwarg] if self._residual_kwarg in kwargs else args[self._residual_arg]
            self.context.captures.setdefault(id(self), [None, None])[1] = x

    def _keep_output(self, _module: nn.Module, _args: tuple, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        dropped = self._dropout(h)
        if self.context.setup is not None:
            self.context.captures.setdefault(id(self), [None, None])[0] = dropped
        return None if dropped is h else _replaced(output, dropped)

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        """The layer's functional dropout after the sub-layer, which this site applies in its place (BART)."""
        layer = self._dropout_layer
        if layer is None or not layer.training or not layer._adapt_dropout:
            return h
        return nn.functional.dropout(h, p=layer._adapt_dropout, training=True)

    # ------------------------------------------------------------------ forward
    def _layer_norm_forward(self, summed: torch.Tensor) -> torch.Tensor:
        h, x = self.context.captures.pop(id(self), (None, None))
        out = self._compute(h, x)
        return self._original_ln_forward(summed) if out is None else out

    def _adapt_output(self, _module: nn.Module, _args: tuple, output: Any) -> Any:
        """Pre-norm: the sub-layer's output replaced by what the layer adds x to (None: unchanged)."""
        _, x = self.context.captures.pop(id(self), (None, None))
        raw = output[0] if isinstance(output, tuple) else output
        h = self._dropout(raw)
        out = self._compute(h, x)
        if out is None:
            return None if h is raw else _replaced(output, h)
        return _replaced(output, out)

    def _compute(self, h: torch.Tensor | None, x: torch.Tensor | None) -> torch.Tensor | None:
        """The site's output under the active composition; None where the plain sub-layer's stands."""
        setup = self.context.setup
        if setup is None or h is None or x is None or self.context.leaves.isdisjoint(self.adapters):
            return None
        state = self._run(setup, _State(hidden=h, x=x, ln=self._original_ln_forward))
        if state.final:
            return state.hidden
        if state.last is None:  # nothing of the composition ran here
            return None
        return self._close(state.last, state.hidden, h, x)

    def _close(self, last: str, out: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._close_with(self.adapters[last], out, h, x)

    def _close_with(self, adapter: nn.Module, out: torch.Tensor, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The last adapter's add & norm. Pre-norm: without the final ``+ x``, which the layer adds next; an
        adapter configured not to add x again (``original_ln_after: false``) gets it taken off here, the one
        case where the result differs from AdapterHub's, by the rounding of that subtraction (< 1 ulp of x)."""
        if not self.pre_norm:
            return adapter.post_forward(out, h, x, self._original_ln_forward)
        if adapter.config.original_ln_after:
            return adapter.post_forward(out, h, _NOTHING_ADDED, None)
        return adapter.post_forward(out, h, x, None) - x

    def _plain(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The sub-layer's own add & norm; pre-norm: ``h``, to which the layer adds x."""
        return h if self.pre_norm else self._original_ln_forward(h + x)

    def _run(self, block: Block, state: _State) -> _State:
        if isinstance(block, Fuse):
            return self._fuse(block, state)
        if isinstance(block, Average):
            return self._average(block, state)
        if isinstance(block, BatchSplit):
            return self._batch_split(block, state)
        return self._stack(block, state)

    def _present(self, child: Any) -> bool:
        return child in self.adapters if isinstance(child, str) else not self.adapters.keys().isdisjoint(child.leaves())

    def _average(self, block: Average, state: _State) -> _State:
        """sum_i w_i * out_i over the members present here, weights renormalised to sum to 1."""
        members = [(c, w) for c, w in zip(block.children, block.normalized_weights()) if self._present(c)]
        if not members:
            return state
        leaves = [leaf for c, _ in members for leaf in ([c] if isinstance(c, str) else c.leaves())
                  if leaf in self.adapters]
        a, _, residual = self.adapters[leaves[0]].pre_forward(state.hidden, state.x, state.ln)
        shared = replace(state, hidden=a, residual=residual)
        total = sum(w for _, w in members)
        mixed = None
        for child, weight in members:
            if isinstance(child, str):
                out = self.adapters[child](a, residual)[0]
            else:
                out = self._run(child, replace(shared, up=None, last=None)).hidden
            mixed = out * (weight / total) if mixed is None else mixed + out * (weight / total)
        last = block.last() if block.last() in self.adapters else leaves[-1]
        return replace(shared, hidden=mixed, last=last)

    def _batch_split(self, block: BatchSplit, state: _State) -> _State:
        """Consecutive rows through each member; every part is closed by its own member's add & norm."""
        rows = state.hidden.shape[0]
        if sum(block.sizes) != rows:
            from .errors import CompositionError

            raise CompositionError(f"{block}: the sizes add up to {sum(block.sizes)} rows but the batch has {rows}")
        routed = self._routed(block, state)
        if routed is not None:
            return routed
        parts, start = [], 0
        for child, size in zip(block.children, block.sizes):
            rows_here = slice(start, start + size)
            start += size
            part = _State(hidden=state.hidden[rows_here], x=state.x[rows_here], ln=state.ln,
                          residual=state.residual[rows_here] if state.residual is not None else None,
                          last=state.last)
            done = self._run(child if isinstance(child, Block) else Stack((child,)), part)
            if done.final:
                parts.append(done.hidden)
            elif done.last is not None:
                parts.append(self._close(done.last, done.hidden, part.hidden, part.x))
            else:  # no member of this part lives here: the plain sub-layer
                parts.append(self._plain(part.hidden, part.x))
        return replace(state, hidden=torch.cat(parts, dim=0), final=True)

    def _levels(self, block: BatchSplit) -> list[list[str | None]] | None:
        """Per stack level, the adapter each part runs there (None: a part with no adapter at this site), when
        every part is a plain adapter or a stack of plain adapters and the parts with adapters here have
        equally many (``_stack`` skips a member placed elsewhere, and so does this); else None."""
        stacks: list[tuple[str, ...] | None] = []
        for child in block.children:
            members = (child,) if isinstance(child, str) else child.children if type(child) is Stack else ()
            if not members or not all(isinstance(m, str) for m in members):
                return None  # a nested block: the loop
            here = tuple(m for m in members if m in self.adapters)
            stacks.append(here or None)  # None: closed by the plain sub-layer, as the loop does
        depths = {len(s) for s in stacks if s is not None}
        if len(depths) != 1:
            return None
        return [[s[level] if s is not None else None for s in stacks] for level in range(depths.pop())]

    def _routed(self, block: BatchSplit, state: _State) -> _State | None:
        """Every part a plain adapter, or a stack of them of one depth, whose adapters at each level are alike:
        all rows through one batched product per level over per-row weights (exactly ``_stack``'s steps:
        pre_forward, adapter, its output the next level's hidden), closed by one add & norm. None: loop."""
        levels = self._levels(block)
        if levels is None:
            return None
        plans = []
        for names in levels:
            distinct = list(dict.fromkeys(n for n in names if n is not None))
            adapters = [self.adapters[n] for n in distinct]
            routing = route([distinct.index(n) if n is not None else -1 for n in names], block.sizes,
                            state.hidden.device)
            if routing is None or (len(adapters) > 1 and not routable(adapters)):  # fast paths off, or unlike
                return None
            plans.append((adapters, routing))
        hidden = state.hidden
        for adapters, routing in plans:
            a, _, residual = adapters[0].pre_forward(hidden, state.x, state.ln)
            # One adapter at this level (stack(lang, task_i) shares lang): it runs on all rows as it is.
            hidden = adapters[0](a, residual)[0] if len(adapters) == 1 \
                else routed_adapters(adapters, routing.rows, a, residual)
        out = self._close_with(plans[-1][0][0], hidden, state.hidden, state.x)
        present = plans[-1][1].present
        if present is not None:  # rows of parts with no adapter here: the plain sub-layer
            plain = self._plain(state.hidden, state.x)
            out = torch.where(present.view((-1,) + (1,) * (out.dim() - 1)), out, plain)
        return replace(state, hidden=out, final=True)

    def _stack(self, block: Stack, state: _State) -> _State:
        for child in block.children:
            if isinstance(child, Block):
                state = self._run(child, state)
            elif child in self.adapters:
                adapter = self.adapters[child]
                a, _, residual = adapter.pre_forward(state.hidden, state.x, state.ln)
                out, up = adapter(a, residual)
                state = replace(state, hidden=out, residual=residual, up=up, last=child)
        return state

    def _fuse(self, block: Fuse, state: _State) -> _State:
        fusion = self.fusions.get(block.fusion_name)
        present = [c for c in block.children if self._present(c)]
        if not present:
            return state
        # The last member's configuration prepares the shared input, the query and the residual.
        # AdapterHub fails when that member is left out of this layer; we use the last one present.
        last = block.last()
        if last not in self.adapters:
            last = [leaf for leaf in block.leaves() if leaf in self.adapters][-1]
        if fusion is None:
            from .errors import CompositionError

            raise CompositionError(f"fusion {block.fusion_name!r} has no layer at {self.location} of layer "
                                   f"{self.layer}, where {last!r} has an adapter; its members' placements differ")
        a, query, residual = self.adapters[last].pre_forward(state.hidden, state.x, state.ln, fusion.config)
        shared = replace(state, hidden=a, residual=residual)
        members = [self.adapters[leaf] for c in present for leaf in ([c] if isinstance(c, str) else c.leaves())
                   if leaf in self.adapters]
        # fusion.fuse computes the members' up-projections from ``inputs`` with members_up; in a training step
        # it recomputes them in the backward rather than keep them (docs/numerics.md, AdapterFusion).
        if all(isinstance(c, str) for c in present) and stackable(members):  # one product for all members
            return replace(shared, hidden=fusion.fuse(query, residual, partial(stacked_bottlenecks, members), (a,),
                                                      members), last=last)

        def members_up(a: torch.Tensor, residual: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
            ups = []
            for child in present:
                if isinstance(child, Block):
                    child_state = self._run(child, replace(shared, hidden=a, x=x, residual=residual, up=None,
                                                           last=None))
                    if child_state.up is not None:
                        ups.append(child_state.up)
                else:
                    ups.append(self.adapters[child](a, residual)[1])
            return ups

        return replace(shared, hidden=fusion.fuse(query, residual, members_up, (a, residual, state.x), members),
                       last=last)
