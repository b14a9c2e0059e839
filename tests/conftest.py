"""Shared test helpers: tiny random models built from configs, and the location of ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ADAPT_SHARED", ROOT.parent / "shared"))
FIXTURES = ROOT / "tests" / "fixtures"


def tiny_config(model_type: str = "bert", **overrides):
    """A small random encoder of the given type (hidden 32, 2 layers)."""
    from transformers import AutoConfig

    common = dict(vocab_size=100, max_position_embeddings=64)
    if model_type == "distilbert":
        kw = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    else:
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  type_vocab_size=2, **common)
        if model_type == "electra":
            kw["embedding_size"] = 16
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str = "bert", seed: int = 0, **overrides):
    from adapter_cli import AdapterModel

    torch.manual_seed(seed)
    return AdapterModel.from_config(tiny_config(model_type, **overrides)).eval()


def tiny_inputs(batch: int = 3, length: int = 7, vocab: int = 100, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 2:] = 0
    return ids, mask


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (CI has it; user machines do not)")
    return SHARED
