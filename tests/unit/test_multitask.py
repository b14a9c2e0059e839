"""MT-A (training/sampling.py, training/multitask.py): the annealed sampling schedule, gradients only where
the drawn task's adapter and head are (and always in the base), and MT-A adapters refused by the base they
were not trained with."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from adapter_cli.training.sampling import alpha, default_steps, draw_task, epoch_plan, probabilities


def test_alpha_follows_the_formula() -> None:
    epochs = 5
    for e in range(1, epochs + 1):
        assert alpha(e, epochs) == pytest.approx(1 - 0.8 * (e - 1) / (epochs - 1))
    assert alpha(1, 1) == 1.0  # one epoch: proportional to size
    assert alpha(3, 5, 0.5, 0.1, "constant") == 0.5
    assert alpha(5, 5, 0.9, 0.3) == pytest.approx(0.3)


def test_draws_follow_n_to_the_alpha() -> None:
    sizes = [1000, 100, 10]
    for exponent in (1.0, 0.6, 0.2):
        probs = probabilities(sizes, exponent)
        expected = [n ** exponent / sum(m ** exponent for m in sizes) for n in sizes]
        assert probs == pytest.approx(expected)
        draws = 20_000
        counts = Counter(draw_task(probs, 42, 3, step) for step in range(draws))
        for i, p in enumerate(probs):  # 4 standard deviations of a binomial count
            assert abs(counts[i] / draws - p) < 4 * (p * (1 - p) / draws) ** 0.5 + 1e-9


def test_epoch_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    recipe = SimpleNamespace(alpha_start=1.0, alpha_end=0.2, alpha_schedule="annealed")
    sizes = [40, 8]
    plan = epoch_plan(sizes, 4, 7, 1, 3, recipe)
    assert len(plan) == default_steps(sizes, 4) == 12
    assert plan == epoch_plan(sizes, 4, 7, 1, 3, recipe)
    assert plan != epoch_plan(sizes, 4, 7, 2, 3, recipe)
    assert all(0 <= j < sizes[i] for i, batch in plan for j in batch)
    assert len(epoch_plan(sizes, 4, 7, 0, 3, recipe, steps=5)) == 5


@pytest.fixture
def two_tasks(tmp_path, monkeypatch):
    from conftest import save_tiny_model, write_sentiment_task

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path / "tiny")
    a = write_sentiment_task(tmp_path / "a", n_train=16, n_eval=8)
    b = write_sentiment_task(tmp_path / "b", n_train=16, n_eval=8, seed=1)
    b.write_text(b.read_text().replace("toy_sentiment", "toy_two"))
    return {"model": str(model), "tasks": [str(a), str(b)], "root": tmp_path}


def _trainer(env, **changes):
    from adapter_cli.training.multitask import MultiTaskTrainer
    from adapter_cli.training.recipe import load_recipe

    recipe = load_recipe("multitask").updated({"tasks": env["tasks"], "model": env["model"], "batch_size": 8,
                                               "max_length": 16, "device": "cpu", "precision": "fp32", **changes})
    trainer = MultiTaskTrainer(recipe, env["root"] / "run")
    trainer._prepare()
    return trainer


def test_gradients_reach_the_drawn_task_and_the_base_only(two_tasks) -> None:
    trainer = _trainer(two_tasks)
    model = trainer.model
    for item in trainer._batches(0)[:4]:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._loss(item).backward()
        drawn = trainer.names[item[0]]
        for name in trainer.names:
            params = [p for module in (model.adapters[name], model.heads[name]) for p in module.parameters()]
            if name == drawn:  # every weight is in the graph (an adapter's zero-initialised up-projection
                # gives its down-projection a zero gradient at first, so not every gradient is non-zero)
                assert all(p.grad is not None for p in params) and any(bool(p.grad.abs().sum() > 0) for p in params)
            else:
                assert all(p.grad is None for p in params), (name, drawn)
        assert all(p.grad is not None for p in model.base.encoder.parameters())
    lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert len(trainer.optimizer.param_groups) == 4 and len(lrs) == 2  # the base at base_learning_rate


def test_an_mta_adapter_is_refused_by_the_original_base(two_tasks) -> None:
    from adapter_cli.errors import BaseModelMismatch
    from adapter_cli.model import AdapterModel

    trainer = _trainer(two_tasks)
    trainer.run_dir.mkdir()
    trainer._save_best()
    best = trainer.run_dir / "best"
    original = AdapterModel.from_pretrained(two_tasks["model"])
    with pytest.raises(BaseModelMismatch) as refused:
        original.load_adapter(best / trainer.names[0])
    assert "\n" not in str(refused.value) and "+mta-" in str(refused.value)
    derived = AdapterModel.from_pretrained(best / "base")
    assert "+mta-" in derived.name_or_path
    assert derived.load_adapter(best / trainer.names[0]) == trainer.names[0]
    for p, q in zip(derived.base.parameters(), trainer.model.base.parameters()):
        assert torch.equal(p, q.cpu())


def test_the_same_weights_get_the_same_base_id_whatever_the_model_was_called(tmp_path) -> None:
    from adapter_cli.defaults import embedded_model_path, resolve_model
    from adapter_cli.training.multitask import derived_id

    digest = "0123456789ab" * 5
    names = ["minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "SENTENCE-TRANSFORMERS/ALL-MINILM-L6-V2"]
    assert {derived_id(n, digest) for n in names} == {"minilm+mta-0123456789ab"}
    assert {resolve_model(n) for n in names} == {str(embedded_model_path())}
    (tmp_path / "my-bert").mkdir()
    assert derived_id(str(tmp_path / "my-bert"), digest) == "my-bert+mta-0123456789ab"
    assert derived_id(str(tmp_path / "my-bert" / "."), digest) == "my-bert+mta-0123456789ab"
