"""Our format: a JSON config (method config, base model id and revision, shape, versions) + safetensors.

Directory layout::

    adapter_config.json        {"format": "adapt.adapter", "name", "method", "config", "base_model", ...}
    adapter_weights.safetensors
    head_config.json           (optional) {"format": "adapt.head", ...}
    head_weights.safetensors
    fusion_config.json         (fusion directories) {"format": "adapt.fusion", "adapters": [...], ...}
    fusion_weights.safetensors

Weight names are model-independent (``output_adapter.3.down.weight``), so a rename never touches them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from ..fsutil import write_json
from .artifacts import (ADAPTER_CONFIG, HEAD_CONFIG, AdapterArtifact, BaseModelInfo, FusionArtifact, HeadArtifact,
               load_safetensors, read_json, save_safetensors)

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
FUSION_CONFIG = "fusion_config.json"
WEIGHTS = {"adapter": "adapter_weights.safetensors", "fusion": "fusion_weights.safetensors",
           "head": "head_weights.safetensors"}
CONFIGS = {"adapter": ADAPTER_CONFIG, "fusion": FUSION_CONFIG, "head": HEAD_CONFIG}
# Recorded beside an adapter's config when set: ``language`` (a language adapter's language, e.g. "en") and
# ``trained_under`` (the language adapter a task adapter was trained stacked under: {name, language, id}).
ADAPTER_METADATA = ("language", "trained_under")
_LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,31}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def check_metadata(data: dict[str, Any], source: Path) -> None:
    """``language`` and ``trained_under`` as written by adapt, else one line: they reach tables, cards, pages."""
    language = data.get("language")
    if language is not None and not (isinstance(language, str) and _LANGUAGE.fullmatch(language)):
        raise ArtifactError(f"corrupt {source}: language must be a short code (letters, digits, '_', '-')")
    under = data.get("trained_under")
    if under is None:
        return
    if not isinstance(under, dict) or set(under) - {"name", "language", "source"} \
            or not (isinstance(under.get("name"), str) and _NAME.fullmatch(under["name"])) \
            or not (isinstance(under.get("language"), str) and _LANGUAGE.fullmatch(under["language"])) \
            or not (isinstance(under.get("source"), str) and len(under["source"]) <= 1000
                    and under["source"].isprintable()):
        raise ArtifactError(f"corrupt {source}: trained_under must be {{name, language, source}} of the language "
                            "adapter the adapter was trained under")


def versions() -> dict[str, str]:
    import torch
    import transformers

    from .._version import __version__

    return {"adapt": __version__, "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}


def is_native(path: Path, kind: str) -> bool:
    config = path / CONFIGS[kind]
    if not config.is_file():
        return False
    try:
        import json

        return str(json.loads(config.read_text(encoding="utf-8")).get("format", "")).startswith("adapt.")
    except Exception:
        return False


def _read(path: Path, kind: str, shapes_only: bool = False) -> tuple[dict[str, Any], dict[str, Any], BaseModelInfo]:
    data = read_json(path / CONFIGS[kind], f"an {kind}" if kind[0] in "aeiou" else f"a {kind}")
    if data.get("format") != f"adapt.{kind}":
        raise ArtifactError(f"{path / CONFIGS[kind]} describes a {data.get('format')!r}, not an adapt {kind}")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or not isinstance(data.get("config", {}), dict) or "name" not in data:
        raise ArtifactError(f"corrupt {path / CONFIGS[kind]}: format_version, name or config is malformed")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by a newer adapt (format {data['format_version']}); upgrade adapt")
    weights_path = path / WEIGHTS[kind]
    if not weights_path.is_file():
        raise ArtifactError(f"{path} has no weights: {WEIGHTS[kind]} is missing")
    try:
        base = BaseModelInfo(**data["base_model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"corrupt {path / CONFIGS[kind]}: bad base_model ({exc})") from None
    return data, load_safetensors(weights_path, shapes_only), base


def read_adapter(path: Path, shapes_only: bool = False) -> AdapterArtifact:
    from ..methods import config_from_dict

    data, weights, base = _read(path, "adapter", shapes_only)
    check_metadata(data, path / ADAPTER_CONFIG)
    config = config_from_dict({**data.get("config", {}), "architecture": data.get("method", "bottleneck")},
                              source=str(path / ADAPTER_CONFIG))
    return AdapterArtifact(name=data["name"], config=config, weights=weights, base=base, format="adapt",
                           path=path, meta=data)


def read_fusion(path: Path, shapes_only: bool = False) -> FusionArtifact:
    from ..fusion_config import FusionConfig

    data, weights, base = _read(path, "fusion", shapes_only)
    if not isinstance(data.get("adapters"), list):
        raise ArtifactError(f"corrupt {path / FUSION_CONFIG}: 'adapters' must list the member adapters")
    config = FusionConfig.from_dict(data.get("config", {}), source=str(path / FUSION_CONFIG))
    return FusionArtifact(name=data["name"], adapters=list(data["adapters"]), config=config, weights=weights,
                          base=base, format="adapt", path=path, meta=data)


def read_head(path: Path, shapes_only: bool = False) -> HeadArtifact:
    from ..head_config import HeadConfig

    data, weights, base = _read(path, "head", shapes_only)
    config = HeadConfig.from_dict(data.get("config", {}), source=str(path / HEAD_CONFIG))
    return HeadArtifact(name=data["name"], config=config, weights=weights, base=base, format="adapt",
                        path=path, meta=data)


def _write(directory: Path, kind: str, header: dict[str, Any], weights: dict[str, torch.Tensor],
           dtype: torch.dtype | None) -> None:
    import torch

    stored = dtype or next((w.dtype for w in weights.values() if w.is_floating_point()), torch.float32)
    parameters = sum(w.numel() for w in weights.values())
    data = {"format": f"adapt.{kind}", "format_version": FORMAT_VERSION, **header,
            "parameters": parameters, "dtype": str(stored).replace("torch.", ""), "versions": versions()}
    save_safetensors(weights, directory / WEIGHTS[kind], dtype)
    write_json(directory / CONFIGS[kind], data)


def write_adapter(directory: Path, artifact: AdapterArtifact, dtype: torch.dtype | None = None) -> None:
    config = artifact.config.to_dict()
    method = config.pop("architecture")
    extra = {k: artifact.meta[k] for k in ADAPTER_METADATA if artifact.meta.get(k) is not None}
    _write(directory, "adapter", {"name": artifact.name, "method": method, "kind": artifact.config.kind,
                                  "config": config, "base_model": artifact.base.to_dict(), **extra},
           artifact.weights, dtype)


def write_fusion(directory: Path, artifact: FusionArtifact, dtype: torch.dtype | None = None) -> None:
    _write(directory, "fusion", {"name": artifact.name, "adapters": artifact.adapters,
                                 "config": artifact.config.to_dict(), "base_model": artifact.base.to_dict()},
           artifact.weights, dtype)


def write_head(directory: Path, artifact: HeadArtifact, dtype: torch.dtype | None = None) -> None:
    _write(directory, "head", {"name": artifact.name, "config": artifact.config.to_dict(),
                               "base_model": artifact.base.to_dict()}, artifact.weights, dtype)
