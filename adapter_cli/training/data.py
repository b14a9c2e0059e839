"""Tokenised examples, padded batches, and a batch order that depends only on (seed, epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..tasks import TaskSpec
from ..tasks.loading import Example


@dataclass
class Encoded:
    features: list[dict[str, Any]]  # per example: input_ids / attention_mask / token_type_ids (lists)
    labels: list[int | float]
    multiple_choice: bool = False

    def __len__(self) -> int:
        return len(self.labels)


def encode(task: TaskSpec, examples: list[Example], tokenizer: Any, max_length: int) -> Encoded:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    if task.kind == "multiple_choice":
        firsts = [c[0] for e in examples for c in e.choices]
        seconds = [c[1] for e in examples for c in e.choices]
        enc = tokenizer(firsts, seconds if all(s is not None for s in seconds) else None, truncation=True,
                        max_length=max_length)
        features, start = [], 0
        for e in examples:
            n = len(e.choices)
            features.append({k: enc[k][start:start + n] for k in keys if k in enc})
            start += n
        return Encoded(features, [e.label for e in examples], multiple_choice=True)
    firsts = [e.texts[0] for e in examples]
    seconds = [e.texts[1] for e in examples] if len(examples[0].texts) > 1 else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    features = [{k: enc[k][i] for k in keys if k in enc} for i in range(len(examples))]
    return Encoded(features, [e.label for e in examples])


def collate(data: Encoded, indices: list[int], pad_id: int, regression: bool) -> dict[str, torch.Tensor]:
    items = [data.features[i] for i in indices]
    if data.multiple_choice:
        width = max(len(ids) for it in items for ids in it["input_ids"])
        choices = max(len(it["input_ids"]) for it in items)
        batch = {}
        for key in items[0]:
            fill = pad_id if key == "input_ids" else 0
            tensor = torch.full((len(items), choices, width), fill, dtype=torch.long)
            for b, it in enumerate(items):
                for c, seq in enumerate(it[key]):
                    tensor[b, c, :len(seq)] = torch.tensor(seq)
            batch[key] = tensor
    else:
        width = max(len(it["input_ids"]) for it in items)
        batch = {}
        for key in items[0]:
            fill = pad_id if key == "input_ids" else 0
            tensor = torch.full((len(items), width), fill, dtype=torch.long)
            for b, it in enumerate(items):
                tensor[b, :len(it[key])] = torch.tensor(it[key])
            batch[key] = tensor
    labels = [data.labels[i] for i in indices]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch for one process: a permutation seeded by (seed, epoch), split across ranks.

    Depending only on (seed, epoch) is what lets a resumed run see exactly the batches it would have seen.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    batches = []
    for start in range(0, n, per_step):
        chunk = order[start:start + per_step]
        if len(chunk) < world:  # every process must take the same number of steps
            break
        batches.append(chunk[rank::world])
    return batches
