"""Folding a LoRA-family adapter into the base model's weights, and taking it out again.

A merged adapter costs nothing at inference: the changed linear layers compute ``W' x + b'`` directly.
For every variant the merged layer equals the unmerged one in exact arithmetic, bias included:

* LoRA / VeRA: ``W' = W + s ΔW`` (s = alpha / r);
* DoRA: ``W' = g ⊙ (W + s ΔW)`` and ``b' = g ⊙ b`` with ``g = m / ‖W + ΔW‖`` per output feature
  (PEFT's style: ``g = m / ‖W + s ΔW‖`` and ``b' = b``);
* (IA)³: ``W' = v ⊙ W`` and ``b' = v ⊙ b`` with ``v = alpha · l`` (on an input: ``W' = W diag(v)``).

(AdapterHub leaves the bias alone for (IA)³ and DoRA, so its merged model differs from its unmerged one when
the layer has a bias; docs/numerics.md has the figures.) Unmerging restores the saved original weights
exactly, rather than inverting the arithmetic. A gated adapter depends on its input and cannot be merged.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UsageError


def check_mergeable(name: str, config: Any) -> None:
    """Refuse (one line) an adapter whose configuration cannot be folded into fixed weights."""
    if config.architecture != "lora":
        raise UsageError(f"adapter {name!r} is a {config.architecture} adapter; only LoRA-family adapters "
                         "(lora, ia3, dora, vera) can be merged into the model's weights")
    if config.use_gating:
        raise UsageError(f"adapter {name!r} is gated (use_gating): its gate depends on the input, so it cannot "
                         "be merged into fixed weights")


@torch.no_grad()
def merged_weights(delta: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
    """The weight and bias of one linear layer with ``delta`` (a ``LinearDelta``) folded in."""
    change = delta.delta_w().to(torch.float32)
    w = weight.to(torch.float32)
    b = bias.to(torch.float32) if bias is not None else None
    if delta.scales_input:  # W (x ⊙ v) + b: scale W's columns
        new_w, new_b = w * (change.view(-1) * delta.scaling).unsqueeze(0), b
    elif delta.scale_mode:
        vector = change.view(-1) * delta.scaling
        new_w, new_b = w * vector.unsqueeze(1), (b * vector if b is not None else None)
    else:
        new_w, new_b = w + delta.scaling * change, b
        if delta.m is not None:
            peft = delta.config.dora_style == "peft"
            norm = torch.linalg.norm(w + (delta.scaling * change if peft else change), dim=1)
            gain = delta.m.weight.view(-1).to(torch.float32) / norm
            new_w = gain.unsqueeze(1) * new_w
            new_b = b if peft or b is None else gain * b
    return new_w.to(weight.dtype), (new_b.to(bias.dtype) if new_b is not None else None)


@torch.no_grad()
def merge(sites: dict[tuple[str, int], Any], name: str) -> dict[tuple[str, int], tuple[torch.Tensor, Any]]:
    """Fold adapter ``name`` into every linear layer it changes; returns the original weights for ``unmerge``."""
    originals = {}
    for key, site in sites.items():
        if name not in site.loras:
            continue
        linear = site.linear
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        originals[key] = (linear.weight.detach().clone(), bias)
        new_w, new_b = merged_weights(site.loras[name], linear.weight, linear.bias)
        linear.weight.copy_(new_w)
        if new_b is not None:
            linear.bias.copy_(new_b)
        site.merged = name
    return originals


@torch.no_grad()
def unmerge(sites: dict[tuple[str, int], Any], originals: dict[tuple[str, int], tuple[torch.Tensor, Any]]) -> None:
    for key, (weight, bias) in originals.items():
        linear = sites[key].linear
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    for site in sites.values():
        site.merged = None
