"""Head-only training on features computed once.

With ``method: head`` nothing below the head trains, so what the base model hands the head is the same in
every epoch: the first token's final hidden state (a decoder's: the last attended token's), or the pooler
output when the head's config says ``use_pooler`` (exactly what ``AdapterModel.head_features`` reads). Each split is encoded once, with the base
model in eval mode (no dropout in the frozen encoder), in batches of similar length (little padding), and
kept in memory: on the training device when it fits under ``DEVICE_BYTES``, in host memory otherwise (it
is N x hidden floats: 67k SST-2 sentences x 384 are 100 MB). The head then trains on these features for
all epochs, its own dropout still applied, and is evaluated on the dev features each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..tasks.metrics import compute
from .data import Encoded, collate

DEVICE_BYTES = 2 * 1024 ** 3  # larger feature sets stay in host memory; each batch goes to the device


@dataclass
class Features:
    """One split as the head sees it: ``values`` [N, hidden] ([N, choices, hidden] for multiple choice)
    and ``labels`` [N] (float for regression; [N, labels] multi-hot for multi-label), both on the same device."""

    values: torch.Tensor
    labels: torch.Tensor
    seconds: float = 0.0  # how long the encoding took

    def __len__(self) -> int:
        return self.values.shape[0]

    def batch(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(indices, device=self.values.device)
        return self.values[rows].to(device), self.labels[rows].to(device)


def head_reads(head: Any, model: Any = None) -> str:
    """What a head reads from the base model's output: ``pooler_output``, ``first_token``, (a decoder's)
    ``last_token`` or (an encoder-decoder's) ``last_eos``."""
    if head.config.use_pooler:
        return "pooler_output"
    if model is not None and model.arch.encoder_decoder:
        return "last_eos"
    return "last_token" if model is not None and model.arch.causal else "first_token"


def cacheable(data: Encoded) -> bool:
    """Whether a split can be stored as one tensor: multiple choice needs the same number of options in
    every example, and a tagging or QA head reads every token, not one vector per example (otherwise the loop
    keeps running the encoder on each padded batch, as for adapters)."""
    if data.first_tokens is not None or data.answers is not None:
        return False
    return not data.multiple_choice or len({len(f["input_ids"]) for f in data.features}) <= 1


def encode_features(model: Any, head_name: str, data: Encoded, batch_size: int, device: torch.device,
                    autocast: torch.dtype | None, pad_id: int, float_labels: bool) -> Features:
    """Every example of ``data`` through the frozen base model once (eval mode, no gradients), as the head
    ``head_name`` reads it. The model is left in eval mode."""
    import time

    started = time.perf_counter()
    head = model.heads[head_name]
    model.eval()
    order = sorted(range(len(data)), key=lambda i: _length(data.features[i]))  # similar lengths: little padding
    store = _store_device(data, model.hidden_size, device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate(data, order[start:start + batch_size], pad_id, float_labels)
            parts.append(_encode_batch(model, head, batch, device, autocast).to(store))
    encoded = torch.cat(parts) if parts else torch.empty(0, model.hidden_size, device=store)
    values = torch.empty_like(encoded)
    values[torch.tensor(order, device=store)] = encoded  # back in the order of the examples
    labels = torch.tensor(data.labels, dtype=torch.float32 if float_labels else torch.long, device=store)
    return Features(values, labels, time.perf_counter() - started)


def _length(feature: dict[str, Any]) -> int:
    ids = feature.get("input_ids", ())  # an image has no tokens
    return max(len(s) for s in ids) if ids and isinstance(ids[0], list) else len(ids)


def _store_device(data: Encoded, hidden: int, device: torch.device) -> torch.device:
    choices = len(data.features[0]["input_ids"]) if data.multiple_choice and data.features else 1
    return device if len(data) * choices * hidden * 4 <= DEVICE_BYTES else torch.device("cpu")


def _encode_batch(model: Any, head: Any, batch: dict[str, torch.Tensor], device: torch.device,
                  autocast: torch.dtype | None) -> torch.Tensor:
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    rows, choices = next(iter(inputs.values())).shape[0], None
    if "input_ids" in inputs and inputs["input_ids"].dim() == 3:  # multiple choice: one sequence per option
        choices = inputs["input_ids"].shape[1]
        inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        out = model(**inputs, active=None, head=None)
    features = model.head_features(head, out)
    return features.reshape(rows, choices, -1) if choices is not None else features


def head_logits(forward: Any, features: torch.Tensor) -> torch.Tensor:
    """The head's logits on features, as ``PredictionHead.logits`` gives them (``forward`` is the head, or
    the head wrapped in DistributedDataParallel)."""
    if features.dim() == 3:  # multiple choice: one score per option
        return forward(features.flatten(0, 1)).view(-1, features.shape[1])
    return forward(features)


def predictions(logits: torch.Tensor, kind: str) -> list[Any]:
    """What the metrics compare with the labels: the score (regression), the labels whose logit is above 0
    (sigmoid above 0.5: multi-label, as a multi-hot row) or the arg-max label."""
    if kind == "regression":
        return logits[:, 0].tolist()
    if kind == "multilabel":
        return (logits > 0).long().tolist()
    return logits.argmax(-1).tolist()


def evaluate_features(head: Any, features: Features, labels: list[int | float], task: Any, batch_size: int,
                      device: torch.device, autocast: torch.dtype | None) -> tuple[dict[str, float], list[float]]:
    """The dev metrics of ``head`` on stored features against ``labels`` as read (the numbers
    ``loop.evaluate`` gives on the same model)."""
    head.eval()
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            values = features.values[start:start + batch_size].to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = head_logits(head, values).float()
            out.extend(predictions(logits, task.kind))
    return compute(task.metrics, out, labels, task.kind), out
