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

An encoder-decoder (BART, T5) learns from the pairs alone: the prompt is the encoder's input, the completion (with
the tokenizer's own start and end tokens) the decoder's labels, which it reads shifted right after its start
token; its head is its own seq2seq-LM head, tied to the word embeddings and kept frozen likewise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UsageError
from .data import Encoded
from .mlm import encode_text, padded_blocks, score_tokens


def encode_lm(items: list[Any], tokenizer: Any, max_length: int, seq2seq: bool = False) -> Encoded:
    """Lines packed into blocks (``mlm.encode_text``), or (prompt, completion) pairs one per example, each
    recording how many of its tokens are prompt (``prompt_length``: not labels); ``seq2seq``: pairs whose
    prompt is the encoder's input and completion the decoder's ``labels``, each cut to ``max_length``."""
    pairs = bool(items) and isinstance(items[0], tuple)
    if seq2seq:
        if not pairs:
            raise UsageError("an encoder-decoder learns from prompt/completion pairs (train.jsonl, dev.jsonl): "
                             "plain text lines give its decoder nothing to write")
        sources = tokenizer([p for p, _ in items], truncation=True, max_length=max_length)["input_ids"]
        targets = tokenizer([c for _, c in items], truncation=True, max_length=max_length)["input_ids"]
        return Encoded([{"input_ids": s, "attention_mask": [1] * len(s), "labels": t}
                        for s, t in zip(sources, targets)], [0] * len(items))
    if not pairs:
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
    """The blocks padded on the right, with ``labels`` = the ids (-100 on padding, and on prompts); seq2seq
    pairs: the inputs and their labels, each padded on the right (labels with -100)."""
    if "labels" in data.features[indices[0]]:
        rows = [data.features[i] for i in indices]
        ids = torch.full((len(rows), max(len(r["input_ids"]) for r in rows)), pad_id, dtype=torch.long)
        targets = torch.full((len(rows), max(len(r["labels"]) for r in rows)), -100, dtype=torch.long)
        for row, feature in enumerate(rows):
            ids[row, :len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
            targets[row, :len(feature["labels"])] = torch.tensor(feature["labels"])
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        attention = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        return {"input_ids": ids, "attention_mask": attention, "labels": targets}
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
            seq2seq = {"labels": batch["labels"]} if model.arch.encoder_decoder else {}  # the decoder reads them
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], active=active,
                            **seq2seq, **kwargs)
            logits, labels = (out.logits.float(), batch["labels"]) if seq2seq else \
                (out.logits[:, :-1].float(), batch["labels"][:, 1:])
            keep = labels != -100
            loss, hits, n = score_tokens(logits[keep], labels[keep])
            total, correct, count = total + loss, correct + hits, count + n
    if count == 0:
        raise UsageError("the dev text has no token to predict (every block is one token long, or every "
                         "completion was cut away)")
    return {"perplexity": math.exp(min(total / count, 700.0)), "next_token_accuracy": correct / count}
