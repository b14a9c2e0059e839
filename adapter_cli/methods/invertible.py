"""Invertible adapters (MAD-X, Pfeiffer et al. 2020): the configuration side, torch-free.

A bottleneck configuration with ``inv_adapter: nice`` also has an invertible layer on the output of the
embeddings module (AdapterHub's ``seq_bn_inv`` / ``pfeiffer+inv`` and ``double_seq_bn_inv`` / ``houlsby+inv``).
The layer is a NICE coupling block over the embedding width E: the channels are split into halves of
``E // 2`` and ``E - E // 2``, and two subnets ``F`` and ``G`` (``Linear -> act -> Linear``, with the adapter's
``non_linearity``) of width ``int(half // inv_adapter_reduction_factor)`` couple them (``invertible_layers``).

Here: the checks of the two fields, and the weight names, shapes and counts from the configuration alone
(``adapt add``, ``adapt inspect``). Weight names are AdapterHub's module names under ``invertible.``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import ConfigError, suggest

INV_KINDS = ("nice",)
# AdapterHub 1.3.0 accepts "glow" but its GLOWCouplingBlock cannot run: it splits the channels on the last axis
# and then slices the token axis as if it were the channels, so the forward and the reverse pass fail with a
# shape error on every input (tests/fixtures/inv_bert/cases.json, "refused"). No GLOW adapter can have been
# trained with it, so there is nothing to be compatible with: refused in one line.
REFUSED_KINDS = {"glow": "AdapterHub's GLOW block (adapters 1.3.0) fails on every input, so there are no GLOW "
                         "adapters to load or reproduce; use inv_adapter: nice"}


def check_invertible(config: Any, bad: Callable[[str], ConfigError]) -> None:
    """``inv_adapter`` is null or a known kind; with a kind, ``inv_adapter_reduction_factor`` is a number > 0."""
    kind, factor = config.inv_adapter, config.inv_adapter_reduction_factor
    if kind is None:
        if factor is not None:
            raise bad(f"inv_adapter_reduction_factor is {factor!r} but there is no invertible adapter "
                      "(inv_adapter is null); set inv_adapter: nice or drop the factor")
        return
    if kind in REFUSED_KINDS:
        raise bad(f"inv_adapter {kind!r} is not supported: {REFUSED_KINDS[kind]}")
    if kind not in INV_KINDS:
        raise bad(f"unknown inv_adapter {kind!r}{suggest(str(kind), INV_KINDS)}; use {', '.join(INV_KINDS)} "
                  "or null")
    if factor is None:
        raise bad(f"inv_adapter {kind!r} needs inv_adapter_reduction_factor (AdapterHub's presets use 2)")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
        raise bad(f"inv_adapter_reduction_factor must be a positive number, got {factor!r}")


def halves(embedding_size: int) -> tuple[int, int]:
    """The coupling block's split of the embedding channels: the first half, then the rest."""
    return embedding_size // 2, embedding_size - embedding_size // 2


def subnet_width(config: Any, inputs: int) -> int:
    """The hidden width of a subnet reading ``inputs`` channels: AdapterHub's ``int(inputs // factor)``."""
    width = int(inputs // config.inv_adapter_reduction_factor)
    if width < 1:  # AdapterHub builds a zero-width subnet here, which computes its bias only
        raise ConfigError(f"inv_adapter_reduction_factor {config.inv_adapter_reduction_factor} gives a zero-width "
                          f"invertible layer (half the embedding is {inputs} channels, {inputs} // "
                          f"{config.inv_adapter_reduction_factor} = 0); use a factor of at most {inputs}")
    return width


def invertible_shapes(config: Any, embedding_size: int) -> dict[str, tuple[int, ...]]:
    """The invertible layer's weights (``invertible.F.0.weight`` ...), or {} without one. NICE: ``F`` maps the
    second half onto the first, ``G`` the first onto the second."""
    if config.inv_adapter is None:
        return {}
    first, second = halves(embedding_size)
    out: dict[str, tuple[int, ...]] = {}
    for net, inputs, outputs in (("F", second, first), ("G", first, second)):
        width = subnet_width(config, inputs)
        out.update({f"invertible.{net}.0.weight": (width, inputs), f"invertible.{net}.0.bias": (width,),
                    f"invertible.{net}.2.weight": (outputs, width), f"invertible.{net}.2.bias": (outputs,)})
    return out


def invertible_placement(config: Any, embedding_size: int) -> list[dict[str, Any]]:
    """The invertible layer as a placement of ``parameter_count`` (AdapterHub's location key ``inv_adapter``),
    or [] without one."""
    shapes = invertible_shapes(config, embedding_size)
    if not shapes:
        return []
    widths = [shapes[f"invertible.{net}.0.bias"][0] for net in ("F", "G")]
    return [{"location": "inv_adapter", "layers": [], "widths": widths,
             "parameters": sum(math.prod(s) for s in shapes.values())}]


def embedding_size_of(weights: dict[str, Any]) -> int | None:
    """The embedding width an adapter's invertible weights were made for (no format records it, and ELECTRA's
    differs from the hidden size): the inputs of ``F`` plus those of ``G``; None without such weights."""
    inputs = [t.shape[1] for k, t in weights.items()
              if k in ("invertible.F.0.weight", "invertible.G.0.weight") and len(t.shape) == 2]
    return int(sum(inputs)) if len(inputs) == 2 else None
