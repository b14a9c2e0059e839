"""What both formats share: file names, the in-memory artifacts, weight files read and written
(safetensors headers without torch, AdapterHub's legacy pickles with ``weights_only``)."""


from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
FUSION_CONFIGS = ("fusion_config.json", "adapter_fusion_config.json")
HEAD_CONFIG = "head_config.json"


@dataclass
class BaseModelInfo:
    """What an artifact was made for; checked against the model it is loaded into."""

    model_type: str | None  # None: a PEFT adapter whose files do not say (its weights fit BERT-like models)
    hidden_size: int
    name_or_path: str | None = None
    revision: str | None = None
    num_layers: int | None = None
    # a base fine-tuned by adapt (MT-A): the sha256 of its weights; an artifact that records one loads only
    # into that base (names may be renamed, weights not)
    fingerprint: str | None = None
    # an encoder-decoder's encoder depth: its decoder layers are numbered after it (num_layers counts both)
    encoder_layers: int | None = None
    # T5's feed-forward layout (gated: LoRA's intermediate is wi_1, else wi); None: unknown, the family's default
    gated_feed_forward: bool | None = None

    def __post_init__(self) -> None:  # what an artifact says it was made for, in the range of real models
        from ..architectures import MAX_HIDDEN_SIZE, MAX_LAYERS

        if self.fingerprint is not None and (not isinstance(self.fingerprint, str)
                                             or not 8 <= len(self.fingerprint) <= 128
                                             or set(self.fingerprint) - set("0123456789abcdef")):
            raise ValueError(f"fingerprint must be a hex string, got {self.fingerprint!r}"[:120])

        for key, top, optional in (("hidden_size", MAX_HIDDEN_SIZE, False), ("num_layers", MAX_LAYERS, True),
                                   ("encoder_layers", MAX_LAYERS, True)):
            value = getattr(self, key)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"{key} must be an integer from 1 to {top}, got {value!r}")
        if self.gated_feed_forward is not None and not isinstance(self.gated_feed_forward, bool):
            raise ValueError(f"gated_feed_forward must be true or false, got {self.gated_feed_forward!r}"[:120])

    def to_dict(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "revision": self.revision, "model_type": self.model_type,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                **({"fingerprint": self.fingerprint} if self.fingerprint is not None else {}),
                **({"encoder_layers": self.encoder_layers} if self.encoder_layers is not None else {}),
                **({"gated_feed_forward": self.gated_feed_forward} if self.gated_feed_forward is not None else {})}


@dataclass
class AdapterArtifact:
    name: str
    config: Any
    weights: dict[str, torch.Tensor | TensorInfo]  # TensorInfo when read with shapes_only
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionArtifact:
    name: str
    adapters: list[str]
    config: Any
    weights: dict[str, torch.Tensor | TensorInfo]  # TensorInfo when read with shapes_only
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadArtifact:
    name: str
    config: Any
    weights: dict[str, torch.Tensor | TensorInfo]  # TensorInfo when read with shapes_only
    base: BaseModelInfo
    format: str = "adapt"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path.parent} is not {what} directory: {path.name} is missing")
    from ..jsonio import load_json

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = load_json(raw, f"corrupt {path}:", ArtifactError)  # "corrupt X: is not valid JSON (...)"
    if not isinstance(data, dict):
        raise ArtifactError(f"corrupt {path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class TensorInfo:
    """A weight's name-independent description, read without loading it: stands in for a tensor where
    only shapes and sizes are needed."""

    shape: tuple[int, ...]
    dtype: str

    def numel(self) -> int:
        return math.prod(self.shape)


# safetensors dtype codes -> (torch's name, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I64": ("int64", 8), "I32": ("int32", 4),
    "I16": ("int16", 2), "I8": ("int8", 1), "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2),
    "U8": ("uint8", 1), "BOOL": ("bool", 1),
}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


def check_tensors(path: Path, weights: dict[str, Any]) -> dict[str, Any]:
    """Refuse a weights file whose tensors are not floating point (an int or bool tensor would be cast
    silently on load) or, when they are tensors rather than ``TensorInfo``, hold NaN or infinite values
    (every answer would be NaN): one line naming the file and the tensor."""
    for name, tensor in weights.items():
        dtype = tensor.dtype if isinstance(tensor, TensorInfo) else str(tensor.dtype).replace("torch.", "")
        if dtype not in FLOAT_DTYPES:
            raise ArtifactError(f"weights file {path}: tensor {name!r} is {dtype}; weights must be floating point")
    if weights and not isinstance(next(iter(weights.values())), TensorInfo):
        import torch

        for name, tensor in weights.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ArtifactError(f"weights file {path}: tensor {name!r} holds NaN or infinite values")
    return weights


def check_shapes(weights: dict[str, Any], expected: dict[str, tuple[int, ...]], where: Path | str) -> None:
    """Weights (tensors or ``TensorInfo``) against the names and shapes their config implies: what loading
    checks against the built modules, checked without torch (``adapt inspect``)."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        keys, what = (missing, "missing") if missing else (unexpected, "unexpected")
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise ArtifactError(f"weights in {where} do not match their config: {what} {keys[0]!r}{more}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key]):
            raise ArtifactError(f"weights in {where} do not match their config: {key} has shape "
                                f"{tuple(tensor.shape)}, expected {tuple(expected[key])}")


def safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's shape and dtype from a safetensors file's header (an 8-byte little-endian length,
    then that many bytes of JSON), checked against the file's size. No tensor data is read, no torch."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 <= length <= min(size - 8, MAX_HEADER_BYTES):
                raise ArtifactError(f"corrupt weights file {path}: no valid safetensors header")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise ArtifactError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except ValueError:  # not UTF-8 or not JSON
        raise ArtifactError(f"corrupt weights file {path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"corrupt weights file {path}: the safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    infos, end = {}, 0
    for name, entry in header.items():
        if name != "__metadata__":
            infos[name], stop = _tensor_info(path, name, entry, data_bytes)
            end = max(end, stop)
    if end != data_bytes:
        raise ArtifactError(f"corrupt weights file {path}: the header describes {end} bytes of data, the file "
                            f"holds {data_bytes}")
    return infos


def _tensor_info(path: Path, name: str, entry: Any, data_bytes: int) -> tuple[TensorInfo, int]:
    try:
        code, shape, (start, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*shape, start, stop))
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid or not 0 <= start <= stop <= data_bytes or not isinstance(code, str):
        raise ArtifactError(f"corrupt weights file {path}: bad header entry for {name!r}")
    dtype, itemsize = SAFETENSORS_DTYPES.get(code, (code.lower(), 0))
    if itemsize and stop - start != math.prod(shape) * itemsize:
        raise ArtifactError(f"corrupt weights file {path}: {name!r} has {stop - start} bytes for shape "
                            f"{list(shape)} of {dtype}")
    return TensorInfo(shape=shape, dtype=dtype), stop


def load_safetensors(path: Path, shapes_only: bool = False) -> dict[str, Any]:
    """The tensors of a safetensors file, or with ``shapes_only`` their ``TensorInfo`` (no torch)."""
    if shapes_only:
        return check_tensors(path, safetensors_header(path))
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for a damaged header
        raise ArtifactError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from None
    return check_tensors(path, weights)


def load_torch_bin(path: Path, shapes_only: bool = False) -> dict[str, Any]:
    """AdapterHub's ``.bin`` files are torch pickles: only ever loaded with ``weights_only=True``. The one
    read that needs torch even with ``shapes_only``."""
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file cannot be trusted or read
        raise ArtifactError(f"corrupt or unsafe weights file {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ArtifactError(f"weights file {path} does not hold a tensor dictionary")
    if shapes_only:
        return check_tensors(path, {k: TensorInfo(shape=tuple(v.shape), dtype=str(v.dtype).replace("torch.", ""))
                                    for k, v in data.items()})
    return check_tensors(path, data)


def save_safetensors(weights: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> None:
    from safetensors.torch import save_file

    # clone: AdapterHub's format names one LayerNorm twice, and safetensors refuses shared storage
    tensors = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
               .cpu().clone().contiguous() for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def one_adapter(names: set[str], weights: dict[str, Any], source: Any) -> tuple[str | None, dict[str, Any]]:
    """(the adapter name a file's weights carry, the weights): AdapterHub's weight names hold the adapter's
    name, and a file holding several adapters' weights is refused."""
    if len(names) > 1:
        raise ArtifactError(f"{source}: holds weights of several adapters ({', '.join(sorted(names))})")
    return (next(iter(names)) if names else None), weights
