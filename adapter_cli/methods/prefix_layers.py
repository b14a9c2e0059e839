"""The modules of a prefix-tuning adapter (configuration in ``prefix``): the prefix generator, reparametrised
or flat, and the optional per-layer gates. ``prefix_sites`` places what they make into each attention call.

The generator makes every prefixed layer's keys and values at once, as AdapterHub's does: a tensor viewed as
[batch, prefix_length, layers × 2, heads, head_dim], then permuted to [layers × 2, batch, heads,
prefix_length, head_dim], so that layer ``j`` (``j``-th of the prefixed layers) reads keys ``2j`` and values
``2j + 1``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..heads import Activation
from .prefix import PrefixTuningConfig


def _seeded(seed: int | None):  # AdapterHub reseeds the global generator; we fork it and leave the caller's
    return torch.random.fork_rng(devices=[], enabled=seed is not None)


class ReparametrisedPrefix(nn.Module):
    """``wte`` (prefix_length × hidden) through hidden → bottleneck → act → layers × 2 × hidden."""

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, layers: int, heads: int) -> None:
        super().__init__()
        self.prefix_length, self.layers, self.heads = config.prefix_length, layers, heads
        self.head_dim = hidden_size // heads
        with _seeded(config.init_weights_seed):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            self.wte = nn.Embedding(config.prefix_length, hidden_size)
            self.control_trans = nn.Sequential(
                nn.Linear(hidden_size, config.bottleneck_size), Activation(config.non_linearity.lower()),
                nn.Linear(config.bottleneck_size, layers * 2 * heads * self.head_dim))

    def values(self) -> torch.Tensor:
        """[prefix_length, layers × 2 × hidden]: the MLP run once over the prefix table."""
        return self.control_trans(self.wte.weight)

    def flat(self) -> torch.Tensor:
        """The flat export (AdapterHub's ``eject``): the same numbers as one vector."""
        return self.values().reshape(-1)


class FlatPrefix(nn.Module):
    """The keys and values stored directly (``control_trans``, one vector), AdapterHub's flat prefix."""

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, layers: int, heads: int) -> None:
        super().__init__()
        self.prefix_length, self.layers, self.heads = config.prefix_length, layers, heads
        self.head_dim = hidden_size // heads
        with _seeded(config.init_weights_seed):
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            self.control_trans = nn.Parameter(torch.randn(config.prefix_length * layers * 2 * heads * self.head_dim))

    def values(self) -> torch.Tensor:
        return self.control_trans.view(self.prefix_length, -1)


class PrefixAdapterSet(nn.Module):
    """One prefix-tuning adapter: ``prefix`` (the generator) and ``gates`` (one per prefixed layer when gated)."""

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, num_layers: int, heads: int) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the {heads} attention heads")
        self.config = config
        self.layer_ids = config.layers(num_layers)
        kind = FlatPrefix if config.flat else ReparametrisedPrefix
        self.prefix = kind(config, hidden_size, len(self.layer_ids), heads)
        self.dropout = nn.Dropout(config.dropout)
        self.gates = nn.ModuleDict()
        for i in self.layer_ids if config.gates else ():
            gate = nn.Linear(hidden_size, config.gates)
            nn.init.normal_(gate.weight, std=0.02)  # as AdapterHub; the bias keeps nn.Linear's initialisation
            self.gates[str(i)] = gate

    def sites(self) -> list[tuple[str, int, nn.Module]]:
        return [("attention", i, self) for i in self.layer_ids]

    def states(self, batch: int) -> torch.Tensor:
        """Keys and values of every prefixed layer: [layers × 2, batch, heads, prefix_length, head_dim].

        In eval mode (or without dropout) every row is the same, so one row is made and expanded; in training
        each row gets its own dropout mask, as in AdapterHub."""
        p = self.prefix
        one = p.values().view(1, p.prefix_length, p.layers * 2, p.heads, p.head_dim)
        rows = one.expand(batch, -1, -1, -1, -1)
        if self.training and self.dropout.p > 0:
            rows = self.dropout(rows)
        return rows.permute(2, 0, 3, 1, 4)

    def eject(self) -> None:
        """Replace the reparametrised generator by its flat export (same outputs); training it further then
        trains the flat vector."""
        if isinstance(self.prefix, FlatPrefix):
            return
        with torch.no_grad():
            weights = self.prefix.flat().detach().clone()
        old = self.prefix
        self.config = self.config.replace(flat=True)
        flat = FlatPrefix.__new__(FlatPrefix)
        nn.Module.__init__(flat)
        flat.prefix_length, flat.layers, flat.heads, flat.head_dim = old.prefix_length, old.layers, old.heads, \
            old.head_dim
        flat.control_trans = nn.Parameter(weights, requires_grad=old.wte.weight.requires_grad)
        self.prefix = flat


def flat_weights(config: PrefixTuningConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reparametrised prefix's weights (ours) made flat, from the weights alone (no base model): the MLP run
    once over the prefix table, as ``PrefixAdapterSet.eject`` does; gates are kept."""
    from .activations import activation

    with torch.no_grad():
        hidden = weights["prefix.wte.weight"].float() @ weights["prefix.control_trans.0.weight"].float().T \
            + weights["prefix.control_trans.0.bias"].float()
        out = activation(config.non_linearity.lower())(hidden) @ weights["prefix.control_trans.2.weight"].float().T \
            + weights["prefix.control_trans.2.bias"].float()
    kept = {k: v for k, v in weights.items() if not k.startswith("prefix.")}
    return {"prefix.control_trans": out.reshape(-1).to(weights["prefix.wte.weight"].dtype), **kept}
