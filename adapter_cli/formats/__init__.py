"""On-disk formats of adapters, fusions and heads: ours (``adapt``) and AdapterHub's.

Both are read into the same in-memory artifacts whose weights use our canonical, model-independent
key names (``<location>.<layer>.<param>``), so the model never sees a file format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError

ADAPTER_CONFIG = "adapter_config.json"
FUSION_CONFIGS = ("fusion_config.json", "adapter_fusion_config.json")
HEAD_CONFIG = "head_config.json"


@dataclass
class BaseModelInfo:
    """What an artifact was made for; checked against the model it is loaded into."""

    model_type: str
    hidden_size: int
    name_or_path: str | None = None
    revision: str | None = None
    num_layers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "revision": self.revision, "model_type": self.model_type,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers}


@dataclass
class AdapterArtifact:
    name: str
    config: Any
    weights: dict[str, torch.Tensor]
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionArtifact:
    name: str
    adapters: list[str]
    config: Any
    weights: dict[str, torch.Tensor]
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadArtifact:
    name: str
    config: Any
    weights: dict[str, torch.Tensor]
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path.parent} is not {what} directory: {path.name} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"corrupt {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"corrupt {path}: expected a JSON object")
    return data


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for a damaged header
        raise ArtifactError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from None


def load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """AdapterHub's ``.bin`` files are torch pickles: only ever loaded with ``weights_only=True``."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file cannot be trusted or read
        raise ArtifactError(f"corrupt or unsafe weights file {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ArtifactError(f"weights file {path} does not hold a tensor dictionary")
    return data


def save_safetensors(weights: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> None:
    from safetensors.torch import save_file

    # clone: AdapterHub's format names one LayerNorm twice, and safetensors refuses shared storage
    tensors = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
               .cpu().clone().contiguous() for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def detect(path: Path, kind: str) -> str:
    """'adapt' or 'adapterhub' for an adapter/fusion/head directory."""
    from . import adapterhub, native

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"no {kind} directory at {path}")
    if native.is_native(path, kind):
        return "adapt"
    if adapterhub.is_adapterhub(path, kind):
        return "adapterhub"
    names = {"adapter": ADAPTER_CONFIG, "fusion": " or ".join(FUSION_CONFIGS), "head": HEAD_CONFIG}[kind]
    article = "an" if kind[0] in "aeiou" else "a"
    raise ArtifactError(f"{path} is not {article} {kind} directory: {names} is missing")


def read_adapter(path: Path | str) -> AdapterArtifact:
    from . import adapterhub, native

    path = Path(path)
    return native.read_adapter(path) if detect(path, "adapter") == "adapt" else adapterhub.read_adapter(path)


def read_fusion(path: Path | str) -> FusionArtifact:
    from . import adapterhub, native

    path = Path(path)
    return native.read_fusion(path) if detect(path, "fusion") == "adapt" else adapterhub.read_fusion(path)


def read_head(path: Path | str) -> HeadArtifact:
    from . import adapterhub, native

    path = Path(path)
    return native.read_head(path) if detect(path, "head") == "adapt" else adapterhub.read_head(path)


def has_head(path: Path) -> bool:
    return (Path(path) / HEAD_CONFIG).is_file()
