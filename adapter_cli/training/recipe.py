"""Training recipes: typed keys in sections, read from YAML, with ``key=value`` overrides.

A recipe file has top-level keys (task, model, method, name, description) and sections::

    adapter: {config: pfeiffer, reduction_factor: 8}      # the adapter config, then changes to it
                                                          # (any method's keys: {config: lora, r: 16});
                                                          # stack_under: a language adapter (MAD-X)
    fusion:  {adapters: [...], config: dynamic, reg_weight: 0.01, unfreeze_adapters: false}
    optim:   {learning_rate, weight_decay, max_grad_norm, warmup_ratio}
    train:   {epochs, patience, batch_size, eval_batch_size, grad_accum, seed, precision, frozen_dtype,
              gradient_checkpointing, compile, device, save_every_steps, log_every_steps}
    data:    {data_dir, max_length, max_train_samples, max_eval_samples, mlm_probability, group_by_length}

Overrides name a key with its section (``optim.learning_rate=3e-4``, ``adapter.reduction_factor=32``) or,
when that is unambiguous, alone (``learning_rate=3e-4``, ``reduction_factor=32``, ``r=16``). Flat files written
before sections existed (every key at the top) still load. In memory a Recipe is one flat dataclass.

Built-in recipes are ``recipes/train/*.yaml``. A resolved recipe is saved in every run directory
(``recipe.yaml``), and ``adapt train --recipe RUN/recipe.yaml`` re-runs it exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_MAX_LENGTH
from ..devices import PRECISIONS
from ..errors import UsageError, suggest
from ..methods.bottleneck import MAX_SEED

METHODS = ("adapter", "full", "head", "fusion", "multitask")
TOP_LEVEL = ("task", "model", "method", "name", "language", "description")
LANGUAGE_CHARS = "letters, digits, '_' or '-', at most 32 (a language code: en, de, sw, en-wiki)"
# section -> {key in the file: attribute of Recipe}; the "adapter" section also takes any adapter config key
SECTIONS: dict[str, dict[str, str]] = {
    "adapter": {"config": "adapter", "stack_under": "stack_under"},
    "fusion": {"adapters": "fusion_adapters", "config": "fusion", "reg_weight": "fusion_reg_weight",
               "unfreeze_adapters": "unfreeze_adapters"},
    "optim": {k: k for k in ("learning_rate", "weight_decay", "max_grad_norm", "warmup_ratio")},
    "train": {k: k for k in ("epochs", "min_steps", "patience", "batch_size", "eval_batch_size", "grad_accum", "seed",
                             "precision", "frozen_dtype", "gradient_checkpointing", "compile", "device",
                             "save_every_steps",
                             "log_every_steps")},
    "data": {k: k for k in ("data_dir", "max_length", "max_train_samples", "max_eval_samples", "mlm_probability",
                            "group_by_length")},
    # MT-A (sampling.py): the tasks, their data, the shared base's learning rate and the annealed sampling
    "multitask": {k: k for k in ("tasks", "data_dirs", "base_learning_rate", "alpha_start", "alpha_end",
                                 "alpha_schedule", "steps_per_epoch")},
}


@dataclass
class Recipe:
    task: str | None = None
    model: str = "minilm"
    method: str = "adapter"  # adapter | full (all weights) | head (head only)
    adapter: Any = "pfeiffer"  # preset name, config file, or a mapping of config keys
    adapter_overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # adapter/head name; default: the task name
    language: str | None = None  # an mlm run's language adapter: its language (recorded; default "unknown")
    stack_under: str | None = None  # method adapter: train under stack(LANG, task), LANG a frozen language adapter
    fusion_adapters: list[str] = field(default_factory=list)  # method fusion: member adapters (dirs or cache names)
    fusion: Any = "dynamic"  # fusion config: dynamic, static, or a mapping of its fields
    fusion_reg_weight: float = 0.01  # weight of sum ||I - W_v||^2 in the loss
    unfreeze_adapters: bool = False  # train the member adapters together with the fusion
    data_dir: str | None = None
    learning_rate: float = 1e-4
    epochs: int = 30
    # at least this many optimizer steps (in whole epochs; no early stop before): a small training set gets more
    # epochs than `epochs`
    min_steps: int | None = None
    patience: int | None = 5  # evaluations without improvement before stopping; null = never stop early
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    max_length: int = DEFAULT_MAX_LENGTH
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "auto"  # auto = bf16 autocast on a CUDA GPU that supports it, fp32 otherwise
    frozen_dtype: str = "auto"  # storage of the frozen linear layers; auto = the autocast dtype (exact), else as loaded
    gradient_checkpointing: bool = False  # recompute each layer in the backward: far less activation memory
    compile: bool | str = False  # true | false | auto: the base model under torch.compile (compiled.py)
    device: str = "auto"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    mlm_probability: float = 0.15  # mlm tasks: the share of tokens masked (BERT's 80/10/10 among them)
    group_by_length: bool = False  # batches of examples of similar length, less padding (data.epoch_batches)
    save_every_steps: int = 200  # checkpoint for --resume
    log_every_steps: int = 10
    tasks: list[str] = field(default_factory=list)  # method multitask: the tasks (names or task files)
    data_dirs: dict[str, str] = field(default_factory=dict)  # method multitask: task -> its data directory
    base_learning_rate: float = 2e-5  # method multitask: the shared base's learning rate (adapters: learning_rate)
    alpha_start: float = 1.0  # method multitask: sampling exponent at the first epoch (P(task) ~ N^alpha)
    alpha_end: float = 0.2  # ... at the last epoch (linear in between)
    alpha_schedule: str = "annealed"  # annealed (start -> end) | constant (start throughout)
    steps_per_epoch: int | None = None  # method multitask: null = the batches of all tasks together
    description: str = ""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def flat(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_dict(self) -> dict[str, Any]:
        """The sectioned form, as written to recipe.yaml."""
        flat = self.flat()
        out: dict[str, Any] = {k: flat[k] for k in TOP_LEVEL}
        for section, keys in SECTIONS.items():
            out[section] = {key: flat[attr] for key, attr in keys.items()}
        out["adapter"].update(flat["adapter_overrides"])
        if flat["language"] is None:  # MAD-X keys only where used: other recipes read as they always did
            del out["language"]
        if flat["stack_under"] is None:
            del out["adapter"]["stack_under"]
        if flat["method"] != "multitask":  # other recipes read as they always did
            del out["multitask"]
        return out

    def updated(self, changes: dict[str, Any], source: str = "overrides") -> Recipe:
        """A new recipe with ``changes``: sectioned or flat mappings, dotted keys, or unambiguous short keys."""
        data = self.flat()
        overrides = dict(data["adapter_overrides"])
        for key, value in changes.items():
            if key in SECTIONS and isinstance(value, dict) and not (key in ("adapter", "fusion")
                                                                    and "config" not in value):
                for inner, inner_value in value.items():
                    _set(data, overrides, f"{key}.{inner}", inner_value, source)
            else:
                _set(data, overrides, key, value, source)
        data["adapter_overrides"] = overrides
        recipe = Recipe(**data)
        recipe.validate(source)
        return recipe

    def validate(self, source: str = "recipe") -> None:
        def bad(msg: str) -> UsageError:
            return UsageError(f"{source}: {msg}")

        if self.method not in METHODS:
            raise bad(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.precision not in PRECISIONS:
            raise bad(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.frozen_dtype not in PRECISIONS:
            raise bad(f"frozen_dtype must be one of {', '.join(PRECISIONS)}, got {self.frozen_dtype!r}")
        if self.frozen_dtype in ("bf16", "fp16") and self.precision not in ("auto", self.frozen_dtype):
            raise bad(f"frozen_dtype={self.frozen_dtype} needs precision={self.frozen_dtype} (frozen layers are "
                      f"stored in the dtype autocast computes in), got precision={self.precision}")
        for key in ("gradient_checkpointing", "group_by_length"):
            if not isinstance(getattr(self, key), bool):
                raise bad(f"{key} must be true or false")
        from ..compiled import parse_setting

        self.compile = parse_setting(self.compile, source)
        for key in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "max_length", "save_every_steps",
                    "log_every_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(f"{key} must be a positive integer, got {value!r}")
        for key in ("learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise bad(f"{key} must be a finite non-negative number, got {value!r}")
        if self.warmup_ratio >= 1:
            raise bad("warmup_ratio must be below 1")
        for key in ("patience", "max_train_samples", "max_eval_samples", "min_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise bad(f"{key} must be a positive integer or null, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise bad(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.adapter_overrides, dict):
            raise bad("adapter_overrides must be a mapping")
        if not isinstance(self.fusion_adapters, list) or not all(isinstance(a, str) for a in self.fusion_adapters):
            raise bad("fusion_adapters must be a list of adapter directories or cache names")
        if not isinstance(self.unfreeze_adapters, bool):
            raise bad("unfreeze_adapters must be true or false")
        if isinstance(self.fusion_reg_weight, bool) or not isinstance(self.fusion_reg_weight, (int, float)) \
                or not 0 <= self.fusion_reg_weight < math.inf:
            raise bad("fusion_reg_weight must be a finite non-negative number")
        self._validate_madx(bad)
        self._validate_multitask(bad)

    def _validate_multitask(self, bad: Any) -> None:
        """The multitask keys' types; which tasks, and how many, is checked by sampling.check_tasks."""
        from .sampling import SCHEDULES

        if not isinstance(self.tasks, list) or not all(isinstance(t, str) and t for t in self.tasks):
            raise bad("tasks must be a list of task names or task files")
        if self.method == "multitask" and self.min_steps is not None:
            raise bad("min_steps is not for method multitask: its epochs are steps_per_epoch steps and its sampling "
                      "schedule runs over `epochs`; set epochs or steps_per_epoch")
        if not isinstance(self.data_dirs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in self.data_dirs.items()):
            raise bad("data_dirs must map task names to data directories")
        for key in ("base_learning_rate", "alpha_start", "alpha_end"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise bad(f"{key} must be a finite non-negative number, got {value!r}")
        if self.alpha_schedule not in SCHEDULES:
            raise bad(f"alpha_schedule must be one of {', '.join(SCHEDULES)}, got {self.alpha_schedule!r}")
        value = self.steps_per_epoch
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(f"steps_per_epoch must be a positive integer or null, got {value!r}")
        if self.method != "multitask" and (self.tasks or self.data_dirs):
            raise bad("`tasks` and `data_dirs` are for `method` multitask (one task: `task` and `data_dir`)")

    def _validate_madx(self, bad: Any) -> None:
        """The keys of language adapters (MAD-X): language, stack_under, mlm_probability."""
        import re

        if self.language is not None and (not isinstance(self.language, str)
                                          or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,31}", self.language)):
            raise bad(f"`language` must be {LANGUAGE_CHARS}, got {self.language!r}")
        if self.stack_under is not None and (not isinstance(self.stack_under, str) or not self.stack_under.strip()):
            raise bad(f"stack_under must name a language adapter (a cache name or a directory), got {self.stack_under!r}")
        if self.stack_under is not None and self.method != "adapter":
            raise bad(f"`stack_under` trains a new adapter under a language adapter; `method` {self.method} trains "
                      "no adapter (use `method` adapter)")
        p = self.mlm_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise bad(f"mlm_probability must be a number between 0 and 1 (exclusive), got {p!r}")


def _set(data: dict[str, Any], overrides: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set one key, given as SECTION.KEY, as a flat attribute, or as an adapter config key."""
    section, dot, inner = key.partition(".")
    if dot:
        if section not in SECTIONS:
            raise UsageError(f"unknown recipe section {section!r} in {source}{suggest(section, SECTIONS)}; "
                             f"sections: {', '.join(SECTIONS)}")
        if inner in SECTIONS[section]:
            data[SECTIONS[section][inner]] = value
        elif section == "adapter" and inner in _adapter_keys():
            overrides[inner] = value
        else:
            known = list(SECTIONS[section]) + (_adapter_keys() if section == "adapter" else [])
            raise UsageError(f"unknown key {inner!r} in recipe section {section!r} ({source})"
                             f"{suggest(inner, known)}")
    elif key == "adapter_overrides" and isinstance(value, dict):
        overrides.clear()
        overrides.update(value)
    elif key in data:
        data[key] = value
    elif key in _adapter_keys():
        overrides[key] = value  # short form of adapter.KEY: no recipe key has an adapter config key's name
    else:
        known = [k for k in data if k != "adapter_overrides"] + _adapter_keys() + \
            [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]
        raise UsageError(f"unknown recipe key {key!r} in {source}{suggest(key, known)}")


def _adapter_keys() -> list[str]:
    """Every configuration key of every adapter method (``reduction_factor``, ``r``, ...): which of them a
    config takes is checked when the adapter config is resolved, against its own method."""
    from ..methods import METHODS, config_class

    return list(dict.fromkeys(key for method in METHODS for key in config_class(method).field_names()))


def _read_yaml(path: Path) -> dict[str, Any]:
    from ..jsonio import load_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc}") from None
    data = load_yaml(text, f"recipe {path}")  # bad YAML or nesting too deep: one line
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must hold a mapping of keys to values")
    return data


@lru_cache(maxsize=1)
def builtin_recipes() -> dict[str, Path]:
    from ..builtins import recipes_root

    return {p.stem: p for p in sorted((recipes_root() / "train").glob("*.yaml"))}


def read_run_recipe(path: Path) -> dict[str, Any]:
    """A run's recipe.yaml (sectioned, or flat from before sections) as flat keys, for readers of runs."""
    return Recipe().updated(_read_yaml(Path(path)), source=f"recipe {path}").flat()


def load_recipe(name_or_path: str | None = None) -> Recipe:
    """A built-in recipe by name, or a YAML file; ``None`` means the defaults."""
    if name_or_path is None:
        return Recipe()
    path = Path(name_or_path)
    if name_or_path in builtin_recipes():
        path = builtin_recipes()[name_or_path]
    elif not path.is_file():
        raise UsageError(f"no recipe {name_or_path!r}{suggest(name_or_path, builtin_recipes())}; built-in: "
                         f"{', '.join(builtin_recipes())} (or a YAML file; see `adapt recipes ls`)")
    return Recipe().updated(_read_yaml(path), source=f"recipe {path}")
