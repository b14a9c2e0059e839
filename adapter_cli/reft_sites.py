"""Stitching ReFT adapters into a transformers model: a forward hook on each transformer layer edits the
hidden states that layer outputs, at the positions its adapter names, as AdapterHub's ``ReftLayer`` does.

* Which positions: AdapterHub's rule, from the attention mask given to the base model (a forward pre-hook on
  the base model keeps it for the current call). Row ``i`` starts at ``offset_i`` (its first 1) and has
  ``length_i`` real tokens; the prefix is ``offset_i + [0, p)`` and the suffix ``offset_i + length_i - [s, 0)``,
  with ``p``, ``s`` the configured counts cut to the padded length. Without a mask every row is whole.
  Where the reference would index outside a row (a padded row shorter than the suffix, a left-padded row
  shorter than the prefix), or write prefix states into suffix positions (more suffix positions than the
  sequence has, beside a prefix), we refuse in one line instead.
* Which adapter: AdapterHub runs the *first* adapter of the active composition at a layer output, when that
  is a ReFT adapter, and ignores ReFT adapters anywhere else. So a ReFT adapter runs alone or first in a
  stack (``stack(reft, lora)``: the other members run at their own sites); every other place for it (later
  in a stack, in parallel, batch_split, average or fuse, two ReFT adapters at once) is refused in one line
  before any forward pass (``check_composition``), instead of being ignored or applied to every row.

The hook is prepended, so transformers' own output-recording hooks (``output_hidden_states``) see the edited
states, as the reference's hidden states do. Hooks are bound methods, so ``copy.deepcopy(model)`` works.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from .composition import Block, one_first_in_stack
from .errors import UsageError


def check_composition(block: Block, refts: Collection[str]) -> None:
    """Refuse (one line) a composition that places a ReFT adapter where AdapterHub would not run it."""
    one_first_in_stack(block, refts, "ReFT", "AdapterHub ignores it anywhere else or applies it to every row")


class _Positions:
    """Per thread: the attention mask of the base model's current call, and the gather indices computed
    from it (kept for the other layers of the same call). Copies start empty (threading.local)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def state(self) -> tuple[Any, dict]:
        return getattr(self._local, "mask", None), getattr(self._local, "cache", {})

    def set(self, state: tuple[Any, dict]) -> None:
        self._local.mask, self._local.cache = state

    def __deepcopy__(self, memo: dict) -> _Positions:
        return _Positions()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()


def _rows(mask: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first real position and the position after its last one (AdapterHub's offsets and
    offsets + seqlens); the whole row when no mask was given."""
    rows, length = hidden.shape[0], hidden.shape[1]
    if mask is None:
        return (torch.zeros(rows, dtype=torch.long, device=hidden.device),
                torch.full((rows,), length, dtype=torch.long, device=hidden.device))
    if mask.dim() != 2 or tuple(mask.shape) != (rows, length):
        raise UsageError(f"a ReFT adapter reads the attention_mask [batch, tokens], got shape {tuple(mask.shape)} "
                         f"for hidden states of {rows} rows and {length} tokens")
    mask = mask.to(hidden.device)
    first = mask.long().argmax(1)  # the first 1 of each row (0 for a row of padding only)
    return first, first + (mask == 1).sum(dim=-1)


def _first_bad(condition: torch.Tensor) -> int | None:
    return int(condition.nonzero()[0, 0]) if bool(condition.any()) else None


def _too_short(name: str, where: str, count: int, row: int, first: torch.Tensor, end: torch.Tensor) -> UsageError:
    return UsageError(f"ReFT adapter {name!r} edits the {where} {count} tokens of each row, but row {row} has "
                      f"{int(end[row] - first[row])} (by its attention_mask); give longer inputs or lower "
                      f"{'prefix' if where == 'first' else 'suffix'}_positions")


def _indices(name: str, module: Any, mask: Any, hidden: torch.Tensor) -> tuple[Any, Any]:
    """The gather indices [B, k, H] of the prefix and suffix positions (None where the count is 0)."""
    rows, length, width = hidden.shape
    prefix, suffix = module.prefix_positions, module.suffix_positions
    if prefix and suffix > length:
        raise UsageError(f"ReFT adapter {name!r} edits the first {prefix} and the last {suffix} tokens, but the "
                         f"inputs have {length}; give inputs of at least {suffix} tokens or lower suffix_positions "
                         "(AdapterHub would write prefix states into suffix positions)")
    first, end = _rows(mask, hidden)

    def index(start: torch.Tensor, span: int) -> torch.Tensor:
        steps = torch.arange(span, device=hidden.device).view(1, span, 1).expand(rows, span, width)
        return start.view(-1, 1, 1) + steps

    prefix_index = suffix_index = None
    if prefix:
        span = min(prefix, length)  # the reference cuts the count to the padded length
        row = _first_bad(first + span > length)  # a left-padded row shorter than the prefix
        if row is not None:
            raise _too_short(name, "first", prefix, row, first, end)
        prefix_index = index(first, span)
    if suffix:
        span = min(suffix, length)
        # A row shorter than the suffix is refused whatever else is in the batch: the reference cuts the count to
        # the batch's padded length, so such a row ran alone but failed beside a longer one (an answer that
        # depended on batching, and a training run that died at the first mixed batch).
        row = _first_bad(end - first < suffix)
        if row is not None:
            raise _too_short(name, "last", suffix, row, first, end)
        suffix_index = index(end - span, span)
    return prefix_index, suffix_index


class ReftSite:
    """One transformer layer and the ReFT adapters that edit its output."""

    def __init__(self, layer_module: nn.Module, layer: int, context: Any, positions: _Positions) -> None:
        self.layer, self.context, self.positions = layer, context, positions
        self.refts: dict[str, nn.Module] = {}
        self._handle = layer_module.register_forward_hook(self._forward_hook, prepend=True)

    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        setup = self.context.setup
        if setup is None or not self.refts:
            return None
        name = setup.leaves()[0]  # the reference runs the composition's first adapter here, if it is one
        reft = self.refts.get(name)
        if reft is None:
            return None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        mask, cache = self.positions.state()
        key = (name, tuple(hidden.shape), hidden.device)
        if key not in cache:
            cache[key] = _indices(name, reft, mask, hidden)
        edited = reft(hidden, *cache[key])
        return edited if isinstance(output, torch.Tensor) else (edited, *output[1:])


class ReftSites:
    """The model's ReFT sites (one per layer, made on first use) and the pre-hook that keeps the mask."""

    def __init__(self, base: nn.Module, layers_path: str, context: Any) -> None:
        self.base, self.layers_path, self.context = base, layers_path, context
        self.positions = _Positions()
        self.sites: dict[int, ReftSite] = {}
        self._handle: Any = None

    def add(self, name: str, layer: int, module: nn.Module) -> None:
        if self._handle is None:
            self._handle = self.base.register_forward_pre_hook(self._keep_mask, with_kwargs=True)
        if layer not in self.sites:
            layer_module = self.base.get_submodule(self.layers_path)[layer]
            self.sites[layer] = ReftSite(layer_module, layer, self.context, self.positions)
        self.sites[layer].refts[name] = module

    def remove(self, name: str) -> None:
        for site in self.sites.values():
            site.refts.pop(name, None)

    def _keep_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # As AdapterHub reads it: the attention_mask keyword, else the second positional argument.
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.positions.set((mask, {}))

    def wrap_checkpoint(self, checkpoint: Any) -> Any:
        """Wrap a gradient-checkpointing function so that a recomputation in backward sees the mask of the
        forward pass it recomputes (another may have come in between). transformers 5.24 checkpoints a layer's
        ``forward``, so the hooks stay outside and are not recomputed; a version that checkpoints ``__call__``
        (as 4.x did) recomputes them, and then this matters."""

        def run(function: Any, *args: Any, **kwargs: Any) -> Any:
            state = self.positions.state()

            def with_positions(*a: Any, **k: Any) -> Any:
                previous = self.positions.state()
                self.positions.set(state)
                try:
                    return function(*a, **k)
                finally:
                    self.positions.set(previous)

            return checkpoint(with_positions, *args, **kwargs)

        return run
