"""Prediction heads saved and loaded with adapters: classification, regression, multiple choice.

The layout is AdapterHub's flexible head so its head files load key for key: for ``layers=L`` the
module is ``[Dropout, Linear(H,H), act] * (L-1) + [Dropout, Linear(H, out)]`` applied to the first
token's final hidden state (or the pooler output with ``use_pooler``).
"""

from __future__ import annotations

import torch
from torch import nn

from .head_config import HeadConfig
from .methods.activations import activation


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

