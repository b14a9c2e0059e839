"""Invertible adapters stitched onto the embeddings' output with a forward hook (no copied modeling code).

AdapterHub runs, on the output of the embeddings module, the invertible layer of the *first* adapter of the
active composition, if that adapter has one (``InvertibleAdaptersMixin.invertible_adapters_forward``): under
``stack(lang, task)`` lang's, under ``stack(lang, fuse(a, b))`` lang's, under ``parallel``/``batch_split``
the first member's, on every row (before the rows are replicated or split). It silently skips every other
invertible layer. Here that selection is the same, and what the reference would do silently is refused in
one line (``check_placement``):

* an adapter with an invertible layer anywhere but at the bottom of the composition (it would not run);
* a ``parallel``/``batch_split`` at the bottom whose members do not all start with that adapter (its
  invertible layer would run on the rows of a member that does not use it).

The hook is a bound method, so ``copy.deepcopy(model)`` gives the copy a hook of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection

import torch
from torch import nn

from .composition import BatchSplit, Block, Parallel
from .errors import CompositionError

if TYPE_CHECKING:
    from .stitching import ForwardContext


def first_adapter(node: Any) -> str:
    """The first adapter of a composition (AdapterHub's ``AdapterCompositionBlock.first``)."""
    while isinstance(node, Block):
        node = node.children[0]
    return node


def check_placement(block: Block | None, invertible: Collection[str]) -> None:
    """Refuse compositions in which an invertible layer would be skipped, or run on rows that do not use it."""
    if block is None or set(invertible).isdisjoint(block.leaves()):
        return
    first = first_adapter(block)
    for name in dict.fromkeys(block.leaves()):
        if name in invertible and name != first:
            raise CompositionError(
                f"adapter {name!r} has an invertible adapter but is not at the bottom of {block}: only the first "
                f"adapter's invertible adapter runs (on the embeddings), so this one would be skipped; put {name!r} "
                f"first, e.g. stack({name},...)")
    if first not in invertible:
        return
    node: Any = block
    while isinstance(node, Block):  # the blocks whose first adapter is ``first``: the bottom of the composition
        if isinstance(node, (Parallel, BatchSplit)):
            others = [c for c in node.children if first_adapter(c) != first]
            if others:
                raise CompositionError(
                    f"{block}: the invertible adapter of {first!r} runs on every row (on the embeddings), also on "
                    f"the rows of {others[0]}, which does not start with {first!r}; start every member with it, "
                    f"e.g. {node.kind}(stack({first},a),stack({first},b))")
        node = node.children[0]


class EmbeddingSite:
    """The invertible layers of the loaded adapters, by adapter name, and the hook on the embeddings module."""

    def __init__(self, embeddings: nn.Module, context: ForwardContext, on_input: bool = False) -> None:
        """``on_input``: transform the module's first argument instead of its output (T5: the first block's)."""
        self.context = context
        self.adapters: dict[str, nn.Module] = {}
        self._handle = embeddings.register_forward_pre_hook(self._before_module, with_kwargs=True) if on_input \
            else embeddings.register_forward_hook(self._after_embeddings)

    def check(self, block: Block | None) -> None:
        check_placement(block, frozenset(self.adapters))

    def active(self, setup: Block | None) -> nn.Module | None:
        """The invertible layer that runs under ``setup`` (checked), or None."""
        if setup is None or not self.adapters:
            return None
        self.check(setup)
        return self.adapters.get(first_adapter(setup))

    def _after_embeddings(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        layer = self.active(self.context.setup)
        return None if layer is None else layer(output)  # None: transformers' output, untouched

    def _before_module(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        layer = self.active(self.context.setup)
        if layer is None:
            return None
        if args:
            return (layer(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": layer(kwargs["hidden_states"])}

    def inverse(self, hidden: torch.Tensor, setup: Block | None) -> torch.Tensor:
        """The reverse pass of the invertible layer that runs under ``setup`` (for an LM head's input), or
        ``hidden`` itself when none does."""
        layer = self.active(setup)
        return hidden if layer is None else layer(hidden, rev=True)
