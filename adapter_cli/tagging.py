"""Words to tokens and back for tagging heads: a label per word, read off the word's first token.

The words are joined with single spaces and tokenised as one text, and each token is given to the word its
character offsets fall in. This is how the model sees the same sentence typed as text (``adapt infer``), it
needs no ``is_split_into_words`` support (GPT-2's and RoBERTa's tokenizers would need ``add_prefix_space``),
and it works for every fast tokenizer. Training puts each word's label on its first token and -100 (no loss)
on the others, on special tokens and on padding, as AdapterHub's tagging examples do.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

IGNORE_INDEX = -100


@dataclass
class Aligned:
    """A batch of sentences tokenised: ``encoding`` as the tokenizer returns it (lists), and for each sentence
    the position of each word's first token (``first_tokens``, one per word: None for a word with no token,
    cut by truncation or made only of characters the tokenizer removes)."""

    encoding: dict[str, list[list[int]]]
    first_tokens: list[list[int | None]]


def align(tokenizer: Any, sentences: Sequence[Sequence[str]], max_length: int) -> Aligned:
    """Tokenise ``sentences`` (lists of words), truncated to ``max_length`` tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError("tagging needs a fast tokenizer (tokenizer.json), which maps tokens back to words; this "
                         "model's tokenizer is a slow one")
    texts = [" ".join(words) for words in sentences]
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    firsts = []
    for words, offsets, special in zip(sentences, enc["offset_mapping"], enc["special_tokens_mask"]):
        firsts.append(first_tokens(words, offsets, special))
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return Aligned({k: enc[k] for k in keys if k in enc}, firsts)


def first_tokens(words: Sequence[str], offsets: Sequence[Sequence[int]],
                 special: Sequence[int]) -> list[int | None]:
    """The position of each word's first token, None for a word with no token: beyond the truncation, or
    made only of characters the tokenizer removes (a zero-width space, a control character); the character
    offsets still place every other word."""
    starts, ends, at = [], [], 0
    for word in words:
        starts.append(at)
        ends.append(at + len(word))
        at += len(word) + 1
    found: dict[int, int] = {}
    for position, ((begin, end), is_special) in enumerate(zip(offsets, special)):
        if is_special or end <= begin:
            continue
        word = bisect.bisect_right(starts, begin) - 1
        if word >= 0 and begin >= ends[word]:  # from the space after a word
            if word + 1 >= len(words) or end <= starts[word + 1]:
                continue  # the space alone (a character tokenizer's)
            word += 1  # a space and the next word's start (byte-level BPE without trimmed offsets)
        if 0 <= word < len(words):
            found.setdefault(word, position)
    return [found.get(word) for word in range(len(words))]


def token_labels(labels: Sequence[int], first: Sequence[int | None], length: int) -> list[int]:
    """A label per token: the word's label on its first token, IGNORE_INDEX elsewhere (and no label for a
    word with no token)."""
    out = [IGNORE_INDEX] * length
    for label, position in zip(labels, first):
        if position is not None:
            out[position] = int(label)
    return out


def outside_label(names: Sequence[str]) -> int:
    """The label a word gets where the model gave it none (cut by truncation): ``O`` when the scheme has one,
    else the first label."""
    return list(names).index("O") if "O" in names else 0


def word_predictions(logits: Any, first: Sequence[int | None], fill: int) -> list[int]:
    """The arg-max label of each word from one sentence's token logits [T, labels]; ``fill`` for a word
    with no token."""
    best = logits.argmax(-1).tolist()
    return [fill if position is None else best[position] for position in first]
