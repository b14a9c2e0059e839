"""Recipe key group_by_length: batches of similar length, every example once an epoch, the order a function of
(seed, epoch) alone (what resuming relies on)."""

from __future__ import annotations

import random

import pytest

from adapter_cli.errors import UsageError
from adapter_cli.training.data import epoch_batches
from adapter_cli.training.recipe import Recipe


def _padded(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_grouped_batches_cover_every_example_once_with_far_less_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([8, 12, 20, 60, 128]) for _ in range(5000)]
    plain = epoch_batches(len(lengths), 32, 42, 3)
    grouped = epoch_batches(len(lengths), 32, 42, 3, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
    assert len(grouped) == len(plain)
    assert _padded(grouped, lengths) < 0.6 * _padded(plain, lengths)
    assert grouped == epoch_batches(len(lengths), 32, 42, 3, lengths=lengths)  # (seed, epoch) decide it all
    assert grouped != epoch_batches(len(lengths), 32, 42, 4, lengths=lengths)
    first_lengths = [lengths[b[0]] for b in grouped[:20]]
    assert first_lengths != sorted(first_lengths, reverse=True)  # the steps are shuffled, not longest first


def test_grouped_batches_split_across_processes_like_plain_ones() -> None:
    lengths = [(i * 7919) % 97 + 1 for i in range(1000)]
    ranks = [epoch_batches(1000, 8, 1, 0, rank=r, world=2, lengths=lengths) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert sorted(i for r in ranks for b in r for i in b) == list(range(1000))


def test_the_key_is_a_boolean() -> None:
    assert Recipe().updated({"group_by_length": True}).group_by_length is True
    with pytest.raises(UsageError, match="group_by_length must be true or false"):
        Recipe().updated({"group_by_length": "yes"})
