"""Multi-task batches (MT-A, Stickland & Murray 2019): which task each step trains, by annealed sampling.

At epoch ``e`` of ``E`` (1-based) task ``i`` is drawn with probability ∝ ``N_i ** alpha`` where ``alpha``
goes linearly from ``alpha_start`` (epoch 1) to ``alpha_end`` (epoch E): with the defaults 1 and 0.2 this is
the paper's ``alpha = 1 - 0.8 (e - 1) / (E - 1)``, sampling by size at first and more evenly later, so that
small tasks are not drowned by big ones. An epoch is ``steps_per_epoch`` steps, by default the number of
batches of all tasks together (so one epoch sees about as many examples as one pass over every task).

Everything here is a pure function of (sizes, seed, epoch, step): the task drawn at a step comes from a
generator seeded by (seed, epoch, step), and each task's batches from its own permutations seeded by (seed,
task, epoch, round). A run resumed at any step therefore takes exactly the steps the uninterrupted run took.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ..errors import UsageError

SCHEDULES = ("annealed", "constant")


def alpha(epoch: int, epochs: int, start: float = 1.0, end: float = 0.2, schedule: str = "annealed") -> float:
    """The sampling exponent at 1-based ``epoch`` of ``epochs`` (one epoch: ``start``)."""
    if schedule == "constant" or epochs <= 1:
        return float(start)
    return float(start) - (float(start) - float(end)) * (epoch - 1) / (epochs - 1)


def probabilities(sizes: list[int], exponent: float) -> list[float]:
    """P(task i) = N_i^alpha / sum_j N_j^alpha."""
    weights = [float(n) ** exponent for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def draw_task(probs: list[float], seed: int, epoch: int, step: int) -> int:
    """The task of one step: seeded by (seed, epoch, step) alone, so a resumed run draws the same."""
    u = random.Random((seed * 1_000_003 + epoch) * 1_000_003 + step).random()
    cumulative = 0.0
    for i, p in enumerate(probs):
        cumulative += p
        if u < cumulative:
            return i
    return len(probs) - 1  # rounding: the last task


def default_steps(sizes: list[int], batch_size: int) -> int:
    """An epoch's steps when the recipe does not say: every task's batches together."""
    return sum(math.ceil(n / batch_size) for n in sizes)


def epoch_plan(sizes: list[int], batch_size: int, seed: int, epoch: int, epochs: int, recipe: Any,
               steps: int | None = None, lengths: list[list[int]] | None = None) -> list[tuple[int, list[int]]]:
    """(task index, example indices) for every step of 0-based ``epoch``. Each task's batches come from its
    own seeded permutations, a new one whenever the last is used up (a task drawn often cycles through its
    data more than once per epoch, a rare one may not finish it); grouped by length with ``lengths`` (each
    task's example lengths: recipe key ``group_by_length``)."""
    from .data import epoch_batches

    exponent = alpha(epoch + 1, epochs, recipe.alpha_start, recipe.alpha_end, recipe.alpha_schedule)
    probs = probabilities(sizes, exponent)
    queues: list[list[list[int]]] = [[] for _ in sizes]
    rounds = [0] * len(sizes)
    plan = []
    for step in range(steps or default_steps(sizes, batch_size)):
        i = draw_task(probs, seed, epoch, step)
        if not queues[i]:
            queues[i] = epoch_batches(sizes[i], batch_size, seed + 7919 * (i + 1), epoch * 10_000 + rounds[i],
                                      lengths=lengths[i] if lengths else None)
            rounds[i] += 1
        plan.append((i, queues[i].pop(0)))
    return plan


def check_tasks(recipe: Any) -> list[Any]:
    """The tasks of a multitask recipe, each once, with a head of its own: one line for each bad input,
    before any data is read."""
    from ..tasks import get_task

    names = list(recipe.tasks or [])
    if not names:
        raise UsageError("`method` multitask needs `tasks`: two or more task names or task files")
    if len(names) < 2:
        raise UsageError(f"multitask training needs two or more tasks, got one ({names[0]}); train one task with "
                         f"`adapt train --task {names[0]}`")
    specs = [get_task(n) for n in names]  # an unknown name: one line with the nearest names
    seen: dict[str, str] = {}
    for given, spec in zip(names, specs):
        head = spec.name.replace(".", "_")
        if head in seen:
            raise UsageError(f"tasks {seen[head]} and {given} are the same task or share the adapter and head name "
                             f"{head!r}; each task trains its own adapter and head")
        seen[head] = given
        if spec.plain_text:
            raise UsageError(f"task {given} is language modelling on plain text; multitask training takes tasks with "
                             "a prediction head")
    unknown = sorted(set(recipe.data_dirs or {}) - set(names) - {s.name for s in specs})
    if unknown:
        raise UsageError(f"`data_dirs` names {unknown[0]}, which is not one of the tasks ({', '.join(names)})")
    return specs
