"""Non-linearities available to adapters and heads, by the names AdapterHub configs use.

Config validation only needs the names, so torch is imported when a function is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# AdapterHub resolves these through transformers' ACT2FN; the formulas are the same:
# "gelu" is the exact (erf) GELU, "gelu_new" the tanh approximation, "swish" is SiLU.
ACTIVATION_NAMES: tuple[str, ...] = (
    "relu", "leakyrelu", "swish", "silu", "gelu", "gelu_orig", "gelu_new", "gelu_pytorch_tanh",
    "tanh", "sigmoid", "mish", "linear", "identity",
)


def activation(name: str) -> Callable[[Any], Any]:
    import torch
    import torch.nn.functional as F

    def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")

    def identity(x: torch.Tensor) -> torch.Tensor:
        return x

    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": F.relu, "leakyrelu": F.leaky_relu, "swish": F.silu, "silu": F.silu,
        "gelu": F.gelu, "gelu_orig": F.gelu, "gelu_new": tanh_gelu, "gelu_pytorch_tanh": tanh_gelu,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "mish": F.mish, "linear": identity, "identity": identity,
    }
    return table[name.lower()]
