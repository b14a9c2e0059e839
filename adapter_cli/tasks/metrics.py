"""Task metrics, as each task is usually reported (scikit-learn and scipy compute them; entity F1 counts
spans as conlleval does)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any


def compute(metrics: Sequence[str], predictions: Sequence[Any], labels: Sequence[Any], kind: str = "single",
            label_names: Sequence[str] = ()) -> dict[str, float]:
    """``predictions`` and ``labels`` are class ids (classification, multiple choice), scores (regression),
    multi-hot rows (``kind`` multilabel) or a label id per word of each text (``kind`` tagging, whose
    ``label_names`` say where the entity spans are)."""
    if kind == "tagging":
        return _tagging(metrics, predictions, labels, label_names)
    if kind == "qa":  # answer texts against each question's gold answers (none: unanswerable)
        pairs = list(zip(predictions, labels))
        score = {"exact_match": exact_match, "token_f1": token_f1}
        return {name: sum(score[name](p, g) for p, g in pairs) / len(pairs) if pairs else 0.0 for name in metrics}
    import numpy as np

    preds, gold = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "accuracy":  # multi-label: the whole set right (subset accuracy)
            hit = preds == gold
            out[name] = float((hit.all(axis=1) if hit.ndim == 2 else hit).mean()) if hit.size else 0.0
        elif name in ("f1", "macro_f1", "micro_f1", "mcc"):
            from sklearn.metrics import f1_score, matthews_corrcoef

            if name == "mcc":
                out[name] = float(matthews_corrcoef(gold, preds))
            elif name == "macro_f1" and kind == "multilabel":
                out[name] = _multilabel_macro_f1(preds, gold)
            else:
                average = {"f1": "binary", "macro_f1": "macro", "micro_f1": "micro"}[name]
                out[name] = float(f1_score(gold, preds, average=average, zero_division=0))
        elif name in ("pearson", "spearman"):
            from scipy.stats import pearsonr, spearmanr

            if np.std(preds) == 0 or np.std(gold) == 0:
                out[name] = 0.0  # a constant prediction has no correlation (scipy would return nan)
            else:
                out[name] = float((pearsonr if name == "pearson" else spearmanr)(preds, gold)[0])
        else:
            raise ValueError(f"unknown metric {name}")
    return out


def _multilabel_macro_f1(preds: Any, gold: Any) -> float:
    """The mean F1 over the labels that occur in the gold sets or the predictions, as single-label macro F1
    averages over the labels it sees: a label absent from both (rare in a small dev set) is no evidence of
    anything, and counting it as 0 would pull a perfect score down."""
    from sklearn.metrics import f1_score

    seen = [i for i in range(gold.shape[1]) if gold[:, i].any() or preds[:, i].any()] if gold.ndim == 2 else []
    if not seen:
        return 1.0  # every set is empty and predicted empty
    return float(f1_score(gold, preds, labels=seen, average="macro", zero_division=0))


def _tagging(metrics: Sequence[str], predictions: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
             label_names: Sequence[str]) -> dict[str, float]:
    flat_pred = [p for row in predictions for p in row]
    flat_gold = [g for row in labels for g in row]
    out: dict[str, float] = {}
    for name in metrics:
        if name == "entity_f1":
            names = list(label_names)
            found = guessed = correct = 0
            for pred_row, gold_row in zip(predictions, labels):
                pred = entity_spans([names[i] for i in pred_row])
                gold = entity_spans([names[i] for i in gold_row])
                found, guessed, correct = found + len(gold), guessed + len(pred), correct + len(pred & gold)
            precision = correct / guessed if guessed else 0.0
            recall = correct / found if found else 0.0
            out[name] = 2 * precision * recall / (precision + recall) if correct else 0.0
        else:
            out.update(compute([name], flat_pred, flat_gold))
    return out


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The (type, first word, end) spans of a tag sequence in IOB1, IOB2 (BIO) or IOBES, by conlleval's
    rules: a span starts at B-/S-, at an I-/E- after O, E- or S-, or where the type changes, and ends before
    the next start, an O, or after E-/S-. A tag without a prefix (``PER``) counts as ``I-PER``."""
    spans: set[tuple[str, int, int]] = set()
    start: int | None = None
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = _split_tag(tag)
        if start is not None and _ends(prev_prefix, prefix, prev_type, typ):
            spans.add((prev_type, start, i))
            start = None
        if _starts(prev_prefix, prefix, prev_type, typ):
            start = i
        prev_prefix, prev_type = prefix, typ
    return spans


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", ""
    prefix, dash, typ = tag.partition("-")
    if dash and prefix in ("B", "I", "E", "S"):
        return prefix, typ
    return "I", tag


def _ends(prev: str, tag: str, prev_type: str, typ: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != typ


def _starts(prev: str, tag: str, prev_type: str, typ: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != typ


_PUNCTUATION = frozenset(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(golds: Sequence[str]) -> list[str]:
    """The gold answers that say something after normalisation; none: the question has no answer (as the
    official SQuAD 2.0 script reads them)."""
    return [g for g in golds if normalize(g)] or [""]


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
    """1 when the prediction equals any gold answer after normalisation (an empty gold: an empty prediction);
    no prediction at all (None: the question had no window) is a miss."""
    if prediction is None:
        return 0.0
    return float(any(normalize(prediction) == normalize(g) for g in _golds(golds)))


def token_f1(prediction: str | None, golds: Sequence[str]) -> float:
    """The best word-overlap F1 of the prediction against the gold answers (SQuAD's F1)."""
    if prediction is None:
        return 0.0
    return max(_f1(normalize(prediction).split(), normalize(g).split()) for g in _golds(golds))


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
