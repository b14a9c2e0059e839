"""What a training run is set up with: the process group, the model (adapter, fusion, head or all weights
trainable, as the method says), its tokenizer, and the environment it records."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..devices import half_dtype
from ..errors import UsageError
from ..tasks import LABELLED_KINDS
from .recipe import Recipe


def distributed(device: str) -> tuple[int, int, bool]:
    """This process's rank, the world size, and whether this call started the process group (then the
    caller ends it with ``leave_group``; a group the caller's own code started is left alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        started = not dist.is_initialized()
        if started:
            on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            dist.init_process_group("nccl" if on_gpu else "gloo")
        return dist.get_rank(), world, started
    return 0, 1, False


def leave_group() -> None:
    """End the process group while Python is whole. Left to the interpreter's exit, gloo's worker threads
    can still hold tensors when Python is torn down, and the process dies with SIGABRT after a run that
    went well (seen once in CI, on the second of two processes)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def fusion_member_runs(paths: list[Path]) -> list[dict[str, str] | None]:
    """The training run each fusion member (at ``paths``, as located) came from: its cache entry's run, or
    the run whose ``best`` directory it is, as ``{"run_dir": absolute path, "name": its name, "started":
    run.json's start}``; None where that is not known (a downloaded or copied adapter, a run gone since).
    ``adapt results`` keeps fusions over adapters of other settings apart by them; the start time tells a
    moved run from another run made later at the same path."""
    import json

    def read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    runs: list[dict[str, str] | None] = []
    for located in paths:
        path = Path(located).resolve()
        run: Any = None
        if (path / "entry.json").is_file():  # a cache entry: it records its run (none when pulled from a hub)
            run = read(path / "entry.json").get("run_dir")
        elif path.name == "best" and (path.parent / "recipe.yaml").is_file():
            run = str(path.parent)
        started = read(Path(run) / "run.json").get("started") if isinstance(run, str) else None
        runs.append({"run_dir": run, "name": Path(run).name, "started": str(started)} if started else None)
    return runs


def frozen_dtype(recipe: Recipe, autocast: torch.dtype | None) -> torch.dtype | None:
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

    from .._version import __version__

    env = {"adapt": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device),
           "world_size": world, "threads": torch.get_num_threads(), "hostname": platform.node()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def build_model(recipe: Recipe, task: Any) -> tuple[Any, Any, str, Any, list[Path]]:
    """The model, its tokenizer, the adapter/head name, the composition to train, set up for the method,
    and where a fusion's members were found (``fusion_member_runs``; empty for other methods)."""
    from ..defaults import resolve_model
    from ..model import AdapterModel
    from ..tokenizer import load_preprocessor

    if task.kind == "mlm" and recipe.method != "adapter":
        raise UsageError(f"task {task.name} trains a language adapter by masked language modelling; `method` "
                         f"{recipe.method} is not an adapter (use `method` adapter)")
    if task.kind == "lm" and recipe.method != "adapter":
        raise UsageError(f"task {task.name} trains a decoder's adapter by causal language modelling; `method` "
                         f"{recipe.method} is not supported for it yet (use `method` adapter)")
    path = resolve_model(recipe.model)
    model = AdapterModel.from_pretrained(path)
    _check_family(task, model, recipe.model)
    tokenizer = load_preprocessor(path, model, recipe.model)
    name = recipe.name or task.name.replace(".", "_")
    head_kw = _head_kwargs(task, model)
    active: Any = None
    member_paths: list[Path] = []
    if recipe.method == "adapter":
        overrides = {**recipe.adapter_overrides, "kind": "language"} if task.kind == "mlm" else \
            recipe.adapter_overrides
        model.add_adapter(name, recipe.adapter, overrides)
        active = name
        if task.kind == "mlm":
            model.adapter_meta[name] = {"language": recipe.language or "unknown"}
        if recipe.stack_under is not None:
            active = stack_under(model, recipe, task, name)
    elif recipe.method == "fusion":
        from ..resolve import locate
        from ..composition import Fuse

        member_paths = [locate(spec, model.name_or_path, "adapter") for spec in recipe.fusion_adapters]
        members = [model.load_adapter(path, with_head=False) for path in member_paths]
        fusion = model.add_fusion(members, recipe.fusion)
        active = Fuse(tuple(members))
    if task.kind == "lm":  # the decoder's own LM head, frozen (training/clm.py)
        from ..lm_head import attach_own_head

        attach_own_head(model, name)
    else:
        model.add_head(name, task.head_type, **head_kw)
    if recipe.method == "fusion":
        model.set_fusion_head(fusion, name)
    if recipe.method == "adapter":
        model.train_adapters([name], heads=[] if task.kind == "lm" else [name])
    elif recipe.method == "fusion":
        model.train_adapters(members if recipe.unfreeze_adapters else [], fusions=[fusion], heads=[name])
    elif recipe.method == "head":
        model.train_adapters([], heads=[name])
    else:
        model.train_adapters([], heads=[name])
        model.base.requires_grad_(True)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer, name, active, member_paths


def _check_family(task: Any, model: Any, label: str) -> None:
    """Language modelling that fits the model: causal (lm) for a decoder, masked (mlm) for an encoder."""
    if task.kind == "lm" and not (model.arch.causal or model.arch.encoder_decoder):
        raise UsageError(f"task {task.name} is language modelling, for decoders (GPT-2, Llama, Mistral, Qwen2) and "
                         f"encoder-decoders (BART, mBART, T5, mT5); {label} is a {model.arch.name} encoder: train its language "
                         "adapter with task mlm")
    if (task.kind == "image") != model.arch.vision:
        raise UsageError(f"task {task.name} classifies images, for vision encoders (ViT); {label} is a "
                         f"{model.arch.name} model, which reads text" if task.kind == "image" else
                         f"task {task.name} is a {task.kind} text task; {label} is a {model.arch.name} model, "
                         "which reads images: train it on an image task (kind image)")
    if task.kind == "mlm" and model.arch.causal:
        raise UsageError(f"task {task.name} is masked language modelling, for encoders; {label} is a "
                         f"{model.arch.name} decoder: train its adapter with task lm")


def _head_kwargs(task: Any, model: Any) -> dict[str, Any]:
    """The head a task trains: its labels and input form; for mlm AdapterHub's masked-LM head (a transform
    with GELU and LayerNorm, then the decoder tied to the input word embeddings)."""
    if task.kind == "mlm":
        return {"vocab_size": model.vocab_size, "embedding_size": model.embedding_size, "layers": 2,
                "activation_function": "gelu", "layer_norm": True, "bias": True}
    head_kw: dict[str, Any] = {"num_labels": task.num_labels}
    if task.kind in LABELLED_KINDS:
        head_kw["label2id"] = {label: i for i, label in enumerate(task.labels)}
    if task.kind in ("tagging", "qa", "image"):
        # AdapterHub's tagging and QA heads: one linear layer over each token; its image-classification head's
        # default: one linear layer over the [CLS] state
        head_kw["layers"] = 1
    if task.kind == "qa":
        head_kw.update(num_labels=2, text_pair=None)  # start and end; always a question and its context
        return head_kw
    if task.kind != "multiple_choice":
        head_kw["text_pair"] = task.text_pair
    if task.kind == "multiple_choice":
        head_kw["num_choices"] = 2  # reshaped per batch; the stored value is only a default
    return head_kw


def language_adapter_kind(path: Any, spec: str) -> None:
    """Refuse, from its config alone, an adapter to stack under that is not a language adapter."""
    from ..formats import read_adapter

    config = read_adapter(path, shapes_only=True).config
    kind = getattr(config, "kind", "task")
    # An invertible layer marks a MAD-X language adapter even where its file does not say "language" (AdapterHub's).
    if kind != "language" and getattr(config, "inv_adapter", None) is None:
        raise UsageError(f"`stack_under` {spec}: that is a {kind} adapter; a task adapter is trained under a language "
                         "adapter (kind language: one trained with `task` mlm)")


def stack_under(model: Any, recipe: Recipe, task: Any, name: str) -> Any:
    """Load the language adapter ``recipe.stack_under`` frozen and return ``stack(LANG, name)``; the new
    adapter records which language adapter it was trained under."""
    from ..composition import Stack
    from ..resolve import locate

    spec = str(recipe.stack_under)
    if task.kind == "mlm":
        raise UsageError("`stack_under` trains a task adapter under a language adapter; a language adapter (`task` "
                         "mlm) is trained alone")
    path = locate(spec, model.name_or_path, "adapter")
    language_adapter_kind(path, spec)
    from ..formats import read_adapter

    lang = read_adapter(path, shapes_only=True).name
    if lang == name:
        raise UsageError(f"`stack_under` {spec}: the language adapter is named {lang!r} like the adapter being "
                         "trained; name the new adapter otherwise (`name`)")
    model.load_adapter(path, name=lang, with_head=False)
    model.adapter_meta[name] = {"trained_under": {"name": lang, "source": spec,
                                                  "language": model.adapter_meta[lang].get("language", "unknown")}}
    return Stack((lang, name))


def build_multitask_model(recipe: Recipe, tasks: list[Any]) -> tuple[Any, Any, list[str]]:
    """MT-A: one adapter and one head per task on a base that trains too (its own, lower learning rate is
    set by the optimizer). Returns the model, its tokenizer and the adapter/head name of each task."""
    from ..defaults import resolve_model
    from ..model import AdapterModel
    from ..tokenizer import load_preprocessor

    path = resolve_model(recipe.model)
    model = AdapterModel.from_pretrained(path)
    for task in tasks:
        _check_family(task, model, recipe.model)
    tokenizer = load_preprocessor(path, model, recipe.model)
    names = [task.name.replace(".", "_") for task in tasks]
    for task, name in zip(tasks, names):
        model.add_adapter(name, recipe.adapter, recipe.adapter_overrides)
        model.add_head(name, task.head_type, **_head_kwargs(task, model))
    model.train_adapters(names, heads=names)
    model.base.requires_grad_(True)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer, names
