"""The built-in YAML files shipped under ``recipes/`` (in the wheel: ``adapter_cli.recipes``): adapter
presets (``adapters/``), training recipes (``train/``) and tasks (``tasks/``). One loader for all three
registries, so they share naming rules (a name or alias defined twice is a bug)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def recipes_root() -> Path:
    return Path(str(resources.files("adapter_cli.recipes")))


def yaml_registry(folder: str, build: Any) -> dict[str, Any]:
    """Entries built from ``recipes/<folder>/*.yaml``, by name and by alias; a name defined twice is a bug."""
    table: dict[str, Any] = {}
    for path in sorted((recipes_root() / folder).glob("*.yaml")):
        entry = build(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
        for key in (entry.name, *entry.aliases):
            if key in table:
                raise RuntimeError(f"{folder} name {key!r} is defined twice ({path})")
            table[key] = entry
    return table
