"""Run directories after training: reading their results and extracting the best adapter into the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import UsageError


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"{path} is missing or unreadable") from None


def extract(run_dir: Path | str, overwrite: bool = True) -> Any:
    """Put a finished run's best adapter (and head) into the cache, keyed by its base model."""
    import yaml

    from . import cache
    from .formats import read_json as read_artifact_json

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise UsageError(f"{run_dir} is not a run directory (no recipe.yaml)")
    status = read_json(run_dir / "run.json").get("status") if (run_dir / "run.json").is_file() else None
    best = run_dir / "best"
    if not best.is_dir():
        raise UsageError(f"{run_dir} has no best checkpoint yet (status: {status or 'unknown'}); "
                         "finish it with `adapt train --resume --run-dir ...`")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
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
            "run_dir": str(run_dir.resolve()), "versions": artifact.get("versions")}
    return cache.put(best, model_id=model, entry_id=entry_id, info=info, overwrite=overwrite)
