"""The training loop: AdamW, linear warm-up and decay, evaluation each epoch, early stopping, the best
checkpoint kept, and resumable state.

Run directory::

    recipe.yaml          the resolved recipe (re-run with adapt train --recipe RUN/recipe.yaml)
    run.json             status (running / completed / failed), task, method, best result
    environment.json     versions, device, world size
    metrics.jsonl        one record per logging step ("train") and per evaluation ("eval")
    final_metrics.json   best dev metrics, epochs and steps run, wall time
    checkpoint.pt        the last resumable state (written atomically; loaded with weights_only=True)
    best/                the best adapter + head (our format), or head only, or the full model

Resume equivalence: batch order depends only on (seed, epoch); the checkpoint stores the position in
the epoch, the optimizer, scheduler and RNG states, so a resumed run takes exactly the steps the
uninterrupted run takes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..devices import autocast_dtype, half_dtype, resolve_device
from ..errors import UsageError
from ..fsutil import dump_json
from ..tasks import get_task
from ..tasks.loading import load_split
from ..tasks.metrics import compute
from .data import Encoded, collate, encode, epoch_batches
from .recipe import Recipe

CHECKPOINT = "checkpoint.pt"


class Reporter:
    """Progress callbacks; the CLI supplies a rich bar on a terminal and plain lines otherwise."""

    def start(self, total_steps: int, step: int, description: str) -> None: ...
    def step(self, step: int, loss: float, lr: float) -> None: ...
    def evaluated(self, epoch: int, step: int, metrics: dict[str, float], improved: bool) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            dist.init_process_group("nccl" if on_gpu else "gloo")
        return dist.get_rank(), world
    return 0, 1


def _frozen_dtype(recipe: Recipe, autocast: torch.dtype | None) -> torch.dtype | None:
    """The dtype the frozen linear layers are stored in (None: as loaded). Only the autocast dtype is
    allowed, because only then are the results unchanged (see AdapterModel.cast_frozen_linears)."""
    if recipe.frozen_dtype in ("auto", "fp32"):
        return autocast if recipe.frozen_dtype == "auto" else None
    wanted = half_dtype(recipe.frozen_dtype)
    if wanted != autocast:
        raise UsageError(f"frozen_dtype={recipe.frozen_dtype} needs autocast to the same dtype: set "
                         f"precision={recipe.frozen_dtype}")
    return wanted


def environment(device: torch.device, world: int) -> dict[str, Any]:
    import transformers

    from .. import __version__

    env = {"adapt": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device),
           "world_size": world, "threads": torch.get_num_threads(), "hostname": platform.node()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def build_model(recipe: Recipe, task: Any) -> tuple[Any, Any, str, Any]:
    """The model, its tokenizer, the adapter/head name and the composition to train, set up for the method."""
    from transformers import AutoTokenizer

    from ..defaults import resolve_model
    from ..model import AdapterModel

    path = resolve_model(recipe.model)
    model = AdapterModel.from_pretrained(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"no tokenizer for {recipe.model}: {str(exc).splitlines()[0][:160]}") from None
    name = recipe.name or task.name.replace(".", "_")
    head_kw: dict[str, Any] = {"num_labels": task.num_labels}
    if task.kind in ("single", "pair"):
        head_kw["label2id"] = {label: i for i, label in enumerate(task.labels)}
    if task.kind == "multiple_choice":
        head_kw["num_choices"] = 2  # reshaped per batch; the stored value is only a default
    active: Any = None
    if recipe.method == "adapter":
        model.add_adapter(name, recipe.adapter, recipe.adapter_overrides)
        active = name
    elif recipe.method == "fusion":
        from ..cache import locate
        from ..composition import Fuse

        members = [model.load_adapter(locate(spec, model.name_or_path), with_head=False)
                   for spec in recipe.fusion_adapters]
        fusion = model.add_fusion(members, recipe.fusion)
        active = Fuse(tuple(members))
    model.add_head(name, task.head_type, **head_kw)
    if recipe.method == "adapter":
        model.train_adapters([name], heads=[name])
    elif recipe.method == "fusion":
        model.train_adapters(members if recipe.unfreeze_adapters else [], fusions=[fusion], heads=[name])
    elif recipe.method == "head":
        model.train_adapters([], heads=[name])
    else:
        model.train_adapters([], heads=[name])
        model.base.requires_grad_(True)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer, name, active


def evaluate(model: Any, data: Encoded, task: Any, batch_size: int, active: Any, device: torch.device,
             autocast: torch.dtype | None, pad_id: int) -> tuple[dict[str, float], list[float]]:
    regression = task.kind == "regression"
    model.eval()
    predictions: list[float] = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collate(data, list(range(start, min(start + batch_size, len(data)))), pad_id, regression)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(**batch, active=active).logits.float()
            predictions.extend(logits[:, 0].tolist() if regression else logits.argmax(-1).tolist())
    return compute(task.metrics, predictions, data.labels), predictions


def train(recipe: Recipe, run_dir: Path, resume: bool = False, reporter: Reporter | None = None,
          stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train as the recipe says, writing the run directory. Returns the final summary."""
    reporter = reporter or Reporter()
    if recipe.task is None:
        raise UsageError("no task: pass --task NAME (see `adapt recipes ls --kind task`)")
    task = get_task(recipe.task)
    rank, world = _distributed(recipe.device)
    main = rank == 0
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT
    state = None
    if resume and checkpoint_path.is_file():
        try:
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"cannot resume: {checkpoint_path} is unreadable ({str(exc).splitlines()[0][:120]})") \
                from None
    elif resume:
        reporter.note(f"no checkpoint in {run_dir} yet: starting from the beginning")
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    train_examples = load_split(task, "train", recipe.data_dir, recipe.max_train_samples)
    eval_examples = load_split(task, "eval", recipe.data_dir, recipe.max_eval_samples)

    model, tokenizer, name, active = build_model(recipe, task)
    device = resolve_device(recipe.device)
    autocast = autocast_dtype(recipe.precision, device)
    frozen = _frozen_dtype(recipe, autocast)
    if frozen is not None:  # before the move: the GPU never holds the fp32 copies
        model.cast_frozen_linears(frozen)
    model.to(device)
    pad_id = tokenizer.pad_token_id or 0
    train_data = encode(task, train_examples, tokenizer, recipe.max_length)
    eval_data = encode(task, eval_examples, tokenizer, recipe.max_length)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.learning_rate,
                                  fused=device.type == "cuda")
    batches_per_epoch = len(epoch_batches(len(train_data), recipe.batch_size, recipe.seed, 0, rank, world))
    if batches_per_epoch == 0:
        raise UsageError(f"the training set has {len(train_data)} examples, fewer than one batch per process")
    steps_per_epoch = math.ceil(batches_per_epoch / recipe.grad_accum)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = int(recipe.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(enabled=autocast == torch.float16)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrapped: Callable[..., Any] = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    epoch, batch_index, step = 0, 0, 0
    best: dict[str, Any] = {"metric": None, "epoch": None, "step": None, "metrics": None}
    bad_evals = 0
    elapsed_before = 0.0
    if state is not None:
        missing = set(trainable) - set(state["trainable"])
        if missing:
            raise UsageError(f"checkpoint in {run_dir} does not match this recipe (missing {sorted(missing)[0]})")
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["trainable"][n])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        epoch, batch_index, step = state["epoch"], state["batch"], state["step"]
        best, bad_evals, elapsed_before = state["best"], state["bad_evals"], state["elapsed"]
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
    if main:
        # Only now, with the data read and the model built, does the run directory appear: bad input
        # never leaves a half-made run behind.
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "recipe.yaml").is_file():
            import yaml

            _write_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        (run_dir / "environment.json").write_text(dump_json(environment(device, world)))
        _set_status(run_dir, "running", recipe, task.name)
    log = (run_dir / "metrics.jsonl").open("a", encoding="utf-8") if main else None

    def record(entry: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def save_checkpoint() -> None:
        if not main:
            return
        payload = {"trainable": {n: p.detach().cpu() for n, p in trainable.items()},
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "rng": torch.get_rng_state(), "epoch": epoch, "batch": batch_index, "step": step,
                   "best": best, "bad_evals": bad_evals, "elapsed": elapsed_before + time.perf_counter() - started,
                   "running": [running_loss, running_count]}
        tmp = run_dir / f".{CHECKPOINT}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, checkpoint_path)

    kill_at = int(os.environ.get("ADAPT_FAULT_KILL_AT_STEP", "0")) or None
    started = time.perf_counter()
    reporter.start(total_steps, step, f"{task.name} {recipe.method}")
    regression = task.kind == "regression"
    stopped_early = False
    running_loss, running_count = state["running"] if state is not None else (0.0, 0)
    try:
        while epoch < recipe.epochs and not stopped_early:
            model.train()
            batches = epoch_batches(len(train_data), recipe.batch_size, recipe.seed, epoch, rank, world)
            while batch_index < len(batches):
                batch = collate(train_data, batches[batch_index], pad_id, regression)
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    loss = wrapped(**batch, active=active).loss
                    if recipe.method == "fusion" and recipe.fusion_reg_weight:
                        loss = loss + recipe.fusion_reg_weight * model.fusion_regularization()
                scaler.scale(loss / recipe.grad_accum).backward()
                running_loss += float(loss.detach())
                running_count += 1
                batch_index += 1
                if batch_index % recipe.grad_accum == 0 or batch_index == len(batches):
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    reporter.step(step, float(loss.detach()), scheduler.get_last_lr()[0])
                    if step % recipe.log_every_steps == 0:
                        record({"type": "train", "step": step, "epoch": epoch + batch_index / len(batches),
                                "loss": running_loss / running_count, "lr": scheduler.get_last_lr()[0]})
                        running_loss, running_count = 0.0, 0
                    if step % recipe.save_every_steps == 0 and batch_index < len(batches):
                        save_checkpoint()
                    if stop_after_steps is not None and step >= stop_after_steps:
                        raise _Stop()
                    if kill_at == step:  # fault injection for the resume tests: a real, unclean kill
                        os.kill(os.getpid(), signal.SIGKILL)
            # end of epoch: evaluate (on the main process), keep the best, maybe stop early
            epoch += 1
            batch_index = 0
            if main:
                metrics, _ = evaluate(model, eval_data, task, recipe.eval_batch_size, active, device, autocast,
                                      pad_id)
                value = metrics[task.main_metric]
                improved = best["metric"] is None or value > best["metric"]
                if improved:
                    best = {"metric": value, "epoch": epoch, "step": step, "metrics": metrics}
                    bad_evals = 0
                    _save_best(model, name, recipe, run_dir)
                else:
                    bad_evals += 1
                record({"type": "eval", "step": step, "epoch": epoch, **metrics})
                reporter.evaluated(epoch, step, metrics, improved)
            if world > 1:
                bad_evals = _broadcast_int(bad_evals)
            stopped_early = recipe.patience is not None and bad_evals >= recipe.patience
            save_checkpoint()
    except _Stop:
        save_checkpoint()
        if log is not None:
            log.close()
        reporter.close()
        return {"status": "stopped", "step": step}
    except BaseException as exc:
        if main:
            _set_status(run_dir, "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                        recipe, task.name, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        if log is not None and not log.closed:
            log.close()
        reporter.close()
    wall = elapsed_before + time.perf_counter() - started
    summary = {"task": task.name, "method": recipe.method, "name": name, "model": recipe.model,
               "main_metric": task.main_metric, "best": best, "epochs_run": epoch, "steps": step,
               "stopped_early": stopped_early, "train_examples": len(train_data), "eval_examples": len(eval_data),
               "wall_time_s": round(wall, 2), "run_dir": str(run_dir)}
    if recipe.method == "fusion":
        summary["fusion_members"] = active.leaves()
    if main:
        _write_atomic(run_dir / "final_metrics.json", dump_json(summary))
        _set_status(run_dir, "completed", recipe, task.name, best=best)
    return summary


class _Stop(Exception):
    """Raised by the test hook that stops a run after N steps (a stand-in for a crash)."""


def _broadcast_int(value: int) -> int:
    import torch.distributed as dist

    t = torch.tensor([value])
    dist.broadcast(t, 0)
    return int(t.item())


def _save_best(model: Any, name: str, recipe: Recipe, run_dir: Path) -> None:
    from ..fsutil import atomic_directory

    if recipe.method == "adapter":
        model.save_adapter(run_dir / "best", name)
    elif recipe.method == "fusion":
        model.save_fusion(run_dir / "best", next(iter(model.fusions)), head=name)
    elif recipe.method == "head":
        model.save_head(run_dir / "best", name)
    else:
        from safetensors.torch import save_file

        with atomic_directory(run_dir / "best") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.base.state_dict().items()},
                      str(tmp / "model.safetensors"), metadata={"format": "pt"})
            model.base.config.to_json_file(str(tmp / "config.json"))
            model._write_head(tmp, name, "adapt", None, False)


def _set_status(run_dir: Path, status: str, recipe: Recipe, task: str, **extra: Any) -> None:
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update({"status": status, "task": task, "method": recipe.method, "model": recipe.model,
                 "seed": recipe.seed, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, **extra)
    data.setdefault("started", data["updated"])
    _write_atomic(path, dump_json(data))


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
    _write_atomic(path, "".join(f"{line}\n" for line in kept))

