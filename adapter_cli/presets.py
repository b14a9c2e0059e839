"""Adapter presets: the YAML files under ``recipes/adapters``, the single registry of named configurations.

A configuration is named by a preset (``pfeiffer``), an alias (``seq_bn``), a preset with inline
overrides (``pfeiffer[reduction_factor=8,non_linearity=gelu]``, AdapterHub's mini-language) or a path
to a YAML/JSON file. ``key=value`` overrides from the command line are applied last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .builtins import yaml_registry
from .errors import ConfigError, UsageError, check_keys, suggest


@dataclass(frozen=True)
class Preset:
    name: str
    aliases: tuple[str, ...]
    description: str
    method: str
    config: dict[str, Any]
    path: str


@lru_cache(maxsize=1)
def adapter_presets() -> dict[str, Preset]:
    """Every preset by name and by alias."""
    return yaml_registry("adapters", lambda data, path: Preset(
        name=data["name"], aliases=tuple(data.get("aliases") or ()), description=data.get("description", ""),
        method=data.get("method", "bottleneck"), config=dict(data["config"]), path=path))


def parse_value(text: str) -> Any:
    """A command-line value as YAML: 8 -> int, 3e-4 -> float, true -> bool, [0,1] -> list, null -> None."""
    for number in (int, float):  # YAML 1.1 would read "3e-4" as a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise UsageError(f"the value {text[:20]}... is nested too deeply to be read") from None


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"override {item!r} is not of the form key=value")
        out[key] = parse_value(value)
    return out


_INLINE = re.compile(r"^(?P<name>[\w+\-]+)\[(?P<body>.*)\]$")


def _split_inline(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch in "[{"
        depth -= ch in "]}"
        cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _load_file(path: Path) -> dict[str, Any]:
    from .jsonio import load_json, load_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read adapter config {path}: {exc}".splitlines()[0]) from None
    # untrusted text: bad syntax, a number too long, or nesting too deep is one line (jsonio)
    reader = load_json if path.suffix == ".json" else load_yaml
    data = reader(text, f"adapter config {path}", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"adapter config {path} must hold a mapping")
    # An adapter_config.json saved with an adapter nests the method config under "config".
    return dict(data["config"]) if isinstance(data.get("config"), dict) else data


def _other_method_hint(changes: dict[str, Any], config: Any) -> str:
    """For a key of another method (``r`` with a bottleneck preset): which presets take it."""
    from .methods import METHODS, config_class

    for key in changes:
        if key in config.field_names():
            continue
        for method in METHODS:
            if method != config.architecture and key in config_class(method).field_names():
                owners = sorted(p.name for p in adapter_presets().values() if p.method == method)
                return f" ({key!r} belongs to {method} adapters: {', '.join(dict.fromkeys(owners))})"
    return ""


def resolve_adapter_config(spec: Any = "pfeiffer", overrides: dict[str, Any] | None = None) -> Any:
    """Turn a preset name, file, dict or config object plus overrides into a validated config."""
    from .methods import config_from_dict

    inline: dict[str, Any] = {}
    if hasattr(spec, "to_dict"):
        base, source = spec.to_dict(), "adapter config"
    elif isinstance(spec, dict):
        base, source = dict(spec), "adapter config"
    elif isinstance(spec, str):
        m = _INLINE.match(spec.strip())
        if m:
            spec = m.group("name")
            inline = parse_overrides(_split_inline(m.group("body")))
        presets = adapter_presets()
        if spec in presets:
            base, source = dict(presets[spec].config), f"preset {spec!r}"
            base["architecture"] = presets[spec].method
        elif Path(spec).is_file():
            base, source = _load_file(Path(spec)), str(spec)
        else:
            names = sorted({p.name for p in presets.values()})
            raise ConfigError(f"unknown adapter preset {spec!r}{suggest(spec, presets)}; "
                              f"presets: {', '.join(names)} (or a path to a YAML/JSON config)")
    else:
        raise ConfigError(f"cannot make an adapter config from {type(spec).__name__}")
    try:
        config = config_from_dict(base, source=source)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for label, changes in (("inline overrides", inline),
                           ("overrides", overrides or {})):
        if config.architecture != "union":  # a union sends each change to the part that has the field
            check_keys(changes, config.field_names(), label, extra=_other_method_hint(changes, config))
        if changes:
            try:
                config = config.replace(**changes)
            except TypeError as exc:
                raise ConfigError(f"{label}: {exc}") from None
    return config
