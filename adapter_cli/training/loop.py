"""The training loop as an object (``Trainer``): AdamW, linear warm-up and decay, evaluation each epoch,
early stopping, the best checkpoint kept, and resumable state. One method per concern (set-up, resume,
the run directory, an epoch, an optimizer step, the end of an epoch, files); ``Callback``s see every step
and epoch end (the tests' fault injection goes through them); the set-up of model and process group is in
``setup.py``, progress goes to a ``Reporter``: the loop prints nothing.

Run directory::

    recipe.yaml          the resolved recipe (re-run with adapt train --recipe RUN/recipe.yaml)
    run.json             status (running / completed / failed), task, method, best result
    environment.json     versions, device, world size
    subset.json          the rows read per split (seeded subset for max_*_samples), reused on resume
    metrics.jsonl        one record per logging step ("train") and per evaluation ("eval")
    final_metrics.json   best dev metrics, epochs and steps run, wall time
    checkpoint.pt        the last resumable state (written atomically; loaded with weights_only=True)
    best/                the best adapter + head (our format), or head only, or the full model

Resume equivalence: batch order depends only on (seed, epoch); the checkpoint stores the position in
the epoch, the optimizer, scheduler and RNG states, so a resumed run takes exactly the steps the
uninterrupted run takes.

Head-only runs (``method: head``) never run the frozen encoder in train mode (no dropout below the head),
and train on features computed once per split (``features.py``), recomputed when a run resumes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compiled import compile_model
from ..devices import autocast_dtype, resolve_device
from ..errors import UsageError, disk_full
from ..fsutil import dump_json, save_torch, write_text_atomic
from ..tasks import get_task
from ..tasks.metrics import compute
from .data import Encoded, collate, encode, epoch_batches, lengths_of, load_examples, write_subsets
from .clm import encode_lm, evaluate_lm, lm_batch
from .mlm import Masker, check_blocks, encode_text, evaluate_mlm, generator, masked_batch
from .features import Features, cacheable, encode_features, evaluate_features, head_logits, head_reads, predictions
from .recipe import Recipe
from .reporter import Reporter
from .setup import build_model, distributed, environment, frozen_dtype, fusion_member_runs, leave_group

CHECKPOINT = "checkpoint.pt"


def evaluate(model: Any, data: Encoded, task: Any, batch_size: int, active: Any, device: torch.device,
             autocast: torch.dtype | None, pad_id: int) -> tuple[dict[str, float], list[Any]]:
    """The task's metrics on ``data`` and the predictions they were computed from (a tagging task's: a
    label per word, the outside label for words that truncation cut; a qa task's: answer texts)."""
    from ..tagging import outside_label, word_predictions

    if data.answers is not None:
        return _evaluate_answers(model, data, task, batch_size, active, device, autocast, pad_id)
    model.eval()
    out: list[Any] = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = list(range(start, min(start + batch_size, len(data))))
            batch = collate(data, rows, pad_id, task.float_labels)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(**batch, active=active).logits.float()
            if data.first_tokens is None:
                out.extend(predictions(logits, task.kind))
                continue
            fill = outside_label(task.labels)
            out.extend(word_predictions(logits[j], data.first_tokens[i], fill)
                       for j, i in enumerate(rows))
    return compute(task.metrics, out, data.labels, task.kind, task.labels), out


def _evaluate_answers(model: Any, data: Encoded, task: Any, batch_size: int, active: Any, device: torch.device,
                      autocast: torch.dtype | None, pad_id: int) -> tuple[dict[str, float], list[Any]]:
    """Every window of every question through the model, then each question's best answer over its windows
    (qa.best_answers), scored against its gold answers."""
    from ..qa import best_answers

    model.eval()
    starts: list[torch.Tensor] = []
    ends: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = list(range(start, min(start + batch_size, len(data))))
            batch = collate(data, rows, pad_id, False)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(**batch, active=active).logits.float().cpu()
            for j, i in enumerate(rows):
                width = len(data.features[i]["input_ids"])
                starts.append(logits[j, :width, 0])
                ends.append(logits[j, :width, 1])
    answers = data.answers
    found = best_answers(starts, ends, answers.windows, answers.contexts, answers.allow_empty)
    texts = [a["answer"] for a in found]  # None: a question with no window, scored as a miss
    return compute(task.metrics, texts, answers.golds, "qa"), texts


@dataclass
class TrainState:
    """Where a run stands: everything a checkpoint holds besides weights, optimizer, scheduler and RNG."""

    epoch: int = 0
    batch: int = 0  # position in the epoch's batches
    step: int = 0  # optimizer steps taken
    best: dict[str, Any] = field(default_factory=lambda: {"metric": None, "epoch": None, "step": None,
                                                          "metrics": None})
    bad_evals: int = 0
    elapsed: float = 0.0  # seconds of training before this process started
    running_loss: float = 0.0
    running_count: int = 0
    stopped_early: bool = False


class Callback:
    """Hooks into a run, called on every process; tests inject faults through them (kill the process after
    step N, stop it): the loop itself knows nothing of tests."""

    def on_step(self, trainer: Trainer) -> None: ...  # after each optimizer step
    def on_epoch_end(self, trainer: Trainer) -> None: ...  # after evaluation and the checkpoint


class StopAfter(Callback):
    """Stop cleanly after ``steps`` optimizer steps, with a checkpoint: a stand-in for a crash."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step(self, trainer: Trainer) -> None:
        if trainer.state.step >= self.steps:
            raise _Stop()


class Trainer:
    """One training run: set up from the recipe (data, model, optimizer), resumed from the run directory's
    checkpoint, trained epoch by epoch with evaluation, early stopping and the best checkpoint kept.
    ``run()`` returns the final summary; ``finish`` (main process only) runs on it before run.json says
    "completed", with the run directory still held."""

    # head-only runs train on features computed once (features.py); False runs the frozen encoder on every
    # batch instead (in eval mode too): the reference the tests compare with
    _features_once = True

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False, reporter: Reporter | None = None,
                 callbacks: list[Callback] | tuple[Callback, ...] = (), notes: dict[str, Any] | None = None,
                 finish: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.recipe, self.run_dir, self.resume = recipe, Path(run_dir), resume
        self.reporter = reporter or Reporter()
        self.callbacks, self.notes, self.finish = list(callbacks), notes or {}, finish
        self.task = self._resolve_task(recipe)
        self.rank, self.world, self._owns_group = distributed(recipe.device)
        self.main = self.rank == 0
        self.state = TrainState()
        self._log: Any = None
        self._held: Any = None

    # ------------------------------------------------------------------ set-up
    def _resolve_task(self, recipe: Recipe) -> Any:
        """The task trained (multitask.py: all of them, as one)."""
        if recipe.task is None:
            raise UsageError("no task: name one (`task`)")
        return get_task(recipe.task)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT
        if not self.resume:
            return None
        if not path.is_file():
            self.reporter.note(f"no checkpoint in {self.run_dir} yet: starting from the beginning")
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"cannot resume: {path} is unreadable ({str(exc).splitlines()[0][:120]})") from None

    def _prepare(self) -> dict[str, Any] | None:
        """Data, model, optimizer and schedule; the checkpoint's state restored when resuming."""
        recipe, task = self.recipe, self.task
        saved = self._read_checkpoint()
        random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        # seeded random subsets (max_*_samples), the recorded ones when resuming: see tasks/subsets.py
        train_examples, eval_examples, self.subsets = load_examples(
            task, recipe.data_dir, recipe.seed, recipe.max_train_samples, recipe.max_eval_samples,
            self.run_dir if self.resume else None)
        self.model, self.tokenizer, self.name, self.active, member_paths = build_model(recipe, task)
        self.member_runs = fusion_member_runs(member_paths)
        max_length = self.model.fit_max_length(recipe.max_length, "recipe key max_length")  # before the run dir
        self.device = resolve_device(recipe.device)
        self.autocast = autocast_dtype(recipe.precision, self.device)
        frozen = frozen_dtype(recipe, self.autocast)
        if frozen is not None:  # before the move: the GPU never holds the fp32 copies
            self.model.cast_frozen_linears(frozen)
        self.model.to(self.device)
        self.pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0  # an image processor has none
        self._encode(train_examples, eval_examples, max_length)
        self.head = self.model.heads[self.name]
        self.on_features = recipe.method == "head" and self._features_once and cacheable(self.train_data) \
            and cacheable(self.eval_data)
        self.train_features: Features | None = None
        self.eval_features: Features | None = None
        # Head only on features: the encoder runs once, nothing worth compiling (and compiling costs seconds).
        self.compiled = not self.on_features and compile_model(self.model, self.recipe.compile, self.device,
                                                               "recipe key compile")
        self._build_optimizer()
        if saved is not None:
            self._restore(saved)
        return saved

    def _encode(self, train_examples: list[Any], eval_examples: list[Any], max_length: int) -> None:
        """Tokenised examples; an mlm or lm task's text packed into blocks (mlm: with the masker its batches
        use)."""
        task, recipe = self.task, self.recipe
        self.masker: Masker | None = None
        if not task.plain_text:
            self.train_data = encode(task, train_examples, self.tokenizer, max_length)
            self.eval_data = encode(task, eval_examples, self.tokenizer, max_length)
            for split, data in (("training", self.train_data), ("dev", self.eval_data)):
                if data.answers is not None and data.answers.lost:
                    self.reporter.note(f"{task.name}: {data.answers.lost} of {len(data.answers.contexts)} {split} "
                                       f"answers lie in no window of {max_length} tokens (the question fills it, or "
                                       "the answer is longer); they count as missed")
            return
        from ..tasks.text import held_out_dev

        if task.kind == "mlm":
            self.masker = Masker.for_tokenizer(self.tokenizer, self.model.vocab_size, recipe.mlm_probability)
        if task.kind == "lm":  # lines, or prompt/completion pairs
            seq2seq = self.model.arch.encoder_decoder
            self.train_data = encode_lm([_lm_item(e) for e in train_examples], self.tokenizer, max_length, seq2seq)
            self.eval_data = encode_lm([_lm_item(e) for e in eval_examples], self.tokenizer, max_length, seq2seq)
        else:
            self.train_data = encode_text([e.texts[0] for e in train_examples], self.tokenizer, max_length)
            self.eval_data = encode_text([e.texts[0] for e in eval_examples], self.tokenizer, max_length)
        reft = self.model.reft_suffix(self.model.resolve_composition(self.active))
        check_blocks(self.train_data, reft, "training")
        check_blocks(self.eval_data, reft, "dev")
        if recipe.language is None and task.kind == "mlm":
            self.reporter.note(f"{task.name}: no language given; the language adapter records language unknown")
        if held_out_dev(task, recipe.data_dir):
            self.reporter.note(f"{task.name}: no dev text, so a seeded tenth of the training lines "
                               f"({len(eval_examples)}) is held out as the dev split")
        if train_examples and len(train_examples[0].texts) == 2:
            self.reporter.note(f"{task.name}: {len(train_examples)} prompt/completion pairs of up to {max_length} "
                               f"tokens, the loss on the completions; dev {len(self.eval_data)} pairs")
        else:
            self.reporter.note(f"{task.name}: {len(train_examples)} lines packed into {len(self.train_data)} "
                               f"blocks of up to {max_length} tokens; dev {len(self.eval_data)} blocks")

    def _build_optimizer(self) -> None:
        recipe, model = self.recipe, self.model
        self.params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() > 1]
        no_decay = [p for p in self.params if p.dim() <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=recipe.learning_rate,
                                           fused=self.device.type == "cuda")
        batches = len(self._batches(0))
        if batches == 0:
            raise UsageError(f"the training set has {len(self.train_data)} examples, fewer than one batch per "
                             "process")
        per_epoch = math.ceil(batches / recipe.grad_accum)
        # min_steps: whole epochs enough for that many steps (a small target gets more than `epochs` of them);
        # kept on resume, since the batches per epoch are the same
        self.epochs = max(recipe.epochs, math.ceil((recipe.min_steps or 0) / per_epoch))
        self.total_steps = per_epoch * self.epochs
        warmup, total = int(recipe.warmup_ratio * self.total_steps), self.total_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler(enabled=self.autocast == torch.float16)
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        module = self.head if self.on_features else model  # on features, the head is all that runs
        self.forward: Callable[..., Any] = module
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _restore(self, saved: dict[str, Any]) -> None:
        missing = set(self.trainable) - set(saved["trainable"])
        if missing:
            raise UsageError(f"checkpoint in {self.run_dir} does not match this recipe (missing {sorted(missing)[0]})")
        with torch.no_grad():
            for n, p in self.trainable.items():
                p.copy_(saved["trainable"][n])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        running_loss, running_count = saved["running"]
        self.state = TrainState(saved["epoch"], saved["batch"], saved["step"], saved["best"], saved["bad_evals"],
                                saved["elapsed"], running_loss, running_count)

    def _open_run_dir(self) -> None:
        """Only now, with the data read and the model built, does the run directory appear: bad input never
        leaves a half-made run behind. The run is held until this process ends."""
        if not self.main:
            return
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        from ..runs import claim_run

        self._held = claim_run(run_dir, fresh=not self.resume)  # refuses a run another process took meanwhile
        if self.resume:  # what was logged after the checkpoint (all of it, without one) is logged again
            _truncate_metrics(run_dir / "metrics.jsonl", self.state.step)
        if not (run_dir / "recipe.yaml").is_file():
            import yaml

            write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
        (run_dir / "environment.json").write_text(dump_json(environment(self.device, self.world)))
        write_subsets(run_dir, self.subsets)
        _set_status(run_dir, "running", self.recipe, self.task.name, **self.notes)
        self._log = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        result = self._run()
        if self._owns_group:  # only after a run that went well: after a failure, other processes may still
            # wait in a collective, and ending the group could hang this one too (the launcher ends them all)
            from torch.nn.parallel import DistributedDataParallel

            if isinstance(self.forward, DistributedDataParallel):  # its reducer holds the last collective's work
                self.forward = self.forward.module
            leave_group()
        return result

    def _run(self) -> dict[str, Any]:
        self._prepare()
        self._open_run_dir()
        self._started = time.perf_counter()
        try:
            self._encode_features()
            self.reporter.start(self.total_steps, self.state.step, f"{self.task.name} {self.recipe.method}")
            while self.state.epoch < self.epochs and not self.state.stopped_early:
                self._train_epoch()
                self._end_epoch()
        except _Stop:
            self.save_checkpoint()
            return {"status": "stopped", "step": self.state.step}
        except BaseException as exc:
            self._fail(exc)
        finally:
            if self._log is not None:
                self._log.close()
            self.reporter.close()
        return self._complete()

    def _encode_features(self) -> None:
        """Head only: the training set (every process) and the dev set (the main process) through the frozen
        encoder once; the epochs then train the head on these features."""
        if not self.on_features:
            return
        self.reporter.note(f"{self.task.name} head: encoding {len(self.train_data)} training and "
                           f"{len(self.eval_data) if self.main else 0} dev examples once (frozen encoder)")
        args = (self.recipe.eval_batch_size, self.device, self.autocast, self.pad_id, self.task.float_labels)
        self.train_features = encode_features(self.model, self.name, self.train_data, *args)
        if self.main:
            self.eval_features = encode_features(self.model, self.name, self.eval_data, *args)

    def _batches(self, epoch: int) -> list[list[int]]:
        lengths = lengths_of(self.train_data) if self.recipe.group_by_length and not self.on_features else None
        return epoch_batches(len(self.train_data), self.recipe.batch_size, self.recipe.seed, epoch, self.rank,
                             self.world, lengths)

    def _train_epoch(self) -> None:
        recipe, state = self.recipe, self.state
        self.model.train()
        if recipe.method == "head":
            self.model.base.eval()  # a frozen encoder computes without dropout: only the head's own applies
        batches = self._batches(state.epoch)
        while state.batch < len(batches):
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                loss = self._loss(batches[state.batch])
            self.scaler.scale(loss / recipe.grad_accum).backward()
            state.running_loss += float(loss.detach())
            state.running_count += 1
            state.batch += 1
            if state.batch % recipe.grad_accum == 0 or state.batch == len(batches):
                self._optimizer_step(float(loss.detach()), state.batch / len(batches), state.batch < len(batches))

    def _loss(self, indices: list[int]) -> torch.Tensor:
        """The training loss of one batch: on the stored features (head only), else through the model."""
        if self.train_features is not None:
            features, labels = self.train_features.batch(indices, self.device)
            return self.head.loss(head_logits(self.forward, features), labels)
        if self.masker is not None:  # mlm: masked per batch, seeded by the batch's place in the run
            batch = masked_batch(self.train_data, indices, self.pad_id, self.masker,
                                 generator(self.recipe.seed, self.state.epoch, self.state.batch, self.rank))
        elif self.task.kind == "lm":
            batch = lm_batch(self.train_data, indices, self.pad_id)
        else:
            batch = collate(self.train_data, indices, self.pad_id, self.task.float_labels)
        loss = self.forward(**{k: v.to(self.device) for k, v in batch.items()}, active=self.active).loss
        if self.recipe.method == "fusion" and self.recipe.fusion_reg_weight:
            loss = loss + self.recipe.fusion_reg_weight * self.model.fusion_regularization()
        return loss

    def _evaluate(self) -> dict[str, float]:
        if self.masker is not None:
            return evaluate_mlm(self.model, self.eval_data, self.masker, self.recipe.eval_batch_size, self.active,
                                self.device, self.autocast, self.pad_id)
        if self.task.kind == "lm":
            return evaluate_lm(self.model, self.eval_data, self.recipe.eval_batch_size, self.active, self.device,
                               self.autocast, self.pad_id)
        if self.eval_features is not None:
            return evaluate_features(self.head, self.eval_features, self.eval_data.labels, self.task,
                                     self.recipe.eval_batch_size, self.device, self.autocast)[0]
        return evaluate(self.model, self.eval_data, self.task, self.recipe.eval_batch_size, self.active,
                        self.device, self.autocast, self.pad_id)[0]

    def _optimizer_step(self, loss: float, epoch_fraction: float, mid_epoch: bool) -> None:
        recipe, state = self.recipe, self.state
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, recipe.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        lr = self.scheduler.get_last_lr()[0]
        self.reporter.step(state.step, loss, lr)
        if state.step % recipe.log_every_steps == 0:
            self._record({"type": "train", "step": state.step, "epoch": state.epoch + epoch_fraction,
                          "loss": state.running_loss / state.running_count, "lr": lr})
            state.running_loss, state.running_count = 0.0, 0
        if state.step % recipe.save_every_steps == 0 and mid_epoch:
            self.save_checkpoint()
        for callback in self.callbacks:
            callback.on_step(self)

    def _end_epoch(self) -> None:
        """Evaluate (on the main process), keep the best, maybe stop early, checkpoint."""
        state = self.state
        state.epoch += 1
        state.batch = 0
        if self.main:
            metrics = self._evaluate()
            value = metrics[self.task.main_metric]
            best = state.best["metric"]  # perplexity: lower is better
            improved = best is None or (value < best if self.task.lower_is_better else value > best)
            if improved:
                state.best = {"metric": value, "epoch": state.epoch, "step": state.step, "metrics": metrics}
                state.bad_evals = 0
                _save_best(self.model, self.name, self.recipe, self.run_dir, self.tokenizer)
            else:
                state.bad_evals += 1
            self._record({"type": "eval", "step": state.step, "epoch": state.epoch, **metrics})
            self.reporter.evaluated(state.epoch, state.step, metrics, improved)
        if self.world > 1:
            state.bad_evals = _broadcast_int(state.bad_evals)
        floor = self.recipe.min_steps or 0  # no early stop before min_steps: tiny dev sets are noisy early on
        state.stopped_early = self.recipe.patience is not None and state.bad_evals >= self.recipe.patience \
            and state.step >= floor
        self.save_checkpoint()
        for callback in self.callbacks:
            callback.on_epoch_end(self)

    # ------------------------------------------------------------------ files
    def _record(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(entry) + "\n")
            self._log.flush()

    def save_checkpoint(self) -> None:
        if not self.main:
            return
        s = self.state
        payload = {"trainable": {n: p.detach().cpu() for n, p in self.trainable.items()},
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "rng": torch.get_rng_state(), "epoch": s.epoch, "batch": s.batch, "step": s.step,
                   "best": s.best, "bad_evals": s.bad_evals, "elapsed": self._elapsed(),
                   "running": [s.running_loss, s.running_count]}
        save_torch(payload, self.run_dir / CHECKPOINT)  # whole or not at all; a full disk says so

    def _elapsed(self) -> float:
        return self.state.elapsed + time.perf_counter() - self._started

    def _fail(self, exc: BaseException) -> None:
        """run.json says why the run stopped; a full disk is one line that says how to go on."""
        full = disk_full(exc, f"the run directory {self.run_dir}", "free some space, then continue with "
                         f"`adapt train --resume --run-dir {self.run_dir}`")
        if self.main:
            reason = str(full or exc).splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(OSError):  # on a full disk run.json may not be writable either
                _set_status(self.run_dir, "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                            self.recipe, self.task.name, error=reason)
        if full is not None:
            raise full from None
        raise exc

    def _complete(self) -> dict[str, Any]:
        return self._finalize(self._summary())

    def _summary(self) -> dict[str, Any]:
        s = self.state
        summary = {"task": self.task.name, "method": self.recipe.method, "name": self.name,
                   "model": self.recipe.model, "main_metric": self.task.main_metric, "best": s.best,
                   "epochs_run": s.epoch, "steps": s.step, "stopped_early": s.stopped_early,
                   "train_examples": len(self.train_data), "eval_examples": len(self.eval_data),
                   "wall_time_s": round(self._elapsed(), 2), "run_dir": str(self.run_dir)}
        if self.compiled:
            summary["compiled"] = True
        if self.recipe.method == "fusion":
            summary["fusion_members"] = self.active.leaves()
            summary["fusion_member_runs"] = self.member_runs  # where each was trained (adapt results)
        summary.update(self.model.adapter_meta.get(self.name) or {})  # MAD-X: language, trained_under
        if self.train_features is not None:  # head only: the encoder ran once per example (features.py)
            summary["head_features"] = {
                "read": head_reads(self.head, self.model), "train": len(self.train_features),
                "eval": len(self.eval_features) if self.eval_features is not None else 0,
                "encode_s": round(self.train_features.seconds + getattr(self.eval_features, "seconds", 0.0), 2)}
        return summary

    def _finalize(self, summary: dict[str, Any]) -> dict[str, Any]:
        """final_metrics.json, then ``finish`` (the cache), then run.json says "completed"."""
        s = self.state
        if not self.main:
            return summary
        write_text_atomic(self.run_dir / "final_metrics.json", dump_json(summary))
        if self.finish is not None:  # e.g. the cache entry: "completed" is said only once that is whole too
            try:
                self.finish(summary)
            except BaseException as exc:
                _set_status(self.run_dir, "failed", self.recipe, self.task.name,
                            error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                raise
        _set_status(self.run_dir, "completed", self.recipe, self.task.name, best=s.best)
        return summary


def train(recipe: Recipe, run_dir: Path, resume: bool = False, reporter: Reporter | None = None,
          stop_after_steps: int | None = None, notes: dict[str, Any] | None = None,
          finish: Callable[[dict[str, Any]], Any] | None = None,
          callbacks: list[Callback] | tuple[Callback, ...] = (), trainer: type[Trainer] | None = None) -> dict[str, Any]:
    """Train as the recipe says, writing the run directory; returns the final summary (see Trainer).
    ``trainer``: a subclass to run instead (multitask.MultiTaskTrainer), passed in so that this module
    never imports the ones built on it."""
    extra = [StopAfter(stop_after_steps)] if stop_after_steps is not None else []
    return (trainer or Trainer)(recipe, run_dir, resume, reporter, [*callbacks, *extra], notes, finish).run()


class _Stop(Exception):
    """Raised by StopAfter: the run stops with a checkpoint, as if it had crashed right after it."""


def _broadcast_int(value: int) -> int:
    import torch.distributed as dist

    t = torch.tensor([value])
    dist.broadcast(t, 0)
    return int(t.item())


def _lm_item(example: Any) -> Any:
    """An lm example as clm.encode_lm takes it: its line, or its (prompt, completion) pair."""
    return example.texts if len(example.texts) == 2 else example.texts[0]


def _save_best(model: Any, name: str, recipe: Recipe, run_dir: Path, tokenizer: Any) -> None:
    from ..fsutil import atomic_directory

    if recipe.method == "adapter":  # an lm adapter reads the base model's own LM head: not copied into it
        own_lm_head = model.heads[name].config.head_type in ("causal_lm", "seq2seq_lm")
        model.save_adapter(run_dir / "best", name, with_head=not own_lm_head)
    elif recipe.method == "fusion":
        model.save_fusion(run_dir / "best", next(iter(model.fusions)), head=name)
    elif recipe.method == "head":
        model.save_head(run_dir / "best", name)
    else:
        from safetensors.torch import save_file

        with atomic_directory(run_dir / "best") as tmp:
            save_file(_untied(model.base.state_dict()), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            from ..defaults import forget_base_identity

            forget_base_identity(model.base.config)  # fine-tuned again: no longer the MT-A base it started from
            model.base.config.to_json_file(str(tmp / "config.json"))
            tokenizer.save_pretrained(str(tmp))  # a model directory is usable only with its own tokenizer
            model._write_head(tmp, name, "adapt", None, False)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict for safetensors, which refuses tensors that share memory: of weights tied to each other
    (BART's word embeddings, shared by its encoder and decoder) the first name is kept, as the model declares
    it; transformers ties the others to it again on loading."""
    out, seen = {}, set()
    for key, tensor in state.items():
        if tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        out[key] = tensor.detach().cpu().contiguous()
    return out


def _set_status(run_dir: Path, status: str, recipe: Recipe, task: str, **extra: Any) -> None:
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update({"status": status, "task": task, "method": recipe.method, "model": recipe.model,
                 "seed": recipe.seed, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, **extra)
    data.setdefault("started", data["updated"])
    write_text_atomic(path, dump_json(data))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed (and a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))

