"""Invertible adapter layers (torch): AdapterHub's ``NICECouplingBlock`` (adapters 1.3.0, ``methods/modeling.py``).

With ``x = [x1, x2]`` split on the channel axis (``x1``: the first ``E // 2`` channels)::

    forward:  y1 = x1 + F(x2);  y2 = x2 + G(y1)
    reverse:  x2 = y2 - G(y1);  x1 = y1 - F(x2)

``F`` and ``G`` are ``Linear -> act -> Linear`` subnets (``F.0``, ``F.2``: AdapterHub's module names, so its
weights load key for key), initialised as AdapterHub's ``init_bert_weights`` does (normal(0, 0.02), zero bias).
The forward pass runs on the embeddings' output; the reverse pass is what an LM head applies before its
output embeddings (AdapterHub's ``rev=True``). See ``invertible`` for the configuration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..heads import Activation
from .invertible import halves, subnet_width


def _subnet(config: Any, inputs: int, outputs: int) -> nn.Sequential:
    width = subnet_width(config, inputs)
    return nn.Sequential(nn.Linear(inputs, width), Activation(config.non_linearity), nn.Linear(width, outputs))


class NICECouplingBlock(nn.Module):
    """An additive coupling block: invertible by construction, exactly (up to fp rounding)."""

    def __init__(self, config: Any, embedding_size: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        first, second = halves(embedding_size)
        self.split = first
        self.F = _subnet(config, second, first)
        self.G = _subnet(config, first, second)
        with torch.no_grad():
            for module in (*self.F, *self.G):
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.02, generator=generator)
                    module.bias.zero_()

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        x1, x2 = x[..., : self.split], x[..., self.split:]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), -1)


def invertible_layer(config: Any, embedding_size: int, generator: torch.Generator | None = None) -> nn.Module | None:
    """The invertible layer a configuration asks for (``inv_adapter``), or None."""
    if config.inv_adapter is None:
        return None
    # the configuration refuses every other kind (invertible.check), so only NICE reaches this point
    return NICECouplingBlock(config, embedding_size, generator)
