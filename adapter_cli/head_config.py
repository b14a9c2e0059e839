"""Configuration of prediction heads, torch-free so that reading a head's metadata (adapt inspect)
needs no torch; the modules are in ``heads``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, check_keys, suggest
from .methods.activations import ACTIVATION_NAMES

HEAD_TYPES = ("classification", "multilabel_classification", "tagging", "question_answering", "regression",
              "multiple_choice", "masked_lm", "causal_lm", "seq2seq_lm")
# Heads whose outputs are named labels (``label2id``): one label per text, a set of labels per text (sigmoid
# per label), or one label per word (tagging reads every token, not the first).
LABELLED_HEADS = ("classification", "multilabel_classification", "tagging")
# Language-model heads: a transform, then a decoder over the vocabulary (tied to the input word embeddings
# where the model ties them), applied to every token.
# seq2seq_lm: an encoder-decoder's, over the decoder's states, each position scored against its own label (the
# decoder's inputs are the labels shifted right).
LM_HEADS = ("masked_lm", "causal_lm", "seq2seq_lm")
# Keys only a language-model head has (AdapterHub's BertStyleMaskedLMHead and CausalLMHead): left out of
# other heads' configs.
MLM_KEYS = ("vocab_size", "embedding_size", "layer_norm")
MAX_OUTPUTS = 100_000  # labels or choices: far more than any task has, far less than fills memory
MAX_HEAD_LAYERS = 64


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
    # Trained on text pairs (True), single texts (False), or unknown (None, e.g. AdapterHub's heads): lets
    # `adapt infer` refuse a single text for a pair head instead of scoring a meaningless input.
    text_pair: bool | None = None
    # masked_lm and causal_lm only: the decoder's outputs (the input embeddings' rows, to which it is tied), its input width
    # (the embeddings' width: ELECTRA's is narrower than hidden) and the LayerNorm after each transform layer
    vocab_size: int | None = None
    embedding_size: int | None = None
    layer_norm: bool = False

    def __post_init__(self) -> None:
        types = {"head_type": str, "num_labels": int, "layers": int, "use_pooler": bool, "bias": bool}
        for key, kind in types.items():
            value = getattr(self, key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"head {key} must be {kind.__name__}, got {value!r}")
        for key, kinds in (("num_choices", (int, type(None))), ("dropout_prob", (int, float, type(None))),
                           ("text_pair", (bool, type(None))), ("vocab_size", (int, type(None))),
                           ("embedding_size", (int, type(None))), ("layer_norm", (bool,)),
                           ("activation_function", (str, type(None))), ("label2id", (dict, type(None)))):
            value = getattr(self, key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"head {key} has the wrong type: {getattr(self, key)!r}")
        if self.head_type not in HEAD_TYPES:
            raise ConfigError(f"unknown head type {self.head_type!r}{suggest(self.head_type, HEAD_TYPES)}; "
                              f"known: {', '.join(HEAD_TYPES)}")
        if not 1 <= self.layers <= MAX_HEAD_LAYERS:
            raise ConfigError(f"a head has 1 to {MAX_HEAD_LAYERS} layers, got {self.layers}")
        if self.head_type in ("classification", "tagging") and self.num_labels < 2:
            hint = "; use head_type regression for 1" if self.head_type == "classification" else ""
            raise ConfigError(f"a {self.head_type} head needs at least 2 labels{hint}")
        if self.head_type == "multilabel_classification" and self.num_labels < 1:
            raise ConfigError("a multilabel_classification head needs at least 1 label")
        if self.head_type == "question_answering" and self.num_labels != 2:
            raise ConfigError(f"a question_answering head has 2 outputs (start, end), got num_labels {self.num_labels}")
        if self.num_labels > MAX_OUTPUTS:
            raise ConfigError(f"a head has at most {MAX_OUTPUTS} labels, got {self.num_labels}")
        if self.head_type == "multiple_choice" and not self.num_choices:
            raise ConfigError("a multiple_choice head needs num_choices")
        if self.num_choices is not None and not 2 <= self.num_choices <= MAX_OUTPUTS:
            raise ConfigError(f"head num_choices must be from 2 to {MAX_OUTPUTS}, got {self.num_choices}")
        if self.dropout_prob is not None and not 0 <= self.dropout_prob < 1:
            raise ConfigError(f"head dropout_prob must be in [0, 1) or null, got {self.dropout_prob!r}")
        if self.activation_function and self.activation_function.lower() not in ACTIVATION_NAMES:
            raise ConfigError(f"unknown head activation {self.activation_function!r}")
        self._check_lm()

    def _check_lm(self) -> None:
        if self.head_type not in LM_HEADS:
            if self.vocab_size is not None or self.embedding_size is not None or self.layer_norm:
                raise ConfigError(f"vocab_size, embedding_size and layer_norm are keys of a language-model head "
                                  f"(masked_lm, causal_lm, seq2seq_lm), not of a {self.head_type} head")
            return
        if self.vocab_size is None or not 1 <= self.vocab_size <= 10_000_000:
            raise ConfigError(f"a {self.head_type} head needs vocab_size (1 to 10000000), got {self.vocab_size!r}")
        if self.embedding_size is not None and not 1 <= self.embedding_size <= 65536:
            raise ConfigError(f"head embedding_size must be from 1 to 65536, got {self.embedding_size!r}")
        if self.head_type == "masked_lm" and self.layers < 2:
            raise ConfigError("a masked_lm head has at least 2 layers (a transform and the tied decoder)")

    @property
    def is_lm(self) -> bool:
        return self.head_type in LM_HEADS

    @property
    def outputs(self) -> int:
        if self.is_lm:
            return int(self.vocab_size or 0)
        if self.head_type in LABELLED_HEADS or self.head_type == "question_answering":
            return self.num_labels
        return {"regression": 1, "multiple_choice": 1}[self.head_type]

    @property
    def id2label(self) -> dict[int, str]:
        if self.label2id:
            return {int(i): label for label, i in self.label2id.items()}
        return {i: f"LABEL_{i}" for i in range(self.outputs)} if self.head_type in LABELLED_HEADS else {}

    @property
    def per_token(self) -> bool:
        """Whether the head answers for every token (tagging, language modelling), not once per text."""
        return self.head_type in ("tagging", "question_answering") or self.is_lm

    def weight_shapes(self, hidden_size: int, decoder_stored: bool = False) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, from the configuration alone: what ``heads.PredictionHead`` holds
        (``[Dropout, Linear(H,H), act] * (layers-1) + [Dropout, Linear(H, outputs)]``). A language-model
        head's decoder weight is stored only where it is not tied (``decoder_stored``)."""
        if self.is_lm:
            shapes = self._masked_lm_shapes(hidden_size)
            if decoder_stored:
                shapes[f"{self.decoder_index}.weight"] = (self.outputs, self.embedding_size or hidden_size)
            return shapes
        out: dict[str, tuple[int, ...]] = {}
        index = 0
        for i in range(self.layers):
            index += 1  # the dropout
            if i < self.layers - 1:
                out.update({f"{index}.weight": (hidden_size, hidden_size), f"{index}.bias": (hidden_size,)})
                index += 2 if self.activation_function else 1
            else:
                out[f"{index}.weight"] = (self.outputs, hidden_size)
                if self.bias:
                    out[f"{index}.bias"] = (self.outputs,)
        return out

    def _masked_lm_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """AdapterHub's BertStyleMaskedLMHead and CausalLMHead: ``[Linear(H,E), act, LayerNorm(E)] *
        (layers-1)`` then the decoder ``Linear(E, vocab)``, whose weight is the input embeddings' where tied
        (and then not stored here: only its bias is the head's own)."""
        width = self.embedding_size or hidden_size
        out: dict[str, tuple[int, ...]] = {}
        index, inputs = 0, hidden_size
        for _ in range(self.layers - 1):
            out.update({f"{index}.weight": (width, inputs), f"{index}.bias": (width,)})
            index += 1 + bool(self.activation_function)
            if self.layer_norm:
                out.update({f"{index}.weight": (width,), f"{index}.bias": (width,)})
                index += 1
            inputs = width
        if self.bias:
            out[f"{index}.bias"] = (self.outputs,)
        return out

    @property
    def decoder_index(self) -> int:
        """The module index of a language-model head's decoder (3 for the default two layers)."""
        per_layer = 1 + bool(self.activation_function) + bool(self.layer_norm)
        return (self.layers - 1) * per_layer

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.is_lm:  # other heads' files stay as they were
            for key in MLM_KEYS:
                out.pop(key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "head config") -> HeadConfig:
        check_keys(data, (f.name for f in dataclasses.fields(cls)), source)
        return cls(**data)
