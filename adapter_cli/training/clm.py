"""Causal language modelling for a decoder's adapters (tasks of ``kind: lm``): plain text packed into blocks
as for masked language modelling (``mlm.encode_text``), every token predicted from the ones before it.

The loss reads every real token after the first of its block (the head shifts the labels by one, as
AdapterHub's causal-LM head does); padding is never a label. The head is the decoder's own pretrained LM head
(lm_head.py), kept frozen, so the adapter learns to steer the model's own predictions, and it is not saved
with the adapter (generation takes the base model's own head again). Perplexity is ``exp`` of the mean
cross-entropy over all predicted dev tokens; ``next_token_accuracy`` the share of them predicted exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UsageError
from .data import Encoded
from .mlm import padded_blocks


def lm_batch(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The blocks padded on the right, with ``labels`` = the ids (-100 on padding)."""
    ids, attention = padded_blocks(data, indices, pad_id)
    return {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(attention == 0, -100)}


def evaluate_lm(model: Any, data: Encoded, batch_size: int, active: Any, device: torch.device,
                autocast: torch.dtype | None, pad_id: int, head: str | None = None) -> dict[str, float]:
    """Perplexity and next-token accuracy over every predicted token of ``data``."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    kwargs = {} if head is None else {"head": head}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = lm_batch(data, list(range(start, min(start + batch_size, len(data)))), pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], active=active,
                            **kwargs)
            logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
            keep = labels != -100
            logits, labels = logits[keep], labels[keep]
            total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += int(labels.numel())
    if count == 0:
        raise UsageError("the dev text has no token to predict (every block is one token long)")
    return {"perplexity": math.exp(min(total / count, 700.0)), "next_token_accuracy": correct / count}
