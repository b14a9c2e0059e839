"""Config unions: one adapter made of several methods at once, as AdapterHub's ``ConfigUnion``
(``"architecture": "union"``, ``"configs": [...]``). Every part runs at its own sites under the adapter's one
name, so ``stack(lang, mam)`` or ``batch_split(unipelt, seq)`` treat the union as one adapter.

Two unions have names (presets in ``recipes/adapters``), and any other is written the same way in YAML:

* ``mam`` (He et al. 2022, Mix-and-Match): prefix tuning (bottleneck_size 800) + a parallel bottleneck adapter
  after the feed-forward block, scaled by 4;
* ``unipelt`` (Mao et al. 2022): prefix tuning (10 tokens) + a Pfeiffer adapter (reduction factor 16) + LoRA
  (r 8, alpha 2), each behind a learned gate (``use_gating``).

Parts are bottleneck, LoRA-family or prefix-tuning configs, one of each at most (two parts of one method
would share its sites and weight names). Torch-free, like the other configurations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .base import KINDS, MethodConfig

PART_METHODS = ("prefix_tuning", "bottleneck", "lora")


@dataclass(frozen=True)
class UnionConfig(MethodConfig):
    architecture: ClassVar[str] = "union"

    configs: tuple[Any, ...] = ()
    kind: str = "task"  # metadata only, as for the other methods
    leave_out: tuple[int, ...] = ()  # each part has its own; kept empty for what every config has
    init_weights_seed: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> UnionConfig:
        from . import config_from_dict

        data = dict(data)
        data.pop("architecture", None)
        parts = data.pop("configs", None)
        if not isinstance(parts, (list, tuple)) or not parts:
            raise ConfigError(f"{source}: a union needs configs, a list of the methods' configs")
        configs = []
        for i, part in enumerate(parts):
            if not isinstance(part, dict):
                raise ConfigError(f"{source}: configs[{i}] must be a config (a mapping), got {part!r}")
            if part.get("architecture") == "union":
                raise ConfigError(f"{source}: configs[{i}] is a union; a union holds no union")
            configs.append(dict(part))
        kind = data.pop("kind", "task")
        _route_overrides(configs, data, source)
        config = cls(configs=tuple(config_from_dict(p, f"{source} configs[{i}]") for i, p in enumerate(configs)),
                     kind=kind)
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:  # noqa: D102 - the union's own shape, not its parts' fields
        return {"architecture": "union", "configs": [c.to_dict() for c in self.configs], "kind": self.kind}

    def replace(self, **changes: Any) -> UnionConfig:
        return UnionConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "adapter config") -> None:
        methods = [c.architecture for c in self.configs]
        for method in methods:
            if method not in PART_METHODS:
                raise ConfigError(f"{source}: a union's parts are {', '.join(PART_METHODS)} configs, not {method}")
            if methods.count(method) > 1:
                raise ConfigError(f"{source}: the union has {methods.count(method)} {method} parts; one of each "
                                  "method at most (they would share its sites)")
        if self.kind not in KINDS:
            raise ConfigError(f"{source}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def with_part(self, config: Any) -> UnionConfig:
        """The union with its part of ``config``'s method replaced by ``config``."""
        return UnionConfig(configs=tuple(config if c.architecture == config.architecture else c
                                         for c in self.configs), kind=self.kind)

    def part(self, method: str) -> Any:
        return next((c for c in self.configs if c.architecture == method), None)

    @property
    def variant(self) -> str:
        return "+".join(c.architecture for c in self.configs)

    def parameter_count(self, hidden_size: int, num_layers: int, intermediate_size: int | None = None,
                        linear_shapes: dict[str, tuple[int, int]] | None = None, kv_size: int | None = None,
                        encoder_layers: int | None = None) -> dict:
        """Each part's counts (``encoder_layers``: an encoder-decoder's encoder depth, as the parts take it)."""
        total, trainable, placements = 0, 0, []
        bytes32 = bytes16 = 0
        for c in self.configs:
            if c.architecture == "lora":
                counts = c.parameter_count(hidden_size, num_layers, intermediate_size or 4 * hidden_size, linear_shapes,
                                           encoder_layers)
            elif c.architecture == "prefix_tuning":
                counts = c.parameter_count(hidden_size, num_layers, kv_size, encoder_layers)
            else:
                counts = c.parameter_count(hidden_size, num_layers, encoder_layers=encoder_layers)
            total += counts["parameters"]
            trainable += counts.get("trainable_parameters", counts["parameters"])
            bytes32, bytes16 = bytes32 + counts["bytes_fp32"], bytes16 + counts["bytes_fp16"]
            placements += [{**p, "method": c.architecture} for p in counts["placements"]]
        return {"placements": placements, "parameters": total, "trainable_parameters": trainable,
                "bytes_fp32": bytes32, "bytes_fp16": bytes16}


def _route_overrides(configs: list[dict[str, Any]], changes: dict[str, Any], source: str) -> None:
    """``mam prefix_length=10``: a key=value change goes to the one part whose method has that field."""
    from . import config_class

    for key, value in changes.items():
        owners = [c for c in configs if key in config_class(c.get("architecture") or "bottleneck").field_names()]
        if len(owners) != 1:
            methods = ", ".join(c.get("architecture") or "bottleneck" for c in owners)
            why = f"several of its parts have it ({methods}); write the union in a YAML file" if owners else \
                "none of its parts has it"
            raise ConfigError(f"{source}: cannot set {key!r} on a union: {why}")
        owners[0][key] = value
