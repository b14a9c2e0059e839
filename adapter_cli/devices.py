"""Where a model runs and in which precision: one rule for training and inference.

* device ``auto``: the GPU of this process (``LOCAL_RANK`` under torchrun) when CUDA is available, else CPU;
* precision ``auto``: bf16 autocast on a CUDA GPU that supports it (fp16 on older ones), fp32 elsewhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used: `adapt recipes` and `--help` stay instant
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Every spelling of a floating-point precision the CLI and recipes accept -> torch's dtype name.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per torchrun process
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} asked for, but this machine has no usable CUDA GPU; use cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return half_dtype(precision)


def half_dtype(name: str) -> torch.dtype:
    """The torch dtype of a 16-bit precision name (bf16, fp16)."""
    return torch_dtype(name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name in any spelling of DTYPE_NAMES (fp32, float16, bf16, ...)."""
    import torch

    return getattr(torch, DTYPE_NAMES[name.lower()])


def cast_frozen_linears(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store every linear layer in ``module`` whose parameters are all frozen in ``dtype``; returns how many
    were cast. Exact under autocast to ``dtype`` (see AdapterModel.cast_frozen_linears)."""
    from torch import nn

    cast = 0
    for child in module.modules():
        own = list(child.parameters(recurse=False))
        if isinstance(child, nn.Linear) and own and not any(p.requires_grad for p in own) \
                and child.weight.dtype != dtype:
            child.to(dtype)
            cast += 1
    return cast
