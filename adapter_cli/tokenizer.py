"""The tokenizer that goes with a base model, checked before it can silently turn every word into [UNK]."""

from __future__ import annotations

from typing import Any

from .errors import UsageError

# A tokenizer with fewer entries than this share of the embedding matrix is not the model's own: transformers
# 5 builds a handful-of-tokens tokenizer for a directory without tokenizer files, which maps every word to
# [UNK] (different texts, identical scores). Real tokenizers are at least this close to their embedding
# matrix even where the matrix is padded to a multiple of 64 or 128.
_MIN_VOCAB_SHARE = 0.5


def load_tokenizer(path: str, vocab_size: int | None, label: str) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, refused with one line when it is missing or degenerate."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"no tokenizer for {label}: {str(exc).splitlines()[0][:160]}") from None
    size = len(tokenizer)
    if vocab_size and size < _MIN_VOCAB_SHARE * vocab_size:
        raise UsageError(f"the tokenizer of {label} has {size} tokens but the model's embedding matrix has "
                         f"{vocab_size}: its tokenizer files are missing or wrong; copy the base model's tokenizer "
                         f"files (tokenizer.json, tokenizer_config.json, vocab files) into {path}")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoders (GPT-2, Llama) ship no padding token; batches pad with end-of-sequence, which the attention
        # mask hides, as transformers' own pipelines do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_preprocessor(path: str, model: Any, label: str) -> Any:
    """What turns the model's inputs into tensors: a vision model's image processor (images.py), else its
    tokenizer."""
    if model.arch.vision:
        from .images import load_image_processor

        return load_image_processor(path, model.config)
    return load_tokenizer(path, model.vocab_size, label)
