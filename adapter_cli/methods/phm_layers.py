"""Compacter's PHM layers (torch): the down/up projections of a bottleneck adapter with ``phm_layer``.

The arithmetic is AdapterHub's ``PHMLayer`` (``adapters`` 1.3.0, ``methods/modeling.py``), operation for
operation, so the reference order agrees with it to fp32 rounding (docs/numerics.md): the W blocks (a
``bmm`` of their factors when factorized), then the rule (likewise), ``H = kron(rule, W).sum(0)`` (in x out),
``y = x @ H``, then ``+ b``. Shapes and names come from ``phm`` (torch-free, shared with ``adapt inspect``).

Parameters shared by every layer of one adapter live in one ``PHMShared`` held by the adapter set; each layer
keeps a reference to it in a tuple, so that they appear once in the set's state dict (``shared.phm_rule``),
as AdapterHub stores them once (``shared_parameters.<adapter>.phm_rule``).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from . import phm
from .bottleneck import BottleneckConfig


def kronecker_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kronecker products of the matrices of ``a`` and ``b`` (leading batch dimensions broadcast), computed as
    AdapterHub computes them (one broadcast multiply, one reshape), so the rounding is the same. The size is
    Python ints (AdapterHub multiplies shape tensors), so ``torch.compile`` sees constants."""
    size = (a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1])
    product = a.unsqueeze(-1).unsqueeze(-3) * b.unsqueeze(-2).unsqueeze(-4)
    return product.reshape(product.shape[:-4] + size)


def _parameters(module: nn.Module, config: BottleneckConfig, shapes: phm.Shapes) -> None:
    for name, shape in shapes.items():
        frozen = name in phm.RULES and not config.learn_phm
        module.register_parameter(name, nn.Parameter(torch.zeros(shape), requires_grad=not frozen))


@torch.no_grad()
def _init_rule(params: dict[str, nn.Parameter], uniform: float, std: float, c_init: str,
               generator: torch.Generator | None) -> None:
    for name in phm.RULES:
        if name in params:
            if c_init == "uniform":
                params[name].uniform_(-uniform, uniform, generator=generator)
            else:
                params[name].normal_(0.0, std, generator=generator)


@torch.no_grad()
def _init_w(params: dict[str, nn.Parameter], names: tuple[str, ...], generator: torch.Generator | None) -> None:
    # adapters 1.3.0 tests ``if config["hypercomplex_nonlinearity"]:`` before comparing it with a scheme, so
    # every value (a non-empty string) draws each block glorot-normal; we draw the same distribution.
    for name in names:
        if name in params:
            for block in params[name]:
                nn.init.xavier_normal_(block, generator=generator)


class PHMShared(nn.Module):
    """The PHM rule and/or W factors shared by every layer of one adapter (``shared_phm_rule``,
    ``shared_W_phm``); initialised as AdapterHub's ``init_shared_parameters``."""

    def __init__(self, config: BottleneckConfig, hidden_size: int, width: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        _parameters(self, config, phm.shared_shapes(config, hidden_size, width))
        params = dict(self.named_parameters())
        _init_w(params, ("W_down_left", "W_down_right", "W_up_left", "W_up_right"), generator)
        # The shared rule starts wider than a layer's own (uniform in [-1, 1], or phm_init_range), as there.
        _init_rule(params, 1.0, config.phm_init_range, config.phm_c_init, generator)


class PHMLinear(nn.Module):
    """One PHM projection, in_features -> out_features; ``position`` ("down"/"up") picks its shared W."""

    def __init__(self, config: BottleneckConfig, in_features: int, out_features: int, position: str,
                 shared: PHMShared | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.in_features, self.out_features, self.position = in_features, out_features, position
        _parameters(self, config, phm.projection_shapes(config, in_features, out_features))
        if not config.phm_bias:
            self.register_parameter("b", None)  # as AdapterHub: ``b`` is None, and not in the state dict
        # The shared parameters belong to the adapter set; a tuple keeps them out of this state dict.
        self._shared = (shared,) if shared is not None else ()
        params = dict(self.named_parameters())
        _init_w(params, ("W_left", "W_right", "W"), generator)
        _init_rule(params, 0.01, 0.01, config.phm_c_init, generator)  # a layer's own rule: fixed 0.01

    def _get(self, own: str, shared: str | None = None) -> torch.Tensor:
        """This layer's parameter ``own``, or where it has none the adapter's shared one (``shared`` or ``own``)."""
        return self._parameters[own] if own in self._parameters else getattr(self._shared[0], shared or own)

    def kernel(self) -> torch.Tensor:
        """``H`` (in x out), in AdapterHub's order of operations: W first, then the rule."""
        if self.config.factorized_phm_W:
            w = torch.bmm(self._get("W_left", f"W_{self.position}_left"),
                          self._get("W_right", f"W_{self.position}_right"))
        else:
            w = self._get("W")
        if self.config.factorized_phm_rule:
            rule = torch.bmm(self._get("phm_rule_left"), self._get("phm_rule_right"))
        else:
            rule = self._get("phm_rule")
        return kronecker_product(rule, w).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.kernel())
        return y + self.b if self.b is not None else y

    # What a linear layer of the same map would hold (out x in, and a bias), for code that reads
    # ``down.weight``: batched paths then compute this layer's map, to fp32 rounding.
    @property
    def weight(self) -> torch.Tensor:
        return self.kernel().t()

    @property
    def bias(self) -> torch.Tensor:
        if self.b is not None:
            return self.b
        like = next(itertools.chain(self.parameters(), *(s.parameters() for s in self._shared)))
        return like.new_zeros(self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, phm_dim={self.config.phm_dim}"


def freeze_rules(module: nn.Module) -> None:
    """Keep every PHM rule in ``module`` fixed (``learn_phm: false``), whatever ``requires_grad_`` set.
    AdapterHub's ``train_adapter`` unfreezes them too, so there the field has no effect in training."""
    for name, param in module.named_parameters():
        if name.rsplit(".", 1)[-1] in phm.RULES:
            param.requires_grad_(False)
