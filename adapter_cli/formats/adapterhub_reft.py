"""AdapterHub's format for ReFT adapters (``"architecture": "reft"`` in ``adapter_config.json``).

Weight names carry the layer's module path, e.g.
``bert.encoder.layer.3.reft_layer.refts.sst2.units.0.learned_source.weight``; an orthogonal R is stored as
torch's parametrization stores it (``projection.parametrizations.weight.original`` and ``....0.base``).
Ours are ``reft.3.units.0.learned_source.weight`` and so on.

``subtract_projection`` is a class attribute of AdapterHub's ``ReftConfig``, not a dataclass field: its files
never record it, and its ``load_adapter`` builds every ReFT adapter from a file with the class default, True
(a key in the file is dropped on the way, in ``AdapterConfig.load``). So a DiReFT adapter comes back from an
AdapterHub file as NoReFT there. We read such files as AdapterHub computes them (True when the key is absent;
an explicit key is taken at its word), write the keys AdapterHub writes, and refuse to write a DiReFT adapter
in this format, which AdapterHub would then compute differently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..architectures import Architecture
from ..errors import ArtifactError, UsageError
from .artifacts import one_adapter

# kind is our metadata; subtract_projection is not a field of AdapterHub's ReftConfig (always true when written)
NOT_WRITTEN = ("architecture", "kind", "subtract_projection")


def reft_config_from_adapterhub(raw: dict[str, Any], source: str) -> Any:
    from ..methods.reft import ReftConfig

    values = {k: v for k, v in raw.items() if k != "architecture"}
    values.setdefault("subtract_projection", True)  # what AdapterHub computes with when the key is absent
    return ReftConfig.from_dict(values, source=source)


def reft_config_to_adapterhub(config: Any) -> dict[str, Any]:
    if not config.subtract_projection:
        raise UsageError("a DiReFT adapter (subtract_projection false) cannot be saved in AdapterHub's format: "
                         "adapters 1.3.0 loads every ReFT file with subtract_projection true, so it would compute "
                         "another adapter; save it in the adapt format")
    out = {k: v for k, v in config.to_dict().items() if k not in NOT_WRITTEN}
    out["architecture"] = "reft"
    return out


def reft_weights_from_adapterhub(raw: dict[str, Any], arch: Architecture, source: Path) -> tuple[str | None, dict]:
    pattern = re.compile(rf"^(?:{re.escape(arch.adapterhub_prefix)}\.)?{re.escape(arch.hub_layers)}\.(\d+)\."
                         r"reft_layer\.refts\.([^.]+)\.(units\..+)$")
    out: dict[str, Any] = {}
    names: set[str] = set()
    for key, tensor in raw.items():
        m = pattern.match(key)
        if not m:
            raise ArtifactError(f"{source}: unexpected weight {key!r} in a ReFT adapter")
        layer, name, param = m.groups()
        names.add(name)
        out[f"reft.{layer}.{param}"] = tensor
    return one_adapter(names, out, source)


def reft_weights_to_adapterhub(weights: dict[str, Any], arch: Architecture, name: str) -> dict[str, Any]:
    out = {}
    for key, tensor in weights.items():
        _, layer, param = key.split(".", 2)
        out[f"{arch.adapterhub_prefix}.{arch.hub_layers}.{layer}.reft_layer.refts.{name}.{param}"] = tensor
    return out
