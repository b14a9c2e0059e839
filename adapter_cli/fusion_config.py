"""AdapterFusion's configuration and presets, torch-free so that reading a fusion's metadata
(adapt inspect) needs no torch; the layers are in ``fusion``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, check_keys, suggest


@dataclass(frozen=True)
class FusionConfig:
    """AdapterHub's ten fusion fields. ``dynamic`` (the default) learns Q, K and V; ``static`` has no V."""

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "fusion config") -> FusionConfig:
        check_keys(data, (f.name for f in dataclasses.fields(cls)), source)
        values = dict(data)
        # AdapterHub annotates value_initialized as str but stores a bool; accept both spellings.
        if isinstance(values.get("value_initialized"), str):
            values["value_initialized"] = values["value_initialized"].lower() in ("true", "1", "yes")
        for key, value in values.items():
            if key == "dropout_prob":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not 0 <= value < 1):
                    raise ConfigError(f"{source}: dropout_prob must be a number in [0, 1) or null, got {value!r}")
            elif not isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return cls(**values)

    def weight_shapes(self, hidden_size: int, locations: list[str], num_layers: int,
                      encoder_layers: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, from the configuration alone: what ``fusion.FusionSet`` holds (a
        layer in every layer of each placement; query and key with a bias, value without)."""
        from .methods.bottleneck import location_layers

        h, out = hidden_size, {}
        for loc in locations:
            for i in location_layers(loc, num_layers, encoder_layers):
                for part, bias in (("query", True), ("key", True), ("value", False)):
                    if getattr(self, part):
                        out[f"{loc}.{i}.{part}.weight"] = (h, h)
                        if bias:
                            out[f"{loc}.{i}.{part}.bias"] = (h,)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FUSION_PRESETS: dict[str, FusionConfig] = {
    "dynamic": FusionConfig(),
    "static": FusionConfig(value=False, regularization=False, value_initialized=False),
}


def resolve_fusion_config(spec: Any = "dynamic") -> FusionConfig:
    if isinstance(spec, FusionConfig):
        return spec
    if isinstance(spec, dict):
        return FusionConfig.from_dict(spec)
    if spec in FUSION_PRESETS:
        return FUSION_PRESETS[spec]
    raise ConfigError(f"unknown fusion config {spec!r}{suggest(str(spec), FUSION_PRESETS)}; "
                      f"known: {', '.join(FUSION_PRESETS)}")
