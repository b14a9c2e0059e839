"""Masked language modelling for language adapters (tasks of ``kind: mlm``): plain text packed into blocks of
``max_length`` tokens, BERT's dynamic masking drawn per batch, and perplexity on the dev text.

Packing: every line is tokenised without special tokens, the lines are concatenated in order and cut into
blocks of ``max_length`` minus the special tokens, each block wrapped as the tokenizer wraps one text
(``[CLS] ... [SEP]``); the last block may be shorter.

Masking (BERT, Devlin et al. 2019): each token that is neither a special token nor padding is chosen with
probability ``mlm_probability`` (0.15); a chosen token becomes the mask token 80 % of the time, a random token
10 %, and stays itself 10 %; the loss reads the chosen tokens only. A batch in which no token was chosen gets
its one eligible token with the smallest draw. The draws come from a generator seeded by (seed, epoch, batch
index), never from the global random state, so a resumed run masks exactly as the uninterrupted run did. Each
dev block is masked by a generator seeded by its index alone (each with at least one masked token): every
epoch, every run, every adapter and every batch size scores the same masked tokens.

Perplexity is ``exp`` of the mean cross-entropy over all masked dev tokens (lower is better);
``masked_accuracy`` the share of them predicted exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from .data import Encoded

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the remaining 0.1 stay as they are


def encode_text(lines: list[str], tokenizer: Any, max_length: int) -> Encoded:
    """The lines packed into blocks of at most ``max_length`` tokens (special tokens included)."""
    prefix, suffix = _wrapping(tokenizer)
    width = max_length - len(prefix) - len(suffix)
    if width < 1:
        raise UsageError(f"max_length {max_length} leaves no room for text beside the special tokens")
    ids: list[int] = []
    for row in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
    if not ids:
        raise UsageError("the text holds no tokens")
    features = []
    for start in range(0, len(ids), width):
        block = prefix + ids[start:start + width] + suffix
        features.append({"input_ids": block, "attention_mask": [1] * len(block)})
    return Encoded(features, [0] * len(features))


def check_blocks(data: Encoded, reft: tuple[str, int] | None, split: str) -> None:
    """Refuse, before any step, blocks shorter than a ReFT adapter's suffix (``AdapterModel.reft_suffix``): packed
    text ends in a block of whatever tokens are left, which would fail at a random step or at evaluation."""
    if reft is None:
        return
    name, suffix = reft
    lengths = [sum(f["attention_mask"]) for f in data.features]
    short = [n for n in lengths if n < suffix]
    if short:
        why = "packed text ends in a short block" if len(short) < len(lengths) else \
            f"none holds more than {max(lengths)} tokens"
        raise UsageError(f"ReFT adapter {name!r} edits the last {suffix} tokens of each row, but {len(short)} of the "
                         f"{len(lengths)} {split} rows have fewer ({min(short)}: {why}); lower suffix_positions to "
                         f"at most {min(lengths)}, or change the maximum length so that every row is longer")


def _wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS] and [SEP] for BERT)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    whole = tokenizer("a")["input_ids"]
    for k in range(len(whole) - len(body) + 1):
        if whole[k:k + len(body)] == body:
            return list(whole[:k]), list(whole[k + len(body):])
    raise UsageError("cannot tell which special tokens the tokenizer adds around a text")


@dataclass(frozen=True)
class Masker:
    """What masking needs from the tokenizer and the model, checked once."""

    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int  # random replacements are drawn from [0, vocab_size)
    probability: float = 0.15

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int, probability: float) -> Masker:
        if tokenizer.mask_token_id is None:
            raise UsageError("the base model's tokenizer has no mask token, so it cannot be trained with masked "
                             "language modelling")
        return cls(int(tokenizer.mask_token_id), tuple(int(i) for i in tokenizer.all_special_ids),
                   min(int(vocab_size), len(tokenizer)), float(probability))

    def mask(self, ids: torch.Tensor, attention: torch.Tensor, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels): labels are the original ids at the chosen tokens, -100 elsewhere."""
        eligible = attention.bool() & ~torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype))
        draw = torch.rand(ids.shape, generator=generator)
        chosen = (draw < self.probability) & eligible
        if not chosen.any() and eligible.any():
            chosen.view(-1)[torch.where(eligible.view(-1), draw.view(-1), 2.0).argmin()] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        how = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
        out = torch.where(chosen & (how < MASK_SHARE), torch.full_like(ids, self.mask_id), ids)
        out = torch.where(chosen & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE), random_ids, out)
        return out, labels


def generator(*key: Any) -> torch.Generator:
    """A generator seeded by ``key`` alone (e.g. (seed, epoch, batch)), independent of any global state."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def padded_blocks(data: Encoded, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks ``indices`` of packed text padded on the right: (ids, attention mask)."""
    blocks = [data.features[i]["input_ids"] for i in indices]
    width = max(len(block) for block in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(blocks), width), dtype=torch.long)
    for row, block in enumerate(blocks):
        ids[row, :len(block)] = torch.tensor(block)
        attention[row, :len(block)] = 1
    return ids, attention


def masked_batch(data: Encoded, indices: list[int], pad_id: int, masker: Masker,
                 gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The padded batch with its tokens masked and ``labels`` for the masked ones: masked as one batch by
    ``gen``, or (``gen`` None, the dev text) each block by its own generator keyed by its index, so that the
    dev masks do not depend on the batch size."""
    items = [data.features[i] for i in indices]
    ids, attention = padded_blocks(data, indices, pad_id)
    if gen is not None:
        masked, labels = masker.mask(ids, attention, gen)
    else:
        masked, labels = ids.clone(), torch.full_like(ids, -100)
        for row, index in enumerate(indices):
            n = len(items[row]["input_ids"])
            masked[row, :n], labels[row, :n] = masker.mask(ids[row, :n], attention[row, :n], generator("dev", index))
    return {"input_ids": masked, "attention_mask": attention, "labels": labels}


def score_tokens(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross-entropy, correct arg-maxes, tokens) of predicted tokens: logits [N, vocab], labels [N]."""
    loss = float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return loss, int((logits.argmax(-1) == labels).sum()), int(labels.numel())


def evaluate_mlm(model: Any, data: Encoded, masker: Masker, batch_size: int, active: Any, device: torch.device,
                 autocast: torch.dtype | None, pad_id: int, head: str | None = None) -> dict[str, float]:
    """Perplexity and masked-token accuracy over ``data``, masked the same way on every call."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    kwargs = {} if head is None else {"head": head}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = list(range(start, min(start + batch_size, len(data))))
            batch = masked_batch(data, indices, pad_id, masker, None)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = model(**batch, active=active, **kwargs)
            loss, hits, n = score_tokens(out.logits.float(), batch["labels"][batch["labels"] != -100])
            total, correct, count = total + loss, correct + hits, count + n
    if count == 0:
        raise UsageError("the dev text has no token that can be masked")
    return {"perplexity": math.exp(min(total / count, 700.0)), "masked_accuracy": correct / count}
