"""Stitching prefix-tuning adapters into a transformers model through its public attention interface.

A prefix joins every self-attention module, and in an encoder-decoder every cross-attention module too, each
served by the adapter's generator for its location (``Architecture.attention_paths``). T5 hands its attention
a relative position bias made for the keys without the prefix: the site gives it the one AdapterHub computes
for the prefixed keys (``PrefixSite._position_bias``).

The models supported here compute self-attention with ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
(transformers 5); in a decoder the keys it receives are after the rotary embedding and the key/value cache, so a
prefix joins the cached keys at every step and is never stored in the cache (as in AdapterHub), and where
transformers leaves a decoder's causal mask out for SDPA's ``is_causal`` an explicit one is given instead. When the first prefix adapter is added, the model's implementation name is switched from
``sdpa`` (or ``eager``) to ``adapt_prefix_sdpa`` (``adapt_prefix_eager``), registered in transformers'
``AttentionInterface`` and ``AttentionMaskInterface`` with the original mask function. That function looks up
the attention module's ``PrefixSite``; when no prefix adapter is active it calls the original implementation
with the same arguments (bit-identical to plain transformers), otherwise it prepends the prefixes' keys and
values, extends the mask with "attend" for them, and calls the original implementation: SDPA stays SDPA.

* The prefixes of the active composition are made once per call of the base model (a forward pre-hook), for
  all layers at once, before any layer runs, so that gradient checkpointing recomputes layers without
  making them again (``wrap_checkpoint`` gives a recomputation the prefixes of the pass it recomputes).
* ``stack(p, q)``: both prefixes, ``q``'s first, as AdapterHub concatenates them; other members of the stack
  run at their own sites. ``batch_split``/``parallel``: each group of rows attends with its own prefixes (the
  attention runs per group when they differ). ``fuse`` and ``average`` have no meaning for a prefix (AdapterHub
  raises), so a prefix adapter there is refused in one line (``check_composition``).
* Gated prefixes (UniPELT) read the attention's input, kept by a forward pre-hook on the attention module.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from .composition import Average, BatchSplit, Block, Fuse, Stack
from .errors import CompositionError

IMPLEMENTATION = "adapt_prefix_"  # + the wrapped implementation's name
_REGISTERED: set[str] = set()
Groups = list[tuple[int, int, tuple[str, ...]]]  # rows [start, stop) and the prefix adapters they attend to


def check_composition(block: Block, prefixes: Collection[str]) -> None:
    """Refuse (one line) a prefix adapter inside fuse or average."""
    def walk(node: Any) -> None:
        if isinstance(node, (Fuse, Average)):
            inside = [n for n in node.leaves() if n in prefixes]
            if inside:
                raise CompositionError(f"composition {block}: prefix-tuning adapter {inside[0]!r} cannot run "
                                       f"inside {type(node).__name__.lower()}(...), which mixes adapter outputs; "
                                       "a prefix adds attention keys, so use it in stack, parallel or batch_split")
        for child in getattr(node, "children", ()):
            walk(child)

    if prefixes:
        walk(block)


def _register(inner: str) -> str:
    """The attention implementation that wraps ``inner``, registered with transformers on first use."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = IMPLEMENTATION + inner
    if name not in _REGISTERED:
        AttentionInterface.register(name, _attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
        _REGISTERED.add(name)
    return name


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    return module._adapt_prefix_site(module, query, key, value, attention_mask, **kwargs)


def _pad_mask(mask: torch.Tensor | None, extra: int) -> torch.Tensor | None:
    """The mask with ``extra`` attended key positions in front (bool: True, additive float: 0, 2-D: 1)."""
    if mask is None:
        return None
    shape = (*mask.shape[:-1], extra)
    value = True if mask.dtype == torch.bool else (1 if mask.dim() == 2 else 0)
    return torch.cat([torch.full(shape, value, dtype=mask.dtype, device=mask.device), mask], dim=-1)


def _causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """A decoder's causal mask [1, 1, queries, keys] (True: attend), the queries the last ``queries`` positions.
    transformers leaves it out (None) when SDPA's own ``is_causal`` can stand for it, but that aligns the
    diagonal to the first key, which would be a prefix's."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)[None, None]


def groups(block: Any, start: int, stop: int, prefixes: Collection[str]) -> Groups:
    """Which prefixes each run of rows attends to, under ``block`` (rows [start, stop))."""
    if isinstance(block, str):
        return [(start, stop, (block,) if block in prefixes else ())]
    if isinstance(block, BatchSplit):
        out: Groups = []
        for child, size in zip(block.children, block.sizes):
            out += groups(child, start, min(start + size, stop), prefixes)
            start += size
        return out
    if isinstance(block, Stack):
        out = [(start, stop, ())]
        for child in block.children:
            out = _refine(out, groups(child, start, stop, prefixes))
        return out
    return [(start, stop, ())]  # fuse, average: no prefix inside (check_composition)


def _refine(outer: Groups, inner: Groups) -> Groups:
    """Two partitions of the same rows, intersected; each piece attends to the outer then the inner names."""
    out: Groups = []
    for a0, a1, names in outer:
        for b0, b1, more in inner:
            lo, hi = max(a0, b0), min(a1, b1)
            if lo < hi:
                out.append((lo, hi, names + more))
    merged: Groups = []
    for piece in out:  # neighbours with the same prefixes attend together
        if merged and merged[-1][2] == piece[2] and merged[-1][1] == piece[0]:
            merged[-1] = (merged[-1][0], piece[1], piece[2])
        else:
            merged.append(piece)
    return merged


class _PerThread:
    """Per thread: the prefixes made for the base model's current call, and each attention's input (gates).
    Copies start empty (threading.local cannot be copied)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self._local, key, default)

    def set(self, key: str, value: Any) -> None:
        setattr(self._local, key, value)

    def __deepcopy__(self, memo: dict) -> _PerThread:
        return _PerThread()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()


class PrefixSite:
    """One attention module and the prefix adapters that prefix it. ``location``: which of an adapter's
    generators serves it ("" in a model with one stack; "encoder", "self" or "cross" in an encoder-decoder);
    ``earlier``: the sites of its location before it, whose prefixes decide T5's relative position bias here
    (the first one's module holds it)."""

    def __init__(self, module: nn.Module, layer: int, sites: PrefixSites, inner: Any, location: str = "",
                 earlier: Collection[PrefixSite] = ()) -> None:
        self.layer, self.sites, self.inner, self.module = layer, sites, inner, module
        self.location, self.stack = location, [*earlier, self]  # its location's sites up to this one
        self.prefixes: dict[str, nn.Module] = {}
        self._input = _PerThread()
        if getattr(module, "_adapt_prefix_site", None) is not None:
            from .errors import UsageError

            raise UsageError("this transformers model already has prefix-tuning adapters stitched in by another "
                             "AdapterModel; load a fresh copy of the base model")
        module._adapt_prefix_site = self
        self._handle = module.register_forward_pre_hook(self._keep_input, with_kwargs=True)

    def _keep_input(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._input.set("x", args[0] if args else kwargs.get("hidden_states"))

    def __call__(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        context = self.sites.context
        setup = context.setup
        # T5 hands each layer's position bias to the next, made for the prefixes of the layers before: a layer
        # without a prefix of its own still answers to those (``_position_bias``)
        biased = kwargs.get("position_bias") is not None
        concerned = {n: a for site in self.stack for n, a in site.prefixes.items()} if biased else self.prefixes
        if setup is None or not any(name in context.leaves for name in concerned):
            return self.inner(module, query, key, value, mask, **kwargs)
        found = groups(setup, 0, query.shape[0], concerned)
        try:
            if len(found) == 1:
                return self._attend(module, query, key, value, mask, slice(None), found[0][2], kwargs)
            outputs = [self._attend(module, query[a:b], key[a:b], value[a:b], None if mask is None else mask[a:b],
                                    slice(a, b), names, kwargs)[0] for a, b, names in found]
            return torch.cat(outputs, dim=0), None  # per-group attention weights have different widths
        finally:
            self._input.set("x", None)  # the gates' input: not kept beyond this call

    def _attend(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None, rows: slice, names: tuple[str, ...], kwargs: dict) -> Any:
        own = tuple(n for n in names if n in self.prefixes)
        if kwargs.get("position_bias") is not None:
            widths = [sum(site.prefixes[n].config.prefix_length for n in names if n in site.prefixes)
                      for site in self.stack]
            kwargs = {**kwargs, "position_bias": self._position_bias(kwargs["position_bias"], query, key, widths)}
        if own:
            keys, values = [], []
            for name in reversed(own):  # the last of a stack ends up first, as AdapterHub concatenates
                k, v = self._prefix(name, rows)
                keys.append(k.to(key.dtype))
                values.append(v.to(value.dtype))
            if mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1:
                mask = _causal_mask(query.shape[2], key.shape[2], query.device)
            mask = _pad_mask(mask, sum(k.shape[2] for k in keys))
            key, value = torch.cat([*keys, key], dim=2), torch.cat([*values, value], dim=2)
        return self.inner(module, query, key, value, mask, **kwargs)

    def _position_bias(self, bias: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                       widths: list[int]) -> torch.Tensor:
        """T5's position bias over the prefixed keys, as AdapterHub computes it (``widths``: the prefix width of
        each layer of this location up to this one). The first layer makes the relative bias for its keys with
        the prefix in front (so the real keys' relative positions count the prefix too) and each layer hands its
        bias to the next; a layer whose keys are of another width makes a new one, and only the first layer has
        the relative embedding, so from the first change of width on (``leave_out``) there is no relative bias
        at all. Cross-attention never has one."""
        width, keys, first = widths[-1], key.shape[2], self.stack[0].module
        relative = getattr(first, "has_relative_attention_bias", False)
        if relative and all(w == width for w in widths):
            if not width:
                return bias
            return first.compute_bias(query.shape[2], width + keys, device=query.device,
                                      past_seen_tokens=keys - query.shape[2]).to(bias.dtype)
        if not width and not relative:
            return bias
        return bias.new_zeros((1, bias.shape[1], query.shape[2], width + keys))

    def _prefix(self, name: str, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's prefix keys and values [rows, heads, prefix_length, head_dim], gated if the adapter is."""
        adapter = self.prefixes[name]
        states = self.sites.states(name)[self.location]
        j = adapter.locations[self.location].index(self.layer)
        keys, values = states[2 * j, rows], states[2 * j + 1, rows]
        gate = adapter.gate(self.location, self.layer)
        if gate is not None:
            x = self._input.get("x")[rows]
            g = torch.mean(torch.sigmoid(gate(x)), dim=1)  # [rows, 1 or 2], the mean over every token as AdapterHub
            keys, values = keys * g[:, 0].view(-1, 1, 1, 1), values * g[:, -1].view(-1, 1, 1, 1)
        return keys, values


class PrefixSites:
    """The model's prefix sites (one per attention module a prefix can join, made on first use) and the pre-hook
    on the base model that makes the active prefixes for each call. ``paths``: the model's attention modules,
    ``Architecture.attention_paths`` (place, layer, location, module path)."""

    def __init__(self, base: nn.Module, paths: Callable[[], list[tuple[str, int, str, str]]], context: Any) -> None:
        self.base, self.paths, self.context = base, paths, context
        self.sites: dict[tuple[str, int], PrefixSite] = {}
        self._made = _PerThread()
        self._handle: Any = None

    @property
    def names(self) -> set[str]:
        return {name for site in self.sites.values() for name in site.prefixes}

    def adapter(self, name: str) -> nn.Module:
        return next(site.prefixes[name] for site in self.sites.values() if name in site.prefixes)

    def add(self, name: str, place: str, layer: int, adapter: nn.Module) -> None:
        if self._handle is None:
            self._install()
        self.sites[place, layer].prefixes[name] = adapter

    def remove(self, name: str) -> None:
        for site in self.sites.values():
            site.prefixes.pop(name, None)

    def _install(self) -> None:
        """Switch the model to the wrapping implementation and give every attention module a prefix can join a
        site (those without a prefix adapter, e.g. in ``leave_out``, then just call the wrapped implementation)."""
        self._wrap()
        stacks: dict[str, list[PrefixSite]] = {}  # per location, its sites in the order the model runs them
        for place, layer, location, path in self.paths():
            module = self.base.get_submodule(path)
            site = PrefixSite(module, layer, self, self._inner(module), location, stacks.get(location, ()))
            stacks.setdefault(location, []).append(site)
            self.sites[place, layer] = site
        self._handle = self.base.register_forward_pre_hook(self._make, with_kwargs=True)

    def _wrap(self) -> None:
        """Make the model's attention implementation the wrapper of the one it has (again, when someone set
        another with ``set_attn_implementation`` since: the prefixes would silently stop otherwise)."""
        current = self.base.config._attn_implementation or "eager"
        if current.startswith(IMPLEMENTATION):
            self._wrapped = current.removeprefix(IMPLEMENTATION)
            return
        self._wrapped = current
        self.base.set_attn_implementation(_register(current))
        for site in self.sites.values():
            site.inner = self._inner(site.module)

    def _inner(self, module: nn.Module) -> Any:
        """The implementation the model used before (its own eager function for "eager", as transformers does)."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        return ALL_ATTENTION_FUNCTIONS.get_interface(self._wrapped, eager)

    def _make(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Make the prefixes of the active composition for this call (and forget the last call's)."""
        made: dict[str, torch.Tensor] = {}
        active = [n for n in self.names if n in self.context.leaves]
        if active:
            self._wrap()
            inputs = kwargs.get("input_ids", args[0] if args else None)
            for other in ("inputs_embeds", "pixel_values", "decoder_input_ids", "decoder_inputs_embeds"):
                inputs = kwargs.get(other) if inputs is None else inputs  # only the batch size is read
            made = {n: self.adapter(n).states(int(inputs.shape[0])) for n in active}
        self._made.set("states", made)

    def states(self, name: str) -> torch.Tensor:
        return self._made.get("states", {})[name]

    def wrap_checkpoint(self, checkpoint: Any) -> Any:
        """Wrap a gradient-checkpointing function so that a recomputation in backward attends to the prefixes
        of the pass it recomputes (another call may have made others in between)."""

        def run(function: Any, *args: Any, **kwargs: Any) -> Any:
            made = self._made.get("states", {})

            def with_states(*a: Any, **k: Any) -> Any:
                previous = self._made.get("states", {})
                self._made.set("states", made)
                try:
                    return function(*a, **k)
                finally:
                    self._made.set("states", previous)

            return checkpoint(with_states, *args, **kwargs)

        return run
