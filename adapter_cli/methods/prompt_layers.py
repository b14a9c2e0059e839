"""The prompt-tuning module (torch): the learned prompt of one adapter and how it joins the embedded input.

The numerics are AdapterHub's (``adapters`` 1.3.0, ``methods/prompt_tuning.py``): the prompt is tiled over the
batch and concatenated before the embedded input (``prefix``) or after its first token (``prefix_after_bos``).
Where it runs, and the attention mask that goes with it, is ``prompt_sites``' business.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .prompt import PromptTuningConfig

# (prompt_init_text, prompt_length) -> the word embeddings [prompt_length, width] that start a from_string prompt
Words = Callable[[str, int], torch.Tensor]


class PromptAdapterSet(nn.Module):
    """One prompt-tuning adapter: ``prompt_embedding.weight`` [prompt_length, embedding width] (AdapterHub's
    name below ``prompt_tuning.prompt_tunings.<name>``)."""

    def __init__(self, config: PromptTuningConfig, embedding_size: int, words: Words | None = None) -> None:
        super().__init__()
        self.config = config
        seed = config.init_weights_seed
        # As AdapterHub: the embedding is made (drawing its default normal init from the global generator),
        # then, with a seed, the generator is reseeded (``fix_seed``: a seed of 0 reseeds nothing) and the
        # prompt drawn. We fork the generator state for a seeded draw, leaving the caller's alone.
        with torch.random.fork_rng(devices=[], enabled=bool(seed)):
            self.prompt_embedding = nn.Embedding(config.prompt_length, embedding_size)
            if seed:
                torch.manual_seed(seed)
            if config.prompt_init == "random_uniform":
                scale = float(config.random_uniform_scale)
                nn.init.uniform_(self.prompt_embedding.weight, a=-scale, b=scale)
        if config.prompt_init == "from_string" and words is not None:  # a loaded adapter brings its weights
            rows = words(str(config.prompt_init_text), config.prompt_length)
            self.prompt_embedding.weight = nn.Parameter(rows.detach().clone().to(torch.float32))

    def sites(self) -> list:
        """No layer holds anything of a prompt adapter (it runs on the embeddings' output)."""
        return []

    @property
    def prompt_length(self) -> int:
        return self.config.prompt_length

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        """``embedded`` [B, T, E] -> [B, prompt_length + T, E]."""
        prompt = self.prompt_embedding.weight.to(embedded.dtype)
        prompt = prompt.unsqueeze(0).expand(embedded.shape[0], -1, -1)
        if self.config.combine == "prefix":
            return torch.cat([prompt, embedded], dim=1)
        return torch.cat([embedded[:, :1], prompt, embedded[:, 1:]], dim=1)
