"""Head-only training on features encoded once (training/features.py): the encoder runs once per example per
split, in eval mode, the features are exactly what the head reads, and the head learns what it learns when
the frozen encoder runs on every batch (the reference path, ``Trainer._features_once = False``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from adapter_cli.training import loop
from adapter_cli.training.data import Encoded, collate
from adapter_cli.training.features import encode_features, evaluate_features, head_logits
from adapter_cli.training.loop import Trainer, train
from adapter_cli.training.recipe import Recipe
from conftest import FILLER, WORDS_NEG, WORDS_POS, save_tiny_model, tiny_model, write_sentiment_task

N_TRAIN, N_EVAL = 40, 24


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path / "tiny")
    return {"model": str(model), "root": tmp_path,
            "single": str(write_sentiment_task(tmp_path / "single", n_train=N_TRAIN, n_eval=N_EVAL)),
            "regression": str(_regression_task(tmp_path / "regression")),
            "choice": str(_choice_task(tmp_path / "choice"))}


def _regression_task(root: Path) -> Path:
    rng = random.Random(1)
    root.mkdir()
    for split, n in (("train", N_TRAIN), ("dev", N_EVAL)):
        lines = ["text\tscore"]
        for _ in range(n):
            score = rng.uniform(0, 5)
            word = rng.choice(WORDS_POS if score > 2.5 else WORDS_NEG)
            lines.append(f"{' '.join(rng.sample(FILLER, 3))} {word}\t{score:.3f}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (root / "task.yaml").write_text("name: toy_score\nkind: regression\nmetrics: [pearson, spearman]\n"
                                    "columns: {text: text, label: score}\nlocal: {train: train.tsv, eval: dev.tsv}\n")
    return root / "task.yaml"


def _choice_task(root: Path) -> Path:
    rng = random.Random(2)
    root.mkdir()
    for split, n in (("train", N_TRAIN), ("dev", N_EVAL)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 2)
            options = [f"{rng.choice(FILLER)} {rng.choice(WORDS_NEG)}" for _ in range(3)]
            options[label] = f"{rng.choice(FILLER)} {rng.choice(WORDS_POS)}"
            rows.append(json.dumps({"premise": " ".join(rng.sample(FILLER, rng.randint(1, 4))),
                                    "a": options[0], "b": options[1], "c": options[2], "label": label}))
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "task.yaml").write_text("name: toy_choice\nkind: multiple_choice\nmetrics: [accuracy]\n"
                                    "choices: {context: [premise], options: [a, b, c], label: label}\n"
                                    "local: {train: train.jsonl, eval: dev.jsonl}\n")
    return root / "task.yaml"


def _recipe(env, kind: str = "single", **changes) -> Recipe:
    return Recipe(task=env[kind], model=env["model"], method="head", epochs=3, batch_size=8, learning_rate=5e-3,
                  patience=None, save_every_steps=2, log_every_steps=2).updated(changes)


class _Count:
    """Rows through the base model, and whether it was ever in train mode (dropout on)."""

    def __init__(self) -> None:
        self.rows = 0
        self.modes: set[bool] = set()

    def __call__(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += ids.shape[0]
        self.modes.add(module.training)


@pytest.fixture
def count(monkeypatch):
    counter = _Count()
    original = loop.build_model

    def build(recipe, task):
        built = original(recipe, task)
        built[0].base.register_forward_pre_hook(counter, with_kwargs=True)
        return built

    monkeypatch.setattr(loop, "build_model", build)
    return counter


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["trainable"]


def _evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- the features
@pytest.mark.parametrize("use_pooler", [False, True])
def test_features_are_what_the_head_reads(use_pooler) -> None:
    """The stored features give the logits the model's own forward gives (first token, or the pooler)."""
    model = tiny_model()
    assert model.base.pooler is not None
    model.add_head("h", "classification", num_labels=3, use_pooler=use_pooler)
    g = torch.Generator().manual_seed(0)
    features = [{"input_ids": torch.randint(5, 100, (n,), generator=g).tolist(), "attention_mask": [1] * n}
                for n in (3, 9, 5, 12, 7)]
    data = Encoded(features, [0, 1, 2, 1, 0])
    stored = encode_features(model, "h", data, 2, torch.device("cpu"), None, 0, False)
    assert stored.values.shape == (5, model.hidden_size) and stored.labels.tolist() == [0, 1, 2, 1, 0]
    model.eval()
    with torch.no_grad():
        batch = collate(data, list(range(5)), 0, False)
        expected = model(batch["input_ids"], batch["attention_mask"], head="h").logits
        got = head_logits(model.heads["h"], stored.values)
    torch.testing.assert_close(got, expected)
    _, predicted = evaluate_features(model.heads["h"], stored, data.labels, _Task(), 2, torch.device("cpu"), None)
    assert predicted == expected.argmax(-1).tolist()


def test_multiple_choice_features_hold_one_row_per_option() -> None:
    model = tiny_model()
    model.add_head("mc", "multiple_choice", num_labels=1, num_choices=3)
    g = torch.Generator().manual_seed(1)
    features = [{"input_ids": [torch.randint(5, 100, (n + c,), generator=g).tolist() for c in range(3)],
                 "attention_mask": [[1] * (n + c) for c in range(3)]} for n in (2, 6, 4)]
    data = Encoded(features, [2, 0, 1], multiple_choice=True)
    stored = encode_features(model, "mc", data, 2, torch.device("cpu"), None, 0, False)
    assert stored.values.shape == (3, 3, model.hidden_size)
    model.eval()
    with torch.no_grad():
        batch = collate(data, [0, 1, 2], 0, False)
        expected = model(batch["input_ids"], batch["attention_mask"], head="mc").logits
        got = head_logits(model.heads["mc"], stored.values)
    torch.testing.assert_close(got, expected)


class _Task:
    kind, metrics = "single", ("accuracy",)


# ---------------------------------------------------------------------------------------------- the runs
def test_the_encoder_runs_once_per_example(env, count, tmp_path) -> None:
    summary = train(_recipe(env), tmp_path / "run")
    assert count.rows == N_TRAIN + N_EVAL  # not epochs x (train + dev)
    assert count.modes == {False}  # eval mode: no dropout in the frozen encoder
    assert summary["head_features"]["train"] == N_TRAIN and summary["head_features"]["eval"] == N_EVAL
    assert summary["head_features"]["read"] == "first_token"
    assert [e["epoch"] for e in _evals(tmp_path / "run") if e["type"] == "eval"] == [1, 2, 3]


def test_the_reference_path_runs_the_encoder_every_epoch(env, count, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Trainer, "_features_once", False)
    summary = train(_recipe(env), tmp_path / "run")
    assert count.rows == 3 * (N_TRAIN + N_EVAL)
    assert count.modes == {False}  # the frozen encoder is never in train mode in a head-only run
    assert "head_features" not in summary


@pytest.mark.parametrize("kind", ["single", "regression", "choice"])
def test_same_head_and_metrics_as_running_the_encoder_every_step(env, tmp_path, monkeypatch, kind) -> None:
    """The same seed gives the same head weights, dev metrics, best epoch and logged losses: the features are
    the same numbers and the head's dropout draws the same masks."""
    fast = train(_recipe(env, kind), tmp_path / "fast")
    monkeypatch.setattr(Trainer, "_features_once", False)
    reference = train(_recipe(env, kind), tmp_path / "reference")
    assert (fast["best"]["epoch"], fast["best"]["step"]) == (reference["best"]["epoch"], reference["best"]["step"])
    assert fast["best"]["metrics"] == pytest.approx(reference["best"]["metrics"])
    assert fast["steps"] == reference["steps"] == 3 * (N_TRAIN // 8)
    ours, theirs = _weights(tmp_path / "fast"), _weights(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    # Multiple choice: the output bias adds the same to every option's score, so its true gradient is 0 and
    # AdamW turns rounding noise (the options are padded to other widths in the two paths) into steps of
    # about the learning rate; it changes no prediction. Every other weight agrees to ~1e-8.
    output_bias = max((k for k in ours if k.endswith(".bias")), key=lambda k: int(k.split(".")[-2]))
    for key in ours:
        if not (kind == "choice" and key == output_bias):
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
    records, expected = _evals(tmp_path / "fast"), _evals(tmp_path / "reference")
    assert len(records) == len(expected) and all(r == pytest.approx(e) for r, e in zip(records, expected))


def test_head_dropout_still_applies(env, tmp_path) -> None:
    """With the head's dropout at 0 the head learns something else: the features path does use it."""
    train(_recipe(env), tmp_path / "with")
    trainer = Trainer(_recipe(env), tmp_path / "without")
    original = trainer._prepare

    def prepare():
        saved = original()
        for module in trainer.head.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return saved

    trainer._prepare = prepare
    trainer.run()
    a, b = _weights(tmp_path / "with"), _weights(tmp_path / "without")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_recomputes_the_features_and_ends_the_same(env, count, tmp_path) -> None:
    recipe = _recipe(env, save_every_steps=1)
    whole = train(recipe, tmp_path / "whole")
    assert train(recipe, tmp_path / "part", stop_after_steps=7)["status"] == "stopped"  # mid-epoch 2
    count.rows = 0
    resumed = train(recipe, tmp_path / "part", resume=True)
    assert count.rows == N_TRAIN + N_EVAL  # encoded again on resume, once
    assert whole["best"] == resumed["best"] and whole["steps"] == resumed["steps"]
    assert _evals(tmp_path / "whole") == _evals(tmp_path / "part")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_and_the_best_head(env, tmp_path) -> None:
    summary = train(_recipe(env, epochs=10, patience=2, learning_rate=0), tmp_path / "run")
    assert summary["stopped_early"] and summary["epochs_run"] == 3
    assert (tmp_path / "run" / "best" / "head_config.json").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "completed"
