"""Prediction heads saved and loaded with adapters: classification (single- and multi-label), tagging, extractive
question answering,
regression, multiple choice, and the
language-model heads (``LanguageModelHead``): the masked-LM head of language adapters and a decoder's causal-LM
head.

The layout is AdapterHub's flexible head so its head files load key for key: for ``layers=L`` the
module is ``[Dropout, Linear(H,H), act] * (L-1) + [Dropout, Linear(H, out)]`` applied to the first
token's final hidden state (or the pooler output with ``use_pooler``), or to every token's (tagging; question
answering, whose two outputs are each token's start and end scores).
"""

from __future__ import annotations

from typing import Any

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
                    modules.append(Activation(config.activation_function))
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
        """AdapterHub's losses: MSE (regression), binary cross-entropy per label on a multi-hot [B, L]
        (multi-label), the mean of the start and end tokens' cross-entropies (question answering), cross-entropy
        otherwise, over the tokens whose label is not -100 for tagging (the padding, special tokens and the
        non-first pieces of each word)."""
        if self.config.head_type == "regression":
            return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
        if self.config.head_type == "multilabel_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if self.config.head_type == "question_answering":  # labels [B, 2]: each window's answer start and end
            start, end = logits.float().unbind(-1)
            outside = start.shape[1]  # AdapterHub's rule: a position beyond the window has no loss
            positions = labels.long().clamp(0, outside)
            return (nn.functional.cross_entropy(start, positions[:, 0], ignore_index=outside) +
                    nn.functional.cross_entropy(end, positions[:, 1], ignore_index=outside)) / 2
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class Activation(nn.Module):
    """The adapter's non-linearity as a module, so that the layers around it keep AdapterHub's indices (``.0``, ``.2``)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name



class LanguageModelHead(nn.Module):
    """AdapterHub's ``BertStyleMaskedLMHead`` and ``CausalLMHead``, key for key: ``[Linear(H,E), act,
    LayerNorm(E)] * (layers-1)`` (modules ``0``, ``1``, ``2``), then the decoder (``3``), whose weight is the
    model's input word embeddings where the model ties them (held by reference, never stored with the head)
    and the head's own ``Linear(E, vocab)`` weight otherwise (``embeddings`` None); its bias is the head's own.
    ``logits`` takes an ``inverse`` that runs between the transform and the decoder: the reverse pass of an
    invertible adapter, where AdapterHub's LM heads apply ``invertible_adapter(..., rev=True)``."""

    def __init__(self, config: HeadConfig, hidden_size: int, embeddings: nn.Embedding | None, eps: float = 1e-12,
                 initializer_range: float = 0.02) -> None:
        super().__init__()
        self.config = config
        width = config.embedding_size or hidden_size
        inputs = hidden_size
        index = 0
        for _ in range(config.layers - 1):
            linear = nn.Linear(inputs, width)
            with torch.no_grad():
                linear.weight.normal_(0.0, initializer_range)
                linear.bias.zero_()
            self.add_module(str(index), linear)
            index += 1
            if config.activation_function:
                self.add_module(str(index), Activation(config.activation_function))
                index += 1
            if config.layer_norm:
                self.add_module(str(index), nn.LayerNorm(width, eps=eps))
                index += 1
            inputs = width
        if embeddings is not None:
            self.add_module(str(index), _TiedDecoder(embeddings, config.outputs, config.bias))
            return
        decoder = nn.Linear(width, config.outputs, bias=config.bias)
        with torch.no_grad():
            decoder.weight.normal_(0.0, initializer_range)
            if decoder.bias is not None:
                decoder.bias.zero_()
        self.add_module(str(index), decoder)

    @property
    def tied(self) -> bool:
        return isinstance(list(self._modules.values())[-1], _TiedDecoder)

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        modules = list(self._modules.values())
        for module in modules[:-1]:
            hidden = module(hidden)
        return hidden

    def logits(self, hidden: torch.Tensor, inverse: Any = None) -> torch.Tensor:
        """Scores over the vocabulary for every position of ``hidden`` [B, T, H]."""
        out = self.transform(hidden)
        if inverse is not None:
            out = inverse(out)
        return list(self._modules.values())[-1](out)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the positions whose label is not -100 (the masked tokens). A causal-LM
        head's logits at position t predict the token at t + 1: labels are shifted by one, as AdapterHub's
        ``shift_labels`` does, so labels may simply be the input ids (-100 where no loss is wanted)."""
        if self.config.head_type == "causal_lm":
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                           ignore_index=-100)


class _TiedDecoder(nn.Module):
    """``Linear(E, vocab)`` with the input embeddings' matrix as its weight. The embedding module is held
    outside the module tree, so the head's state dict is its bias alone and the frozen embeddings are never
    counted, saved or trained as part of the head."""

    def __init__(self, embeddings: nn.Embedding, vocab_size: int, bias: bool) -> None:
        super().__init__()
        self.__dict__["embeddings"] = embeddings  # not a submodule: see the class docstring
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embeddings.weight
        bias = self.bias.to(weight.dtype) if self.bias is not None else None
        return nn.functional.linear(hidden.to(weight.dtype), weight, bias)
