"""Run directories after training: reading their results and extracting the best adapter into the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import UsageError

LOCK = ".lock"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"{path} is missing or unreadable") from None


def lock_run(run_dir: Path) -> Any:
    """Hold ``run_dir`` for this process until it ends (however it ends: the kernel drops the lock), so
    two trainings never interleave in one run directory. Returns the open lock file; keep it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: nothing to hold
        return None
    handle = (run_dir / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"run directory {run_dir} is in use by another adapt process; wait for it to finish "
                         "or choose another run directory") from None
    return handle


def in_use(run_dir: Path) -> bool:
    """Whether a live process holds the run directory."""
    try:
        import fcntl
    except ImportError:
        return False
    if not (run_dir / LOCK).is_file():
        return False
    with (run_dir / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# temporaries the training writes only while it holds the run (fixed names: ``.NAME.tmp``); others'
# temporaries (``.run.json.<random>.tmp`` from settle_status) are never touched
_RUN_TEMPORARY = re.compile(r"\.[A-Za-z_]+\.(?:pt|json|jsonl|yaml)\.tmp")


def claim_run(run_dir: Path, fresh: bool) -> Any:
    """``lock_run``, then what only the holder can check without a race: a ``fresh`` start refuses a
    directory another process filled meanwhile (it started, or even finished, while this one read its
    data), and a killed process's leftovers are settled: ``best`` put back if it died between two renames,
    half-written temporaries removed. Returns the open lock file; keep it."""
    from .fsutil import recover_directory

    held = lock_run(run_dir)
    if fresh and any(p.name != LOCK for p in run_dir.iterdir()):
        if held is not None:
            held.close()
        raise UsageError(f"run directory {run_dir} was started by another adapt process meanwhile; pass "
                         "`resume` to continue it, or another `run_dir`")
    recover_directory(run_dir / "best")
    for path in run_dir.iterdir():
        if _RUN_TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
    return held


def settle_status(run_dir: Path) -> str | None:
    """The run's status, with a run that says "running" but that no process holds marked "killed" (it
    stopped without a word: SIGKILL, power loss, an out-of-memory kill)."""
    import time

    from .fsutil import dump_json, write_text_atomic

    path = run_dir / "run.json"
    if not path.is_file():
        return None
    data = read_json(path)
    if data.get("status") == "running" and not in_use(run_dir):
        data.update(status="killed", updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    error="the process stopped without finishing (found by a later adapt command)")
        write_text_atomic(path, dump_json(data))
    return data.get("status")


def extract(run_dir: Path | str, overwrite: bool = True, flat: bool = False) -> Any:
    """Put a finished run's best adapter (and head) into the cache, keyed by its base model; with ``flat``, a
    prefix-tuning adapter goes in without the MLP that made its keys and values (same outputs, smaller)."""
    from . import cache
    from .training.recipe import read_run_recipe
    from .formats import read_json as read_artifact_json
    from .fsutil import recover_directory

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise UsageError(f"{run_dir} is not a run directory (no recipe.yaml)")
    status = settle_status(run_dir)
    best = run_dir / "best"
    recover_directory(best)  # a process killed while replacing it had moved the old one aside
    if not best.is_dir():
        raise UsageError(f"{run_dir} has no best checkpoint yet (status: {status or 'unknown'}); "
                         "finish it with `adapt train --resume --run-dir ...`")
    recipe = read_run_recipe(run_dir / "recipe.yaml")
    if recipe.get("method") == "multitask":
        raise UsageError(f"{run_dir} is a multitask run: a base model and an adapter per task (extract_multitask)")
    if recipe.get("method") == "full":
        raise UsageError("a full fine-tuning run holds a whole model, not an adapter; its weights stay in "
                         f"{best}")
    final = read_json(run_dir / "final_metrics.json") if (run_dir / "final_metrics.json").is_file() else {}
    method = recipe.get("method")
    config_file = best / {"adapter": "adapter_config.json", "fusion": "fusion_config.json"}.get(method,
                                                                                               "head_config.json")
    artifact = read_artifact_json(config_file, f"a {method}")
    model = artifact.get("base_model", {}).get("name_or_path") or recipe.get("model")
    entry_id = re.sub(r"[^A-Za-z0-9_\-]", "_", run_dir.resolve().name)
    adapter = recipe.get("adapter")
    task_spec = str(recipe.get("task"))
    info = {"name": artifact.get("name"), "task": final.get("task") or recipe.get("task"),
            "task_source": str(Path(task_spec).resolve()) if task_spec.endswith((".yaml", ".yml")) else task_spec, "method": recipe.get("method"),
            "kind": {"adapter": "adapter", "fusion": "fusion"}.get(method, "head"),
            "adapters": artifact.get("adapters"), "fusion_adapters": recipe.get("fusion_adapters") or None,
            "config_name": adapter if isinstance(adapter, str) and recipe.get("method") == "adapter" else None,
            "config": artifact.get("config"), "metrics": (final.get("best") or {}).get("metrics"),
            "main_metric": final.get("main_metric"), "seed": recipe.get("seed"),
            "run_dir": str(run_dir.resolve()), "versions": artifact.get("versions"),
            # MAD-X (adapters only): task or language adapter, its language, the language adapter under it
            "adapter_kind": artifact.get("kind") if method == "adapter" else None,
            "language": artifact.get("language"), "trained_under": artifact.get("trained_under")}
    if not flat:
        return cache.put(best, model_id=model, entry_id=entry_id, info=info, overwrite=overwrite)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="adapt-flat-") as tmp:
        flattened = _flat_copy(best, Path(tmp) / "best")
        info["config"] = flattened
        return cache.put(Path(tmp) / "best", model_id=model, entry_id=entry_id, info=info, overwrite=overwrite)


def extract_multitask(run_dir: Path | str, overwrite: bool = True) -> dict[str, Any]:
    """Put a finished MT-A run into the cache: its fine-tuned base as a base model of its own (``models/``),
    then each task's adapter and head keyed by that base. Returns the base's id and path and the entries."""
    from . import cache
    from .formats import read_json as read_artifact_json
    from .fsutil import recover_directory
    from .training.recipe import read_run_recipe

    run_dir = Path(run_dir)
    status = settle_status(run_dir)
    best = run_dir / "best"
    recover_directory(best)
    if not (best / "multitask.json").is_file():
        raise UsageError(f"{run_dir} has no best checkpoint yet (status: {status or 'unknown'}); "
                         "finish it with `adapt train --resume --run-dir ...`")
    recipe = read_run_recipe(run_dir / "recipe.yaml")
    meta = read_json(best / "multitask.json")
    final = read_json(run_dir / "final_metrics.json") if (run_dir / "final_metrics.json").is_file() else {}
    base_id = str(meta.get("base_model"))
    base_path = cache.put_base_model(best / "base", base_id)
    stem = re.sub(r"[^A-Za-z0-9_\-]", "_", run_dir.resolve().name)
    adapters = []
    for task, name in (meta.get("tasks") or {}).items():
        artifact = read_artifact_json(best / name / "adapter_config.json", "an adapter")
        info = {"name": name, "task": task, "method": "multitask", "kind": "adapter",
                "config_name": recipe.get("adapter") if isinstance(recipe.get("adapter"), str) else None,
                "config": artifact.get("config"), "metrics": (final.get("per_task") or {}).get(task),
                "main_metric": (final.get("main_metrics") or {}).get(task), "seed": recipe.get("seed"),
                "run_dir": str(run_dir.resolve()), "versions": artifact.get("versions"),
                "adapter_kind": artifact.get("kind"), "derived_from": meta.get("derived_from")}
        entry = cache.put(best / name, model_id=base_id, entry_id=f"{stem}-{name}", info=info, overwrite=overwrite)
        adapters.append({"id": entry.id, "task": task, "path": str(entry.path)})
    return {"base_model": {"id": base_id, "path": str(base_path), "derived_from": meta.get("derived_from")},
            "adapters": adapters}


def _flat_copy(best: Path, target: Path) -> dict[str, Any]:
    """A copy of a run's best checkpoint with its prefix-tuning adapter made flat; returns the new config."""
    import dataclasses
    import shutil

    from .formats import read_adapter
    from .formats.native import write_adapter
    from .methods.prefix_layers import flat_weights

    artifact = read_adapter(best)
    config = artifact.config
    prefix = config.part("prefix_tuning") if config.architecture == "union" else config
    if prefix is None or prefix.architecture != "prefix_tuning":
        raise UsageError(f"only an adapter with a prefix (prefix tuning, mam, unipelt) can be made flat; {best} "
                         f"holds a {config.architecture} adapter")
    shutil.copytree(best, target)
    if not prefix.flat:
        head = "parts.prefix_tuning." if config.architecture == "union" else ""
        mine = {k.removeprefix(head): v for k, v in artifact.weights.items() if k.startswith(head)}
        flat = {head + k: v for k, v in flat_weights(prefix, mine).items()}
        weights = {**{k: v for k, v in artifact.weights.items() if not k.startswith(head)}, **flat}
        flat_prefix = prefix.replace(flat=True)
        config = config.with_part(flat_prefix) if config.architecture == "union" else flat_prefix
        artifact = dataclasses.replace(artifact, config=config, weights=weights)
        for stale in target.glob("adapter_*"):
            stale.unlink()
        write_adapter(target, artifact)
    return {k: v for k, v in artifact.config.to_dict().items() if k != "architecture"}  # as the file records it


def export_fusion(run_dir: Path | str, target: Path | str, format: str = "adapterhub") -> Path:
    """A fusion run's best fusion and its head written to ``target`` in ``format`` (AdapterHub's by default),
    with the member adapters loaded from where the run took them."""
    from .defaults import resolve_model
    from .model import AdapterModel
    from .resolve import locate
    from .training.recipe import read_run_recipe

    run_dir = Path(run_dir)
    recipe = read_run_recipe(run_dir / "recipe.yaml")
    if recipe["method"] != "fusion" or not (run_dir / "best").is_dir():
        raise UsageError(f"{run_dir} is not a finished fusion run (method {recipe['method']}); nothing to export")
    model = AdapterModel.from_pretrained(resolve_model(recipe["model"]))
    for spec in recipe["fusion_adapters"]:
        model.load_adapter(locate(spec, model.name_or_path, "adapter"), with_head=False)
    name = model.load_fusion(run_dir / "best")
    return model.save_fusion(target, name, format=format, head=model.fusion_heads.get(name))
