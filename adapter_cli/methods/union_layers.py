"""The modules of a config union (configuration in ``union``): one adapter set per part, kept under the
part's method (``parts.prefix_tuning``, ``parts.bottleneck``, ``parts.lora``), each stitched in at its own
sites under the union's name."""

from __future__ import annotations

from torch import nn

from .union import UnionConfig


class UnionAdapterSet(nn.Module):
    def __init__(self, config: UnionConfig, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.parts = nn.ModuleDict(parts)
