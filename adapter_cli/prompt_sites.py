"""Stitching prompt-tuning adapters into a transformers model: a forward hook on the embeddings module puts the
prompt before the embedded input, and a forward pre-hook on the base model gives the attention the mask that
goes with the longer sequence (where the prompt goes is AdapterHub's ``PromptTuningLayer``; the mask is not its
``prefix_attention_mask``, see below).

* Which adapter: AdapterHub runs the prompt of the *first* adapter of the active composition, when that is a
  prompt-tuning adapter, and ignores prompt adapters anywhere else. So a prompt adapter runs alone or first in a
  stack (``stack(prompt, lora)``: the other members run at their own sites, on the longer sequence). Every other
  place (later in a stack, in fuse/average/parallel/batch_split, two prompt adapters at once) is refused in one
  line before any forward pass (``check_composition``); so are ``parallel``/``batch_split`` after a prompt and a
  prefix-tuning adapter beside one (not implemented together here).
* The mask: a forward pre-hook on the base model gives it the 2-D attention_mask [B, T] with ``prompt_length``
  ones at the prompt's positions (``extend_mask``: in front for ``prefix``, after the first token for
  ``prefix_after_bos``), and transformers builds the attention's mask from that, as for any input of that length.
  So every token attends to the prompt, the prompt attends to every real token and nothing attends to padding,
  under eager and SDPA attention alike (flash attention is refused: not checked), and a row computes what it
  computes alone. AdapterHub instead prepends
  "attend" entries to the mask each attention layer gets, in front whatever ``combine`` says; under its default
  (SDPA, transformers 4.57) mask [B, 1, query, key] for BERT, RoBERTa, XLM-RoBERTa and DistilBERT they go along
  the query axis too (the first ``prompt_length`` queries attend to padding), DistilBERT's with the value 1 in an
  additive mask (+1 on the first ``prompt_length`` keys' scores, only in a batch with padding); ELECTRA's eager
  [B, 1, 1, key] mask is right except for ``prefix_after_bos`` with left padding (the mask then sits one token
  off). Those are reference bugs adapt does not copy (docs/numerics.md); a batch without padding computes as
  the reference.
* Token-level labels (the masked-LM head) get ``prompt_length`` ignored positions at the prompt's positions
  (``pad_labels``), so each label stays on its token; AdapterHub pads them in front also for
  ``prefix_after_bos``, which moves the first token's label onto the last prompt vector. A classification head
  reads position 0, as the reference's does.

Hooks are bound methods, so ``copy.deepcopy(model)`` works; a model holding an inactive prompt adapter computes
as plain transformers (both hooks return None, leaving every input and output untouched).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Callable

import torch
from torch import nn

from .composition import BatchSplit, Block, Parallel, one_first_in_stack
from .errors import CompositionError, UsageError

IGNORE_INDEX = -100


def _blocks(node: Any) -> list[Block]:
    if not isinstance(node, Block):
        return []
    return [node] + [b for child in node.children for b in _blocks(child)]


def check_composition(block: Block, prompts: Collection[str], prefixes: Collection[str] = ()) -> None:
    """Refuse (one line) a composition that places a prompt adapter where AdapterHub would not run it, or
    combines it with what is not implemented with it here."""
    name = one_first_in_stack(block, prompts, "prompt-tuning", "AdapterHub ignores it anywhere else")
    if name is None:
        return
    split = next((b for b in _blocks(block) if isinstance(b, (Parallel, BatchSplit))), None)
    if split is not None:
        raise CompositionError(f"composition {block}: {split.kind}(...) after prompt-tuning adapter {name!r} is "
                               "not supported (the prompt lengthens every row); run the members one by one")
    beside = [n for n in block.leaves() if n in prefixes]
    if beside:
        raise CompositionError(f"composition {block}: prompt-tuning adapter {name!r} with prefix-tuning adapter "
                               f"{beside[0]!r} is not supported; run them separately")


def insert_prompt(rows: torch.Tensor, prompt_length: int, combine: str, value: float | int) -> torch.Tensor:
    """``rows`` [B, T, ...] with ``prompt_length`` entries of ``value`` where the prompt goes: in front
    (``prefix``) or after the first position (``prefix_after_bos``), as ``PromptAdapterSet.forward`` places it."""
    fill = rows.new_full((rows.shape[0], prompt_length, *rows.shape[2:]), value)
    if combine == "prefix":
        return torch.cat([fill, rows], dim=1)
    return torch.cat([rows[:, :1], fill, rows[:, 1:]], dim=1)


def remove_prompt(rows: torch.Tensor, prompt_length: int, combine: str) -> torch.Tensor:
    """``rows`` [B, P+T, ...] without the ``prompt_length`` positions :func:`insert_prompt` put in."""
    if combine == "prefix":
        return rows[:, prompt_length:]
    return torch.cat([rows[:, :1], rows[:, 1 + prompt_length:]], dim=1)


def extend_mask(mask: torch.Tensor, prompt_length: int, combine: str) -> torch.Tensor:
    """The 2-D mask [B, P+T] for the longer sequence, from the one [B, T] given to the base model: the prompt's
    positions attend and are attended, padding stays padding (see the module docstring)."""
    if mask.dim() != 2:
        raise UsageError(f"a prompt-tuning adapter reads the attention_mask [batch, tokens], got shape "
                         f"{tuple(mask.shape)}")
    return insert_prompt(mask, prompt_length, combine, 1)


def string_words(path: str | None, embeddings: nn.Embedding) -> Callable[[str, int], torch.Tensor]:
    """``prompt_init: from_string``: the word embeddings of the text as the base model's tokenizer splits it
    (special tokens included), repeated or cut to the prompt length, as AdapterHub initialises it."""

    def words(text: str, length: int) -> torch.Tensor:
        from .tokenizer import load_tokenizer

        if not isinstance(embeddings, nn.Embedding):  # a vision model's patch embeddings: no words
            raise UsageError("prompt_init: from_string starts the prompt from a text's word embeddings, which a "
                             "vision model has none of; use prompt_init: random_uniform")
        if not path:
            raise UsageError("prompt_init: from_string needs the base model's tokenizer, and this model was not "
                             "loaded from a model directory or Hub id; load it with from_pretrained or use "
                             "prompt_init: random_uniform")
        tokenizer = load_tokenizer(path, embeddings.num_embeddings, f"base model {path!r}")
        ids = list(tokenizer(text)["input_ids"])
        if not ids:
            raise UsageError(f"prompt_init_text {text!r} gives no tokens")
        ids = (ids * math.ceil(length / len(ids)))[:length]
        with torch.no_grad():
            return embeddings(torch.tensor(ids, dtype=torch.long, device=embeddings.weight.device))

    return words


class PromptSites:
    """The loaded prompt adapters by name, the hook on the embeddings' output and the pre-hook on the base
    model (both made when the first prompt adapter comes)."""

    def __init__(self, base: nn.Module, embeddings_path: str, context: Any) -> None:
        self.base, self.embeddings_path, self.context = base, embeddings_path, context
        self.prompts: dict[str, nn.Module] = {}
        self._handles: list[Any] = []

    def add(self, name: str, module: nn.Module) -> None:
        if not self._handles:
            embeddings = self.base.get_submodule(self.embeddings_path)
            self._handles = [embeddings.register_forward_hook(self._after_embeddings),
                             self.base.register_forward_pre_hook(self._extend_mask, with_kwargs=True)]
        self.prompts[name] = module

    def remove(self, name: str) -> None:
        self.prompts.pop(name, None)

    def check(self, block: Block, prefixes: Collection[str] = ()) -> None:
        check_composition(block, frozenset(self.prompts), prefixes)

    def strip(self, states: torch.Tensor, setup: Block | None) -> torch.Tensor:
        """Hidden states [B, P+T, H] back to one row per input token [B, T, H] when a prompt ran, so that a
        tagging head answers for the tokens it was given."""
        prompt = self.active(setup)
        return states if prompt is None else remove_prompt(states, prompt.prompt_length, prompt.config.combine)

    def active(self, setup: Block | None) -> nn.Module | None:
        """The prompt adapter that runs under ``setup`` (the first adapter, if it is one), or None."""
        if setup is None or not self.prompts:
            return None
        return self.prompts.get(setup.leaves()[0])

    def _after_embeddings(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        prompt = self.active(self.context.setup)
        return None if prompt is None else prompt(output)

    def _extend_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompt = self.active(self.context.setup)
        positional = len(args) > 1
        mask = args[1] if positional else kwargs.get("attention_mask")
        if prompt is None or mask is None:
            return None
        implementation = str(getattr(self.base.config, "_attn_implementation", "") or "")
        if "flash" in implementation:
            raise UsageError(f"a prompt-tuning adapter is not checked with the {implementation} attention "
                             "implementation; load the model with sdpa or eager attention")
        extended = extend_mask(mask, prompt.prompt_length, prompt.config.combine)
        if positional:
            return (args[0], extended, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": extended}

    def pad_labels(self, labels: torch.Tensor | None, setup: Block | None) -> torch.Tensor | None:
        """Token labels [B, T] with ``prompt_length`` ignored positions where the prompt sits when one runs, so
        that each label stays on its token (AdapterHub pads them in front whatever ``combine`` says)."""
        prompt = self.active(setup)
        if prompt is None or labels is None or labels.dim() != 2:
            return labels
        return insert_prompt(labels, prompt.prompt_length, prompt.config.combine, IGNORE_INDEX)
