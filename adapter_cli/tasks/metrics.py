"""Task metrics, as each task is usually reported (scikit-learn and scipy compute them)."""

from __future__ import annotations

from collections.abc import Sequence

def compute(metrics: Sequence[str], predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """``predictions`` are class ids (classification, multiple choice) or scores (regression)."""
    import numpy as np

    preds, gold = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = float((preds == gold).mean())
        elif name in ("f1", "macro_f1", "mcc"):
            from sklearn.metrics import f1_score, matthews_corrcoef

            if name == "mcc":
                out[name] = float(matthews_corrcoef(gold, preds))
            else:
                out[name] = float(f1_score(gold, preds, average="binary" if name == "f1" else "macro",
                                           zero_division=0))
        elif name in ("pearson", "spearman"):
            from scipy.stats import pearsonr, spearmanr

            if np.std(preds) == 0 or np.std(gold) == 0:
                out[name] = 0.0  # a constant prediction has no correlation (scipy would return nan)
            else:
                out[name] = float((pearsonr if name == "pearson" else spearmanr)(preds, gold)[0])
        else:
            raise ValueError(f"unknown metric {name}")
    return out
