"""A decoder's own language-model head as a ``causal_lm`` head: the output layer the model was pretrained
with, so that a decoder with adapters generates text without a head trained from scratch.

It is one linear layer without bias over the final hidden states (GPT-2's and Llama's ``lm_head``). Where the
model ties it to the input word embeddings (GPT-2, most small models) it is those embeddings, which the base
model already holds. Where it does not (Llama 2/3 and Mistral checkpoints), its weight is read from the
checkpoint's ``lm_head.weight``, which ``AutoModel`` leaves out because the base model has no head.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UsageError
from .head_config import HeadConfig

OWN_HEAD = "lm"  # the name the model's own head is added under
_WEIGHT = "lm_head.weight"


def own_head_config(vocab_size: int, hidden_size: int, head_type: str = "causal_lm") -> HeadConfig:
    return HeadConfig(head_type=head_type, num_labels=2, layers=1, activation_function=None, bias=False,
                      vocab_size=vocab_size, embedding_size=hidden_size)


def own_decoder_weight(source: str, revision: str | None = None) -> torch.Tensor | None:
    """``lm_head.weight`` from the checkpoint at ``source`` (a directory or a Hub id transformers has cached
    or may fetch); None when the checkpoint holds none (a base model saved without its head)."""
    import json

    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        return cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)

    index = find("model.safetensors.index.json")
    if index is not None:
        with open(index, encoding="utf-8") as f:
            shard = json.load(f).get("weight_map", {}).get(_WEIGHT)
        return _read(find(shard), _WEIGHT) if shard else None
    single = find("model.safetensors")
    if single is not None:
        return _read(single, _WEIGHT)
    legacy = find("pytorch_model.bin")
    if legacy is not None:
        state = torch.load(legacy, map_location="cpu", weights_only=True)  # never unpickles code
        return state.get(_WEIGHT)
    return None


def _read(path: str | None, key: str) -> torch.Tensor | None:
    if path is None:
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.get_tensor(key) if key in f.keys() else None


def missing_head_message(label: str, kind: str = "causal_lm") -> str:
    full = "causal-LM" if kind == "causal_lm" else "conditional-generation"
    return (f"{label} has no language-model head of its own: it does not tie one to its word embeddings and its "
            f"checkpoint holds no {_WEIGHT} (a base model saved without its head); load the full {full} "
            f"checkpoint, or give a {kind} head (`head`)")


def attach_own_head(model: Any, name: str = OWN_HEAD, kind: str | None = None) -> str:
    """Add the model's own LM head to ``model`` (an AdapterModel of a decoder: a causal_lm head; of an
    encoder-decoder: a seq2seq_lm head) under ``name``; ``kind``, when given, must be the one the model has."""
    if not (model.arch.causal or model.arch.encoder_decoder):
        raise UsageError(f"{model.config.model_type} models are encoders and have no causal language-model head")
    own = "seq2seq_lm" if model.arch.encoder_decoder else "causal_lm"
    if kind is not None and kind != own:
        raise UsageError(f"a {model.arch.name} model's own language-model head is a {own} head, not {kind}; "
                         f"ask for {own}")
    config = own_head_config(model.vocab_size, model.hidden_size, own)
    weight = None
    if not model.ties_lm_head(config):
        weight = own_decoder_weight(model.source, model.revision) if model.source else None
        if weight is None or tuple(weight.shape) != (model.vocab_size, model.hidden_size):
            raise UsageError(missing_head_message(model.name_or_path or "this model", config.head_type))
    head = model.add_head(name, overwrite=True, **{k: v for k, v in config.to_dict().items() if v is not None})
    if weight is not None:
        with torch.no_grad():
            decoder = list(model.heads[head].children())[-1]
            decoder.weight.copy_(weight.to(decoder.weight.dtype))
    return head
