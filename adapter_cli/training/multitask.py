"""MT-A (Stickland & Murray 2019, "BERT and PALs"; the MT-A baseline of the AdapterFusion paper): one run
trains a shared base (at its own, lower learning rate) together with one adapter and one head per task,
each step a batch of one task drawn by annealed sampling (``sampling.py``).

It is the ``Trainer`` with these parts replaced: the model (all adapters and heads, the base unfrozen), the
batches (a plan of (task, indices) per epoch, a pure function of seed and epoch, so resume is exact), the loss
(the drawn task's adapter and head), the evaluation (each task on its own dev set; early stopping and the best
checkpoint follow the mean of the tasks' main metrics) and the best checkpoint::

    best/multitask.json   the new base model's id and fingerprint, and each task's adapter name
    best/base/            the fine-tuned base (save_pretrained + tokenizer), a model directory of its own
    best/<name>/          each task's adapter and head, recorded as made for the new base

The fine-tuned base is no longer the base it started from, so it gets an id of its own,
``<base>+mta-<first 12 hex of the sha256 of its weights>`` (in its config.json as ``adapt_base_id``, with the
full hash as ``adapt_base_fingerprint``): adapters trained with it are cached under that id and carry the
fingerprint, and the engine refuses to load them into any base without it (``AdapterModel.check_compatible``).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..devices import autocast_dtype, resolve_device
from ..errors import UsageError
from ..fsutil import dump_json
from .data import collate, encode, load_examples
from .loop import Trainer, evaluate
from .recipe import Recipe
from .sampling import alpha, check_tasks, epoch_plan
from .setup import build_multitask_model

BEST_META = "multitask.json"


@dataclass
class JointTask:
    """All tasks of a run as the loop sees one: its name, and the metric it keeps the best by."""

    name: str
    kind: str = "multitask"
    main_metric: str = "mean"
    lower_is_better: bool = False


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the names and bytes of a module's weights: the same weights, the same base id."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def derived_id(model: str, fingerprint: str) -> str:
    """``minilm+mta-0123456789ab``: where the base came from, and which weights it has now. The embedded
    model is ``minilm`` whichever of its names the run was given, a local directory its directory's name."""
    from ..defaults import is_embedded_name

    path = Path(model).expanduser()
    if path.is_dir():  # a local directory: its own name (`.` or `../x` say nothing), whatever it is called
        short = path.resolve().name
    else:
        short = "minilm" if is_embedded_name(model) else model
    return f"{short}+mta-{fingerprint[:12]}"


class MultiTaskTrainer(Trainer):
    """The loop of ``Trainer`` over several tasks at once (see the module doc)."""

    def _resolve_task(self, recipe: Recipe) -> Any:
        self.tasks = check_tasks(recipe)
        return JointTask("+".join(t.name for t in self.tasks))

    def _prepare(self) -> dict[str, Any] | None:
        recipe = self.recipe
        if self.world > 1:
            raise UsageError("multitask training runs in one process; start it without torchrun")
        saved = self._read_checkpoint()
        random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        self.model, self.tokenizer, self.names = build_multitask_model(recipe, self.tasks)
        self.name, self.active = self.names[0], None
        max_length = self.model.fit_max_length(recipe.max_length, "recipe key max_length")
        self.device = resolve_device(recipe.device)
        self.autocast = autocast_dtype(recipe.precision, self.device)
        self.model.to(self.device)
        self.pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0  # an image processor has none
        self._load_tasks(max_length)
        self.masker, self.on_features, self.compiled = None, False, False
        self.train_features = self.eval_features = None
        self._build_optimizer()
        if saved is not None:
            self._restore(saved)
        return saved

    def _load_tasks(self, max_length: int) -> None:
        """Each task's data (seeded subsets; on resume the ones recorded in subset.json, checked against the data)."""
        recipe, dirs = self.recipe, self.recipe.data_dirs
        self.train_sets, self.eval_sets, self.subsets = [], [], {}
        for given, task in zip(recipe.tasks, self.tasks):
            train, dev, record = load_examples(task, dirs.get(given) or dirs.get(task.name), recipe.seed,
                                               recipe.max_train_samples, recipe.max_eval_samples,
                                               self.run_dir if self.resume else None, part=task.name)
            self.train_sets.append(encode(task, train, self.tokenizer, max_length))
            self.eval_sets.append(encode(task, dev, self.tokenizer, max_length))
            self.subsets[task.name] = record
        self.train_data, self.eval_data = self.train_sets[0], self.eval_sets[0]

    def _build_optimizer(self) -> None:
        """The loop's optimizer and schedule, with the base's weights in groups at ``base_learning_rate``."""
        super()._build_optimizer()
        base = {id(p) for p in self.model.base.parameters()}
        groups = []
        for lr, in_base in ((self.recipe.learning_rate, False), (self.recipe.base_learning_rate, True)):
            for decay in (True, False):
                params = [p for p in self.params if (id(p) in base) == in_base and (p.dim() > 1) == decay]
                groups.append({"params": params, "lr": lr,
                               "weight_decay": self.recipe.weight_decay if decay else 0.0})
        schedule = self.scheduler.lr_lambdas[0]
        self.optimizer = torch.optim.AdamW(groups, lr=self.recipe.learning_rate, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def _batches(self, epoch: int) -> list[Any]:
        sizes = [len(d) for d in self.train_sets]
        from .data import lengths_of

        lengths = [lengths_of(d) for d in self.train_sets] if self.recipe.group_by_length else None
        return epoch_plan(sizes, self.recipe.batch_size, self.recipe.seed, epoch, self.recipe.epochs, self.recipe,
                          self.recipe.steps_per_epoch, lengths)

    def _loss(self, item: Any) -> torch.Tensor:
        """The drawn task's batch through the base, its adapter and its head."""
        i, indices = item
        batch = collate(self.train_sets[i], indices, self.pad_id, self.tasks[i].float_labels)
        return self.forward(**{k: v.to(self.device) for k, v in batch.items()}, active=self.names[i]).loss

    def evaluate_tasks(self) -> dict[str, float]:
        """Each task on its own dev set with its own adapter and head; ``mean`` of their main metrics and
        ``TASK/METRIC`` for every metric."""
        flat: dict[str, float] = {}
        mains = []
        for task, name, data in zip(self.tasks, self.names, self.eval_sets):
            metrics = evaluate(self.model, data, task, self.recipe.eval_batch_size, name, self.device,
                               self.autocast, self.pad_id)[0]
            mains.append(metrics[task.main_metric])
            flat.update({f"{task.name}/{k}": v for k, v in metrics.items()})
        return {"mean": sum(mains) / len(mains), **flat}

    def _end_epoch(self) -> None:
        """Evaluate every task, keep the best by the mean, maybe stop early, checkpoint."""
        state = self.state
        state.epoch += 1
        state.batch = 0
        metrics = self.evaluate_tasks()
        improved = state.best["metric"] is None or metrics["mean"] > state.best["metric"]
        if improved:
            state.best = {"metric": metrics["mean"], "epoch": state.epoch, "step": state.step, "metrics": metrics}
            state.bad_evals = 0
            self._save_best()
        else:
            state.bad_evals += 1
        exponent = alpha(state.epoch, self.recipe.epochs, self.recipe.alpha_start, self.recipe.alpha_end,
                         self.recipe.alpha_schedule)
        self._record({"type": "eval", "step": state.step, "epoch": state.epoch, "alpha": exponent, **metrics})
        self.reporter.evaluated(state.epoch, state.step, metrics, improved)
        state.stopped_early = self.recipe.patience is not None and state.bad_evals >= self.recipe.patience
        self.save_checkpoint()
        for callback in self.callbacks:
            callback.on_epoch_end(self)

    def _save_best(self) -> None:
        """best/ whole or not at all: the base as a model directory of its own id, each task's adapter and head
        recorded as made for it."""
        from ..defaults import model_id, resolve_model
        from ..fsutil import atomic_directory

        model = self.model
        fingerprint = weights_fingerprint(model.base)
        base_id = derived_id(self.recipe.model, fingerprint)
        model.base.config.adapt_base_id = base_id
        model.base.config.adapt_base_fingerprint = fingerprint
        model.base.config.adapt_derived_from = model_id(resolve_model(self.recipe.model))
        model.name_or_path = base_id
        # the adapters are written (atomically each) beside, then copied in: atomic directories do not nest
        with tempfile.TemporaryDirectory(prefix="adapt-mta-") as staging, \
                atomic_directory(self.run_dir / "best") as tmp:
            for name in self.names:
                shutil.copytree(model.save_adapter(Path(staging) / name, name), tmp / name)
            model.base.save_pretrained(str(tmp / "base"))
            self.tokenizer.save_pretrained(str(tmp / "base"))
            meta = {"base_model": base_id, "fingerprint": fingerprint,
                    "derived_from": model.base.config.adapt_derived_from,
                    "tasks": {t.name: n for t, n in zip(self.tasks, self.names)}}
            (tmp / BEST_META).write_text(dump_json(meta), encoding="utf-8")

    def _summary(self) -> dict[str, Any]:
        s = self.state
        best_metrics = s.best["metrics"] or {}
        meta_path = self.run_dir / "best" / BEST_META
        meta = json_file(meta_path) if meta_path.is_file() else {}
        per_task = {t.name: {k.split("/", 1)[1]: v for k, v in best_metrics.items() if k.startswith(f"{t.name}/")}
                    for t in self.tasks}
        return {"task": self.task.name, "tasks": [t.name for t in self.tasks], "method": "multitask",
                "name": self.task.name, "model": self.recipe.model, "main_metric": "mean", "best": s.best,
                "mean": s.best["metric"], "per_task": per_task,
                "main_metrics": {t.name: t.main_metric for t in self.tasks},
                "base_model": meta.get("base_model"), "derived_from": meta.get("derived_from"),
                "epochs_run": s.epoch, "steps": s.step, "stopped_early": s.stopped_early,
                "train_examples": {t.name: len(d) for t, d in zip(self.tasks, self.train_sets)},
                "eval_examples": {t.name: len(d) for t, d in zip(self.tasks, self.eval_sets)},
                "wall_time_s": round(self._elapsed(), 2), "run_dir": str(self.run_dir)}


def json_file(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))

