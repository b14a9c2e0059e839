"""Extractive question answering: contexts cut into overlapping windows, answers found back in the text.

A question and its context are tokenised as a pair; a context longer than the window is cut into several
windows that overlap by ``stride`` tokens (the question repeated in each), as SQuAD models are usually
trained. In training, a window that holds the whole answer is labelled with the answer's first and last
token; a window that does not, with position 0 ("not in this window"), as transformers' QA examples do. An
answer that no window holds (the question alone fills the window, or the answer is longer than one) is
counted as ``lost``: it is reported, and such an example can only be scored as a miss. A question that
leaves no room for its context gets no window at all (``unfit``): it has no answer.

An answer is read off the windows of its example: the best pair of a start and an end token within the
context (end not before start, at most ``max_answer_tokens`` long) by the sum of their logits, over every
window; for a task with unanswerable questions (SQuAD 2.0) the answer is empty where position 0 scores
higher than the best span. Its text is the context's own characters between the two tokens' offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

MAX_ANSWER_TOKENS = 30
N_BEST = 20


def stride_for(max_length: int) -> int:
    """The overlap of consecutive windows: a quarter of the window, at most 128 tokens (transformers' default
    for a 384-token window)."""
    return min(128, max(1, max_length // 4))


@dataclass
class Windows:
    """The windows of a batch of examples: ``encoding`` lists per window (input_ids, attention_mask,
    token_type_ids), the example each window belongs to, each token's (start, end) characters in the
    context (None outside it), and in training the (start, end) token label of each window."""

    encoding: dict[str, list[list[int]]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]
    positions: list[tuple[int, int]] = field(default_factory=list)
    lost: int = 0  # answers that no window holds
    unfit: list[int] = field(default_factory=list)  # examples whose question alone fills the window


def windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], max_length: int,
            answers: Sequence[tuple[int, int] | None] | None = None) -> Windows:
    """Tokenise (question, context) pairs into windows; ``answers`` (training) gives each example's answer
    as (first character, end character) in its context, or None for a question without an answer."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError("question answering needs a fast tokenizer (tokenizer.json), which maps tokens back to "
                         "the context's characters; this model's tokenizer is a slow one")
    # a window holds the question, the special tokens and at least the overlap plus one token of context
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride_for(max_length) - 1
    lengths = [len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    fit = [i for i, n in enumerate(lengths) if n <= room]
    unfit = [i for i, n in enumerate(lengths) if n > room]
    keys = ("input_ids", "attention_mask", "token_type_ids")
    out = Windows({k: [] for k in keys}, [], [], unfit=unfit)
    if fit:
        enc = tokenizer([questions[i] for i in fit], [contexts[i] for i in fit], truncation="only_second",
                        max_length=max_length, stride=stride_for(max_length), return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        out.encoding = {k: enc[k] for k in keys if k in enc}
        out.example = [fit[i] for i in enc["overflow_to_sample_mapping"]]
        for w in range(len(enc["input_ids"])):
            ids = enc.sequence_ids(w)
            out.offsets.append([tuple(span) if ids[t] == 1 else None
                                for t, span in enumerate(enc["offset_mapping"][w])])
    if answers is None:
        return out
    found = set()
    for w, example in enumerate(out.example):
        span = answers[example]
        position = (0, 0) if span is None else _token_span(out.offsets[w], span)
        if span is not None and position != (0, 0):
            found.add(example)
        out.positions.append(position)
    out.lost = sum(1 for i, span in enumerate(answers) if span is not None and i not in found)
    return out


def _token_span(offsets: list[tuple[int, int] | None], span: tuple[int, int]) -> tuple[int, int]:
    """The first and last token of the characters ``span`` in one window, or (0, 0) when the window does
    not hold all of it."""
    inside = [t for t, o in enumerate(offsets) if o is not None]
    if not inside:
        return 0, 0
    first, last = inside[0], inside[-1]
    start_char, end_char = span
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return 0, 0
    start = next(t for t in inside if offsets[t][1] > start_char)  # type: ignore[index]
    end = next(t for t in reversed(inside) if offsets[t][0] < end_char)  # type: ignore[index]
    return start, max(start, end)


def best_answers(start_logits: Sequence[Any], end_logits: Sequence[Any], found: Windows, contexts: Sequence[str],
                 allow_empty: bool = False) -> list[dict[str, Any]]:
    """The best answer of each example from its windows' logits (lists or 1-D tensors, one per window):
    ``answer`` (the context's text), ``start``/``end`` (characters), ``score`` (the start and end logits'
    sum), ``probability`` (start times end softmax probability within its window) and ``no_answer`` (the
    score of position 0, an empty answer's, lowest over the windows); ``answer`` None for an example with no
    window."""
    import torch

    best: dict[int, dict[str, Any]] = {}
    empty: dict[int, float] = {}
    for w, example in enumerate(found.example):
        start = torch.as_tensor(start_logits[w]).float()
        end = torch.as_tensor(end_logits[w]).float()
        offsets = found.offsets[w]
        empty[example] = min(empty.get(example, float("inf")), float(start[0] + end[0]))
        context = [t for t, o in enumerate(offsets) if o is not None and t < len(start)]
        if not context:
            continue
        mask = torch.full_like(start, float("-inf"))
        mask[context] = 0.0
        p_start, p_end = (start + mask).softmax(-1), (end + mask).softmax(-1)
        starts = sorted(context, key=lambda t: -float(start[t]))[:N_BEST]
        ends = sorted(context, key=lambda t: -float(end[t]))[:N_BEST]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                    continue
                score = float(start[s] + end[e])
                if example not in best or score > best[example]["score"]:
                    a, b = offsets[s][0], offsets[e][1]  # type: ignore[index]
                    best[example] = {"answer": contexts[example][a:b], "start": a, "end": b, "score": score,
                                     "probability": float(p_start[s] * p_end[e])}
    out = []
    for example in range(len(contexts)):
        answer = best.get(example)
        if example not in empty:  # no window: the question alone fills one
            answer = {"answer": None, "start": None, "end": None, "score": None, "probability": None}
        elif answer is None or (allow_empty and empty[example] > answer["score"]):
            answer = {"answer": "", "start": None, "end": None, "score": empty[example], "probability": None}
        answer["no_answer"] = empty.get(example)
        out.append(answer)
    return out
