"""The modules of a prefix-tuning adapter (configuration in ``prefix``): the prefix generator, reparametrised
or flat, and the optional per-layer gates. ``prefix_sites`` places what they make into each attention call.

The generator makes every prefixed layer's keys and values at once, as AdapterHub's does: a tensor viewed as
[batch, prefix_length, layers × 2, heads, head_dim], then permuted to [layers × 2, batch, heads,
prefix_length, head_dim], so that layer ``j`` (``j``-th of the prefixed layers) reads keys ``2j`` and values
``2j + 1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..heads import Activation
from .prefix import PrefixTuningConfig


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """AdapterHub reseeds the global generator before drawing; we do so in a forked state, leaving the caller's."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


class _Generator(nn.Module):
    """What both generators know: the shape they make keys and values in. Parameters are drawn inside
    ``_seeded`` (AdapterHub reseeds the global generator with ``init_weights_seed`` first; we fork it)."""

    def __init__(self, prefix_length: int, layers: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.prefix_length, self.layers, self.heads, self.head_dim = prefix_length, layers, heads, head_dim

    def values(self) -> torch.Tensor:  # [prefix_length, layers × 2 × hidden]
        raise NotImplementedError


class ReparametrisedPrefix(_Generator):
    """``wte`` (prefix_length × hidden) through hidden → bottleneck → act → layers × 2 × key/value width (the
    hidden size, or less under grouped-query attention)."""

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, layers: int, heads: int, head_dim: int) -> None:
        super().__init__(config.prefix_length, layers, heads, head_dim)
        with _seeded(config.init_weights_seed):
            self.wte = nn.Embedding(config.prefix_length, hidden_size)
            self.control_trans = nn.Sequential(
                nn.Linear(hidden_size, config.bottleneck_size), Activation(config.non_linearity.lower()),
                nn.Linear(config.bottleneck_size, layers * 2 * heads * self.head_dim))

    def values(self) -> torch.Tensor:
        """The MLP run once over the prefix table."""
        return self.control_trans(self.wte.weight)


class FlatPrefix(_Generator):
    """The keys and values stored directly (``control_trans``, one vector), AdapterHub's flat prefix."""

    def __init__(self, prefix_length: int, layers: int, heads: int, head_dim: int,
                 values: torch.Tensor | None = None, seed: int | None = None) -> None:
        super().__init__(prefix_length, layers, heads, head_dim)
        with _seeded(seed):
            drawn = torch.randn(prefix_length * layers * 2 * heads * head_dim) if values is None else values
        self.control_trans = nn.Parameter(drawn)

    def values(self) -> torch.Tensor:
        return self.control_trans.view(self.prefix_length, -1)


class PrefixAdapterSet(nn.Module):
    """One prefix-tuning adapter: its generator (``prefix``; an encoder-decoder's ``prefixes``, one per location)
    and, when gated, one gate per prefixed layer (``gates``; an encoder-decoder's cross-attention's in
    ``cross_gates``)."""

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, num_layers: int, heads: int,
                 kv_heads: int | None = None, head_dim: int | None = None, encoder_layers: int | None = None) -> None:
        super().__init__()
        if head_dim is None and hidden_size % heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the {heads} attention heads")
        self.config = config
        self.locations = config.locations(num_layers, encoder_layers)
        head_dim = head_dim or hidden_size // heads
        kv_heads = kv_heads or heads  # a prefix has as many heads as the keys it joins
        generators = {}
        for location, layers in self.locations.items():  # drawn in AdapterHub's order of locations
            generators[location] = FlatPrefix(config.prefix_length, len(layers), kv_heads, head_dim,
                                              seed=config.init_weights_seed) if config.flat \
                else ReparametrisedPrefix(config, hidden_size, len(layers), kv_heads, head_dim)
        if "" in generators:
            self.prefix = generators[""]
        else:
            self.prefixes = nn.ModuleDict(generators)
        self.dropout = nn.Dropout(config.dropout)
        self.gates, self.cross_gates = nn.ModuleDict(), nn.ModuleDict()
        for location, layers in self.locations.items():
            for i in layers if config.gates else ():
                gate = nn.Linear(hidden_size, config.gates)
                nn.init.normal_(gate.weight, std=0.02)  # as AdapterHub; the bias keeps nn.Linear's initialisation
                (self.cross_gates if location == "cross" else self.gates)[str(i)] = gate

    def generators(self) -> dict[str, _Generator]:
        return {"": self.prefix} if "" in self.locations else dict(self.prefixes.items())

    def gate(self, location: str, layer: int) -> nn.Module | None:
        gates = self.cross_gates if location == "cross" else self.gates
        return gates[str(layer)] if str(layer) in gates else None

    def sites(self) -> list[tuple[str, int, nn.Module]]:
        return [("cross_attention" if location == "cross" else "attention", i, self)
                for location, layers in self.locations.items() for i in layers]

    def states(self, batch: int) -> dict[str, torch.Tensor]:
        """Per location, the keys and values of every prefixed layer: [layers × 2, batch, heads, prefix_length,
        head_dim].

        In eval mode (or without dropout) every row is the same, so one row is made and expanded; in training
        each row gets its own dropout mask, as in AdapterHub."""
        out = {}
        for location, p in self.generators().items():
            one = p.values().view(1, p.prefix_length, p.layers * 2, p.heads, p.head_dim)
            rows = one.expand(batch, -1, -1, -1, -1)
            if self.training and self.dropout.p > 0:
                rows = self.dropout(rows)
            out[location] = rows.permute(2, 0, 3, 1, 4)
        return out

    def eject(self) -> None:
        """Replace each reparametrised generator by its flat export (same outputs); training it further then
        trains the flat vector."""
        flat = {}
        for location, old in self.generators().items():
            if isinstance(old, FlatPrefix):
                return
            with torch.no_grad():
                weights = old.values().reshape(-1).detach().clone()
            flat[location] = FlatPrefix(old.prefix_length, old.layers, old.heads, old.head_dim, values=weights)
            flat[location].control_trans.requires_grad_(old.wte.weight.requires_grad)
        self.config = self.config.replace(flat=True)
        if "" in flat:
            self.prefix = flat[""]
        else:
            self.prefixes = nn.ModuleDict(flat)


def flat_weights(config: PrefixTuningConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reparametrised prefix's weights (ours) made flat, from the weights alone (no base model): the MLP run
    once over the prefix table of each generator, as ``PrefixAdapterSet.eject`` does; gates are kept."""
    from .activations import activation

    heads = sorted({k[: -len("wte.weight")] for k in weights if k.endswith("wte.weight")})
    out = {k: v for k, v in weights.items() if not k.startswith(("prefix.", "prefixes."))}
    with torch.no_grad():
        for head in heads:  # "prefix." or "prefixes.<location>."
            w = {k.removeprefix(head): v.float() for k, v in weights.items() if k.startswith(head)}
            hidden = w["wte.weight"] @ w["control_trans.0.weight"].T + w["control_trans.0.bias"]
            made = activation(config.non_linearity.lower())(hidden) @ w["control_trans.2.weight"].T \
                + w["control_trans.2.bias"]
            out[f"{head}control_trans"] = made.reshape(-1).to(weights[f"{head}wte.weight"].dtype)
    return out
