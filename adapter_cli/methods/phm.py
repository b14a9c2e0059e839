"""Compacter's PHM projections (Karimi Mahabadi et al. 2021), the torch-free half: checks and shapes.

With ``phm_layer`` a bottleneck adapter's down- and up-projection are PHM layers, as in AdapterHub's
``adapters`` 1.3.0 (``methods/modeling.py`` ``PHMLayer``): for ``n = phm_dim`` the in x out matrix is
``H = sum_i A_i ⊗ W_i`` with ``A_i`` the n x n "rule" matrices and ``W_i`` blocks of (in/n) x (out/n), each
optionally a product of two factors (``factorized_phm_W`` with ``phm_rank``, ``factorized_phm_rule`` with
rank 1). The rule (``shared_phm_rule``) and the W factors (``shared_W_phm``) may be shared by every layer
of one adapter: AdapterHub keeps those in ``shared_parameters.<adapter>``, we in ``shared.<name>``.

Parameter names are AdapterHub's (``W_left``, ``W_right``, ``W``, ``b``, ``phm_rule``, ``phm_rule_left``,
``phm_rule_right``; shared ``W_down_left`` ...), so its files map key for key. The layers are in
``phm_layers``; these functions take a ``BottleneckConfig`` (typed ``Any``: ``bottleneck`` imports this
module, not the other way round).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import ConfigError, suggest

C_INITS = ("normal", "uniform")  # phm_c_init: how the rule matrices start
W_INITS = ("phm", "glorot-normal", "glorot-uniform", "normal")  # hypercomplex_nonlinearity (see phm_layers)
RULES = ("phm_rule", "phm_rule_left", "phm_rule_right")  # frozen in training when learn_phm is false
BOOLS = ("phm_layer", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "learn_phm",
         "phm_bias")
Shapes = dict[str, tuple[int, ...]]


def check(config: Any, bad: Callable[[str], ConfigError]) -> None:
    """The PHM fields of ``config``, checked whether or not ``phm_layer`` is on (a file may carry them)."""
    for name in BOOLS:
        if not isinstance(getattr(config, name), bool):
            raise bad(f"{name} must be true or false, got {getattr(config, name)!r}")
    for name in ("phm_dim", "phm_rank"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"{name} must be a whole number of at least 1, got {value!r}")
    spread = config.phm_init_range
    if isinstance(spread, bool) or not isinstance(spread, float) or not (math.isfinite(spread) and spread >= 0):
        raise bad(f"phm_init_range must be a finite number >= 0, got {spread!r}")
    for name, known in (("phm_c_init", C_INITS), ("hypercomplex_nonlinearity", W_INITS)):
        value = getattr(config, name)
        if value not in known:
            raise bad(f"unknown {name} {value!r}{suggest(str(value), known)}; choose from {', '.join(known)}")
    if not config.phm_layer:
        return
    if config.init_weights != "bert":
        raise bad(f"phm_layer takes init_weights 'bert' only, got {config.init_weights!r} (PHM layers initialise "
                  "themselves; adapters 1.3.0 fails on the others)")
    if config.shared_W_phm and not config.factorized_phm_W:
        raise bad("shared_W_phm needs factorized_phm_W: true (adapters 1.3.0 cannot build a shared unfactorized W)")
    if config.shared_W_phm and any(isinstance(spec, dict) for spec in (config.reduction_factor,
                                                                       config.bottleneck_size)):
        raise bad("shared_W_phm shares one W by all layers, so the bottleneck width cannot vary per layer")


def check_width(config: Any, hidden_size: int, width: int, layer: int) -> None:
    """AdapterHub's PHM layers split both sides into ``phm_dim`` blocks: it must divide both."""
    n = config.phm_dim
    if hidden_size % n or width % n:
        raise ConfigError(f"phm_dim {n} must divide the hidden size {hidden_size} and the bottleneck width {width}"
                          f" (layer {layer}); choose another phm_dim, reduction_factor or bottleneck_size")


def projection_shapes(config: Any, fan_in: int, fan_out: int) -> Shapes:
    """The parameters one PHM layer (fan_in -> fan_out) holds itself, in AdapterHub's order and names."""
    n, rank = config.phm_dim, config.phm_rank
    shapes: Shapes = {}
    if not config.shared_phm_rule:
        shapes.update({"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)} if config.factorized_phm_rule
                      else {"phm_rule": (n, n, n)})
    if not config.shared_W_phm:
        shapes.update({"W_left": (n, fan_in // n, rank), "W_right": (n, rank, fan_out // n)}
                      if config.factorized_phm_W else {"W": (n, fan_in // n, fan_out // n)})
    if config.phm_bias:
        shapes["b"] = (fan_out,)
    return shapes


def shared_shapes(config: Any, hidden_size: int, width: int) -> Shapes:
    """The parameters every layer of one adapter shares (AdapterHub's ``init_shared_parameters``)."""
    if not config.phm_layer:
        return {}
    n, rank = config.phm_dim, config.phm_rank
    shapes: Shapes = {}
    if config.shared_W_phm:  # factorized_phm_W is required (check)
        h, d = hidden_size // n, width // n
        shapes.update({"W_down_left": (n, h, rank), "W_down_right": (n, rank, d),
                       "W_up_left": (n, d, rank), "W_up_right": (n, rank, h)})
    if config.shared_phm_rule:
        shapes.update({"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)} if config.factorized_phm_rule
                      else {"phm_rule": (n, n, n)})
    return shapes
