"""What the methods' configurations share: the dataclass plumbing (``field_names``, ``from_dict`` with its key
check, ``to_dict``), the layers a configuration leaves in, and the checks of the fields every method has.

A method's configuration is a frozen dataclass deriving from ``MethodConfig``; it sets ``architecture``, has
the fields ``kind``, ``leave_out`` and ``init_weights_seed``, and defines ``validate`` (and ``_normalize``
where a value read from JSON or YAML needs another type). Torch-free, like the configurations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

from ..errors import ConfigError, check_keys

KINDS = ("task", "language")
MAX_SEED = 2**32 - 1  # seeds (a recipe's seed, init_weights_seed) are 32-bit, as numpy's are

Config = TypeVar("Config", bound="MethodConfig")
Bad = Callable[[str], ConfigError]  # a message -> the error naming its source (each validate makes one)


class MethodConfig:
    """The base of a method's configuration (a frozen dataclass)."""

    architecture: ClassVar[str]
    leave_out: tuple[int, ...]
    kind: str
    init_weights_seed: int | None

    # ---------------------------------------------------------------- construction and serialization
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[Config], data: dict[str, Any], source: str = "adapter config") -> Config:
        data = dict(data)
        data.pop("architecture", None)
        check_keys(data, cls.field_names(), source)
        cls._normalize(data, source)
        config = cls(**data)
        config.validate(source)
        return config

    @classmethod
    def _normalize(cls, data: dict[str, Any], source: str) -> None:
        """Bring the values of ``data`` (the caller's copy) to the types of the fields, in place."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def validate(self, source: str = "adapter config") -> None:
        raise NotImplementedError

    def layers(self, num_layers: int) -> list[int]:
        outside = [i for i in self.leave_out if i >= num_layers]
        if outside:
            raise ConfigError(f"leave_out names layers {outside} but the model has {num_layers} layers "
                              f"(0..{num_layers - 1})")
        return [i for i in range(num_layers) if i not in set(self.leave_out)]

    # ---------------------------------------------------------------- checks shared by validate
    def _check_bools(self, bad: Bad, names: tuple[str, ...]) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be true or false, got {getattr(self, name)!r}")

    def _check_fractions(self, bad: Bad, names: tuple[str, ...]) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad(f"{name} must be in [0, 1), got {value!r}")

    def _check_seed(self, bad: Bad) -> None:
        seed = self.init_weights_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
            raise bad(f"init_weights_seed must be an integer from 0 to {MAX_SEED} or null, got {seed!r}")

    def _check_kind_and_leave_out(self, bad: Bad) -> None:
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.leave_out):
            raise bad(f"leave_out holds layer indices >= 0, got {list(self.leave_out)}")
