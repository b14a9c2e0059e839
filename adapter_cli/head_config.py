"""Configuration of prediction heads, torch-free so that reading a head's metadata (adapt inspect)
needs no torch; the modules are in ``heads``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, check_keys, suggest
from .methods.activations import ACTIVATION_NAMES

HEAD_TYPES = ("classification", "regression", "multiple_choice")
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

    def __post_init__(self) -> None:
        types = {"head_type": str, "num_labels": int, "layers": int, "use_pooler": bool, "bias": bool}
        for key, kind in types.items():
            value = getattr(self, key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"head {key} must be {kind.__name__}, got {value!r}")
        for key, kinds in (("num_choices", (int, type(None))), ("dropout_prob", (int, float, type(None))),
                           ("text_pair", (bool, type(None))),
                           ("activation_function", (str, type(None))), ("label2id", (dict, type(None)))):
            value = getattr(self, key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"head {key} has the wrong type: {getattr(self, key)!r}")
        if self.head_type not in HEAD_TYPES:
            raise ConfigError(f"unknown head type {self.head_type!r}{suggest(self.head_type, HEAD_TYPES)}; "
                              f"known: {', '.join(HEAD_TYPES)}")
        if not 1 <= self.layers <= MAX_HEAD_LAYERS:
            raise ConfigError(f"a head has 1 to {MAX_HEAD_LAYERS} layers, got {self.layers}")
        if self.head_type == "classification" and self.num_labels < 2:
            raise ConfigError("a classification head needs at least 2 labels; use head_type regression for 1")
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

    @property
    def outputs(self) -> int:
        return {"classification": self.num_labels, "regression": 1, "multiple_choice": 1}[self.head_type]

    @property
    def id2label(self) -> dict[int, str]:
        if self.label2id:
            return {int(i): label for label, i in self.label2id.items()}
        return {i: f"LABEL_{i}" for i in range(self.outputs)} if self.head_type == "classification" else {}

    def weight_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, from the configuration alone: what ``heads.PredictionHead`` holds
        (``[Dropout, Linear(H,H), act] * (layers-1) + [Dropout, Linear(H, outputs)]``)."""
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "head config") -> HeadConfig:
        check_keys(data, (f.name for f in dataclasses.fields(cls)), source)
        return cls(**data)
