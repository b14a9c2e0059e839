"""AdapterHub's format for prompt-tuning adapters (``"architecture": "prompt_tuning"`` in ``adapter_config.json``).

One weight, named with the base model's prefix: ``bert.prompt_tuning.prompt_tunings.<name>.prompt_embedding.weight``
(ours: ``prompt_embedding.weight``). AdapterHub's config has no ``random_uniform_scale`` field (a class
attribute, 0.5 whenever it draws a prompt; it matters only then), so it is not written, and a file without it
reads as 0.5.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..architectures import Architecture
from ..errors import ArtifactError
from .artifacts import one_adapter

NOT_WRITTEN = ("architecture", "kind", "random_uniform_scale")  # kind: our metadata


def prompt_config_from_adapterhub(raw: dict[str, Any], source: str) -> Any:
    from ..methods.prompt import PromptTuningConfig

    return PromptTuningConfig.from_dict({k: v for k, v in raw.items() if k != "architecture"}, source=source)


def prompt_config_to_adapterhub(config: Any) -> dict[str, Any]:
    out = {k: v for k, v in config.to_dict().items() if k not in NOT_WRITTEN}
    out["architecture"] = "prompt_tuning"
    return out


def prompt_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, source: Path) -> tuple[str | None, dict]:
    pattern = re.compile(rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?prompt_tuning\.prompt_tunings\.([^.]+)\."
                         r"(prompt_embedding\.weight)$")
    out: dict[str, Any] = {}
    names: set[str] = set()
    for key, tensor in raw.items():
        m = pattern.match(key)
        if not m:
            raise ArtifactError(f"{source}: unexpected weight {key!r} in a prompt-tuning adapter")
        names.add(m.group(1))
        out[m.group(2)] = tensor
    return one_adapter(names, out, source)


def prompt_weights_to_adapterhub(weights: dict[str, Any], arch: Architecture, name: str) -> dict[str, Any]:
    return {f"{arch.adapterhub_prefix}.prompt_tuning.prompt_tunings.{name}.{key}": tensor
            for key, tensor in weights.items()}
