"""On-disk formats of adapters, fusions and heads: ours (``adapt``) and AdapterHub's.

Both are read into the same in-memory artifacts whose weights use our canonical, model-independent
key names (``<location>.<layer>.<param>``), so the model never sees a file format.

Reading with ``shapes_only=True`` (what ``adapt inspect`` does) gives ``TensorInfo`` records instead of
tensors: for safetensors files they come from the file's JSON header, without torch; only AdapterHub's
legacy ``.bin`` pickles need torch to be read at all.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError
from . import adapterhub, native
from .artifacts import (ADAPTER_CONFIG, FUSION_CONFIGS, HEAD_CONFIG, AdapterArtifact, BaseModelInfo,
                        FusionArtifact, HeadArtifact, TensorInfo, load_safetensors, load_torch_bin, read_json,
                        safetensors_header, save_safetensors)

# The package is the formats' facade: the shared artifacts and the readers that pick the format.
__all__ = ["ADAPTER_CONFIG", "FUSION_CONFIGS", "HEAD_CONFIG", "AdapterArtifact", "BaseModelInfo", "FusionArtifact",
           "HeadArtifact", "TensorInfo", "load_safetensors", "load_torch_bin", "read_json", "safetensors_header",
           "save_safetensors", "adapterhub", "native", "detect", "read_adapter", "read_fusion", "read_head",
           "has_head"]


def detect(path: Path, kind: str) -> str:
    """'adapt' or 'adapterhub' for an adapter/fusion/head directory."""
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


def read_adapter(path: Path | str, shapes_only: bool = False) -> AdapterArtifact:
    """An adapter directory in either format; ``shapes_only``: ``TensorInfo`` weights, no torch for safetensors."""
    path = Path(path)
    reader = native.read_adapter if detect(path, "adapter") == "adapt" else adapterhub.read_adapter
    return reader(path, shapes_only=shapes_only)


def read_fusion(path: Path | str, shapes_only: bool = False) -> FusionArtifact:
    path = Path(path)
    reader = native.read_fusion if detect(path, "fusion") == "adapt" else adapterhub.read_fusion
    return reader(path, shapes_only=shapes_only)


def read_head(path: Path | str, shapes_only: bool = False) -> HeadArtifact:
    path = Path(path)
    reader = native.read_head if detect(path, "head") == "adapt" else adapterhub.read_head
    return reader(path, shapes_only=shapes_only)


def has_head(path: Path) -> bool:
    return (Path(path) / HEAD_CONFIG).is_file()
