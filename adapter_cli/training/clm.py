"""Causal language modelling for a decoder's adapters (tasks of ``kind: lm``): plain text packed into blocks
as for masked language modelling (``mlm.encode_text``), every token predicted from the ones before it; or
prompt/completion pairs (``train.jsonl``), one example each, where only the completion is predicted.

The loss reads every real token after the first of its block (the head shifts the labels by one, as
AdapterHub's causal-LM head does), or every completion token and the end-of-sequence token after it; padding
and prompts are never labels. A pair longer than ``max_length`` loses the start of its prompt first, then the
end of its completion. The head is the decoder's own pretrained LM head
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
from .mlm import encode_text, padded_blocks, score_tokens


def encode_lm(items: list[Any], tokenizer: Any, max_length: int) -> Encoded:
    """Lines packed into blocks (``mlm.encode_text``), or (prompt, completion) pairs one per example, each
    recording how many of its tokens are prompt (``prompt_length``: not labels)."""
    if not items or not isinstance(items[0], tuple):
        return encode_text(items, tokenizer, max_length)
    prompts = tokenizer([p for p, _ in items])["input_ids"]  # the tokenizer's own start token, if any
    completions = tokenizer([c for _, c in items], add_special_tokens=False)["input_ids"]
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    features = []
    for prompt, completion in zip(prompts, completions):
        completion = (completion + end)[:max_length - 1]  # at least one prompt token predicts the first
        prompt = prompt[len(prompt) - min(len(prompt), max_length - len(completion)):]
        ids = prompt + completion
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "prompt_length": len(prompt)})
    return Encoded(features, [0] * len(features))


def lm_batch(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The blocks padded on the right, with ``labels`` = the ids (-100 on padding, and on prompts)."""
    ids, attention = padded_blocks(data, indices, pad_id)
    labels = ids.masked_fill(attention == 0, -100)
    for row, index in enumerate(indices):
        labels[row, :data.features[index].get("prompt_length", 0)] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


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
            loss, hits, n = score_tokens(logits[keep], labels[keep])
            total, correct, count = total + loss, correct + hits, count + n
    if count == 0:
        raise UsageError("the dev text has no token to predict (every block is one token long, or every "
                         "completion was cut away)")
    return {"perplexity": math.exp(min(total / count, 700.0)), "next_token_accuracy": correct / count}
