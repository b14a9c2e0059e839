"""Adapter methods: one module per method (configuration + layers). This table is the single registry."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, suggest

# method name -> "module:ConfigClass", imported on first use so the CLI starts without torch.
METHODS: dict[str, str] = {
    "bottleneck": "adapter_cli.methods.bottleneck:BottleneckConfig",
    "lora": "adapter_cli.methods.lora:LoRAConfig",
    "reft": "adapter_cli.methods.reft:ReftConfig",
    "prompt_tuning": "adapter_cli.methods.prompt:PromptTuningConfig",
    "prefix_tuning": "adapter_cli.methods.prefix:PrefixTuningConfig",
    "union": "adapter_cli.methods.union:UnionConfig",
}


def config_class(method: str) -> Any:
    if method not in METHODS:
        raise ConfigError(f"unknown adapter method {method!r}{suggest(method, METHODS)}; known: {', '.join(METHODS)}")
    import importlib

    module, cls = METHODS[method].split(":")
    return getattr(importlib.import_module(module), cls)


def config_from_dict(data: dict[str, Any], source: str = "adapter config") -> Any:
    method = data.get("architecture") or ("union" if "configs" in data else "bottleneck")
    return config_class(method).from_dict(data, source=source)
