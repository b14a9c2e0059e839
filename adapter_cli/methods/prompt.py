"""Prompt tuning (Lester et al. 2021), configured as AdapterHub's ``PromptTuningConfig`` (``adapters`` 1.3.0)
so that its ``adapter_config.json`` maps onto this class key for key.

A prompt-tuning adapter changes no weight and adds no sub-layer: it learns ``prompt_length`` vectors as wide as
the embeddings' output (ELECTRA's ``embedding_size``) and puts them before the embedded input
(``combine: prefix``), or after its first token (``prefix_after_bos``); the attention mask gets as many "attend"
entries at the prompt's positions. Sequence outputs then have ``prompt_length`` more positions. Initialisation:
``random_uniform`` draws from U(-random_uniform_scale, random_uniform_scale); ``from_string`` copies the word
embeddings of ``prompt_init_text`` as the base model's tokenizer splits it, repeated or cut to the length.

``random_uniform_scale`` is a class attribute of AdapterHub's config, not a field: its files never record it
and its ``add_adapter`` always draws with 0.5. Here it is a field (written in our format, dropped from
AdapterHub's; it matters only when the adapter is made). The configuration is torch-free; the module lives in
``prompt_layers``, the hooks in ``prompt_sites``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .base import KINDS, MethodConfig

INITS = ("random_uniform", "from_string")
COMBINES = ("prefix", "prefix_after_bos")


@dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    """One prompt-tuning configuration; the defaults are AdapterHub's ``prompt_tuning`` preset."""

    architecture: ClassVar[str] = "prompt_tuning"

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    random_uniform_scale: float = 0.5
    combine: str = "prefix"
    init_weights_seed: int | None = None
    kind: str = "task"  # metadata only, as for the other methods

    @property
    def leave_out(self) -> tuple[int, ...]:  # type: ignore[override]
        """No layer holds anything of a prompt adapter."""
        return ()

    @property
    def variant(self) -> str:
        return "prompt_tuning"

    def replace(self, **changes: Any) -> PromptTuningConfig:
        return PromptTuningConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "adapter config") -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        length = self.prompt_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise bad(f"prompt_length must be a whole number of at least 1, got {length!r}")
        if self.prompt_init not in INITS:
            raise bad(f"prompt_init must be one of {', '.join(INITS)}, got {self.prompt_init!r}")
        text = self.prompt_init_text
        if text is not None and not isinstance(text, str):
            raise bad(f"prompt_init_text must be a string or null, got {text!r}")
        if self.prompt_init == "from_string" and not (text or "").strip():
            raise bad("prompt_init: from_string needs prompt_init_text (the words whose embeddings start the prompt)")
        if self.combine not in COMBINES:
            raise bad(f"combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        scale = self.random_uniform_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise bad(f"random_uniform_scale must be a positive number, got {scale!r}")
        self._check_seed(bad)
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    # ---------------------------------------------------------------- shape
    def weight_shapes(self, hidden_size: int, num_layers: int = 0,
                      embedding_size: int | None = None) -> dict[str, tuple[int, ...]]:
        """The one stored tensor: the prompt, ``prompt_length`` × the embeddings' width."""
        return {"prompt_embedding.weight": (self.prompt_length, embedding_size or hidden_size)}

    def parameter_count(self, hidden_size: int, num_layers: int = 0,
                        embedding_size: int | None = None) -> dict[str, Any]:
        """As AdapterHub counts them: ``prompt_length`` × the embeddings' width (ELECTRA's is narrower)."""
        total = self.prompt_length * (embedding_size or hidden_size)
        placement = {"location": "embeddings", "layers": [], "widths": [self.prompt_length], "parameters": total}
        return {"placements": [placement], "parameters": total, "trainable_parameters": total,
                "bytes_fp32": total * 4, "bytes_fp16": total * 2}
