"""Prediction heads saved and loaded with adapters: classification, regression, multiple choice.

The layout is AdapterHub's flexible head so its head files load key for key: for ``layers=L`` the
module is ``[Dropout, Linear(H,H), act] * (L-1) + [Dropout, Linear(H, out)]`` applied to the first
token's final hidden state (or the pooler output with ``use_pooler``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, suggest
from .methods.activations import ACTIVATION_NAMES, activation

HEAD_TYPES = ("classification", "regression", "multiple_choice")


@dataclass(frozen=True)
class HeadConfig:
    head_type: str = "classification"
    num_labels: int = 2
    num_choices: int | None = None
    layers: int = 2
    activation_function: str | None = "tanh"
    label2id: dict[str, int] | None = None
    use_pooler: bool = False
    bias: bool = True
    dropout_prob: float | None = None

    def __post_init__(self) -> None:
        types = {"head_type": str, "num_labels": int, "layers": int, "use_pooler": bool, "bias": bool}
        for key, kind in types.items():
            value = getattr(self, key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"head {key} must be {kind.__name__}, got {value!r}")
        for key, kinds in (("num_choices", (int, type(None))), ("dropout_prob", (int, float, type(None))),
                           ("activation_function", (str, type(None))), ("label2id", (dict, type(None)))):
            if not isinstance(getattr(self, key), kinds) or isinstance(getattr(self, key), bool):
                raise ConfigError(f"head {key} has the wrong type: {getattr(self, key)!r}")
        if self.head_type not in HEAD_TYPES:
            raise ConfigError(f"unknown head type {self.head_type!r}{suggest(self.head_type, HEAD_TYPES)}; "
                              f"known: {', '.join(HEAD_TYPES)}")
        if self.layers < 1:
            raise ConfigError(f"a head needs at least 1 layer, got {self.layers}")
        if self.head_type == "classification" and self.num_labels < 2:
            raise ConfigError("a classification head needs at least 2 labels; use head_type regression for 1")
        if self.head_type == "multiple_choice" and not self.num_choices:
            raise ConfigError("a multiple_choice head needs num_choices")
        if self.activation_function and self.activation_function.lower() not in ACTIVATION_NAMES:
            raise ConfigError(f"unknown head activation {self.activation_function!r}")

    @property
    def outputs(self) -> int:
        return {"classification": self.num_labels, "regression": 1, "multiple_choice": 1}[self.head_type]

    @property
    def id2label(self) -> dict[int, str]:
        if self.label2id:
            return {int(i): label for label, i in self.label2id.items()}
        return {i: f"LABEL_{i}" for i in range(self.outputs)} if self.head_type == "classification" else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "head config") -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key {key!r} in {source}{suggest(key, known)}")
        return cls(**data)


class PredictionHead(nn.Sequential):
    """State-dict keys are ``<index>.weight`` / ``<index>.bias``, as in AdapterHub's head files."""

    def __init__(self, config: HeadConfig, hidden_size: int, default_dropout: float = 0.0,
                 initializer_range: float = 0.02) -> None:
        p = config.dropout_prob if config.dropout_prob is not None else default_dropout
        modules: list[nn.Module] = []
        for i in range(config.layers):
            modules.append(nn.Dropout(p))
            if i < config.layers - 1:
                modules.append(nn.Linear(hidden_size, hidden_size))
                if config.activation_function:
                    modules.append(_Activation(config.activation_function))
            else:
                modules.append(nn.Linear(hidden_size, config.outputs, bias=config.bias))
        super().__init__(*modules)
        self.config = config
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, initializer_range)
                    if m.bias is not None:
                        m.bias.zero_()

    def logits(self, features: torch.Tensor, num_choices: int | None = None) -> torch.Tensor:
        out = self(features)
        if self.config.head_type == "multiple_choice":
            return out.view(-1, num_choices or self.config.num_choices)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.head_type == "regression":
            return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
        return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

