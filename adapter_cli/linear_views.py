"""Linear maps that are not one ``nn.Linear``, seen as one, for LoRA-family adapters.

GPT-2 computes its projections with transformers' ``Conv1D`` (``x @ W + b``, the weight stored in x out)
and its queries, keys and values with one of them, ``c_attn``, whose outputs are the three side by side.
AdapterHub changes them as ``LoRAMergedLinear``: one LoRA per enabled matrix, each adding to its third of
the outputs. A ``LinearView`` is one such map: ``in_features``, ``out_features``, ``weight`` (out x in, a view
of the module's weight, so that merging writes through), ``bias``, and a forward hook that sees and returns
only its part of the module's output (the other parts pass unchanged, as AdapterHub pads them with zeros, or
ones for (IA)³).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class LinearView:
    """Part ``part`` of ``parts`` equal parts of the outputs of a linear-like module (Conv1D or Linear)."""

    def __init__(self, module: nn.Module, part: int = 0, parts: int = 1) -> None:
        self.module, self.part, self.parts = module, part, parts
        self.transposed = is_conv1d(module)
        full_in, full_out = (module.weight.shape if self.transposed else module.weight.shape[::-1])
        if full_out % parts:
            raise ValueError(f"{full_out} outputs do not split into {parts} equal parts")
        self.in_features, self.out_features = int(full_in), int(full_out) // parts
        self._slice = slice(part * self.out_features, (part + 1) * self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """out x in, a view of the module's weight (writes go through to it)."""
        weight = self.module.weight.t() if self.transposed else self.module.weight
        return weight[self._slice]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.module.bias
        return None if bias is None else bias[self._slice]

    def register_forward_hook(self, hook: Callable[..., Any], prepend: bool = False) -> Any:
        """``hook(module, args, part_of_output)`` returns the new part, or None to leave it."""
        whole = self.parts == 1

        def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if whole:
                return hook(module, args, output)
            new = hook(module, args, output[..., self._slice])
            if new is None:
                return None
            changed = output.clone()
            changed[..., self._slice] = new
            return changed

        return self.module.register_forward_hook(on_output, prepend=prepend)
