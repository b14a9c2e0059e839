"""Subsets of a split (recipe keys ``max_train_samples`` / ``max_eval_samples``): drawn at random with the
run's seed, never the first N rows.

Original files are often ordered (STS-B's train.tsv by genre, many by label), so the first N rows are a
biased sample. A classification subset is stratified: every label keeps its share of the split, to
within one row. A regression subset is a plain random sample. Each row's rank is a SHA-256 of
(seed, split, row index): the same seed draws the same rows on any machine and any Python version, and
the row indices are recorded in the run (``subset.json``) so a resumed run reads exactly the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

STRATEGIES = ("all", "stratified", "random")


@dataclass(frozen=True)
class Subset:
    """Which rows of a split a run reads. ``indices`` are 0-based positions in the split, in file order."""

    split: str
    strategy: str  # all (no subset: the split is smaller than asked for, or no limit), stratified, random
    seed: int
    requested: int | None  # the recipe's max_*_samples
    total: int  # rows in the split
    indices: tuple[int, ...]

    @property
    def sha256(self) -> str:
        return indices_sha256(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """The record in the run directory; ``indices`` is left out when every row is kept."""
        out: dict[str, Any] = {"strategy": self.strategy, "seed": self.seed, "requested": self.requested,
                               "rows": len(self.indices), "of": self.total, "indices_sha256": self.sha256}
        if self.strategy != "all":
            out["indices"] = list(self.indices)
        return out


def indices_sha256(indices: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()


def _rank(seed: int, salt: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{salt}:{index}".encode()).digest()


def _quotas(counts: dict[Any, int], size: int) -> dict[Any, int]:
    """Largest-remainder allocation: each label gets floor(share) or floor(share) + 1 rows, ``size`` in all."""
    total = sum(counts.values())
    exact = {label: size * count / total for label, count in counts.items()}
    quotas = {label: int(value) for label, value in exact.items()}
    left = size - sum(quotas.values())
    # ties go to the label seen first, so the allocation does not depend on dict or hash order
    order = sorted(counts, key=lambda label: -(exact[label] - quotas[label]))
    for label in order[:left]:
        quotas[label] += 1
    return quotas


def sample_indices(labels: Sequence[Any], size: int | None, seed: int, stratify: bool,
                   salt: str = "") -> tuple[str, list[int]]:
    """(strategy, sorted row indices) of a ``size``-row subset of rows with these ``labels``.

    ``size`` None or at least the number of rows keeps every row (strategy ``all``).
    """
    total = len(labels)
    if size is None or size >= total:
        return "all", list(range(total))
    if size < 1:
        raise UsageError(f"a subset needs at least one row, got {size}")
    ranked = sorted(range(total), key=lambda i: _rank(seed, salt, i))
    if not stratify:
        return "random", sorted(ranked[:size])
    counts: dict[Any, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    quotas = _quotas(counts, size)
    chosen = []
    for i in ranked:  # in rank order: each label's quota is filled by its best-ranked rows
        if quotas[labels[i]] > 0:
            quotas[labels[i]] -= 1
            chosen.append(i)
    return "stratified", sorted(chosen)


def draw(split: str, labels: Sequence[Any], size: int | None, seed: int, stratify: bool) -> Subset:
    strategy, indices = sample_indices(labels, size, seed, stratify, salt=split)
    return Subset(split, strategy, seed, size, len(labels), tuple(indices))


def from_record(split: str, record: dict[str, Any], total: int, size: int | None, seed: int,
                where: str) -> Subset:
    """The subset a run recorded, checked against the data and recipe it is resumed with."""
    def bad(why: str) -> UsageError:
        return UsageError(f"cannot resume: {where} records a {split} subset of {record.get('rows')} of "
                          f"{record.get('of')} rows (seed {record.get('seed')}), but {why}; resume with the "
                          "same data and recipe, or start a new run")

    strategy = record.get("strategy")
    if strategy not in STRATEGIES:
        raise bad(f"its strategy {strategy!r} is unknown")
    if record.get("of") != total:
        raise bad(f"the {split} data now has {total} rows")
    if record.get("seed") != seed or record.get("requested") != size:
        raise bad(f"the recipe now says seed {seed}, max_{split}_samples {size}")
    indices = tuple(range(total)) if strategy == "all" else tuple(record.get("indices") or ())
    if indices_sha256(indices) != record.get("indices_sha256") or any(not 0 <= i < total for i in indices):
        raise bad("its row indices do not match their recorded hash")
    return Subset(split, strategy, seed, size, total, indices)
