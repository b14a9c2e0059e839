"""Text generation from a decoder with a causal-LM head and any composition of adapters active.

The prompt runs once through the model and fills the key/value cache; each new token then runs alone
against that cache, so a step costs one token's forward pass. Adapters act on each position by itself, so
the cached steps give what a full recomputation would (tested against AdapterHub's ``generate``). The
exceptions, a gated adapter (a prefix, a bottleneck adapter or a LoRA with ``use_gating``: UniPELT's three),
whose gate averages over the whole sequence, and a ReFT adapter, whose positions count from each row's end,
recompute the whole sequence at every step instead (an encoder-decoder its decoder's). Prompts of
different lengths are padded on the left and their positions count from their first real token, as
transformers' own ``generate`` does.

Choosing the next token: greedy (``temperature`` 0) or sampling from the softmax at ``temperature``, kept to
the smallest set of tokens whose probabilities reach ``top_p`` (nucleus sampling, Holtzman et al. 2020),
from a seeded generator so a run can be repeated. A row stops at the end-of-sequence token, at a stop string
(the caller decodes and checks: ``stopped``), or after ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .errors import UsageError

MAX_NEW_TOKENS = 100_000


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UsageError(f"max_new_tokens must be from 1 to {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 100:
            raise UsageError(f"temperature must be from 0 (greedy) to 100, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise UsageError("a stop string must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generated:
    tokens: list[list[int]]  # per row, the new tokens (a stop string's tokens kept; the caller cuts the text)
    finish: list[str]  # per row: "eos", "stop" or "length"
    scores: list[torch.Tensor] = field(default_factory=list)  # per step, the logits [rows, vocab] it chose from


def choose_lm_head(model: Any, head: str | None, composition: Any, purpose: str = "generation") -> str:
    """The causal-LM head for ``purpose``: ``head`` if given, else the head named like the composition (an
    adapter saved with a causal-LM head of its own), else the model's own LM head (lm_head.py), never another
    adapter's head; or one line saying why there is none."""
    if not (model.arch.causal or model.arch.encoder_decoder):
        raise UsageError(f"{purpose} needs a decoder (GPT-2, Llama, Mistral, Qwen2) or an encoder-decoder (BART, "
                         f"mBART, T5, mT5); {model.config.model_type} models are encoders")
    wanted = "seq2seq_lm" if model.arch.encoder_decoder else "causal_lm"
    name = head
    if name is None:
        try:
            name = model.head_for(composition, required=True)
        except UsageError:  # no head is named like it: an adapter trained on an lm task saves none
            name = None
    if name is None:
        from .lm_head import attach_own_head

        return attach_own_head(model)
    kind = model.heads[name].config.head_type
    if kind != wanted:
        hint = "score texts with it instead of generating" if purpose == "generation" else "score it on its task"
        raise UsageError(f"head {name!r} is a {kind} head; {purpose} needs a {wanted} head: {hint}, or load an "
                         "adapter trained on an lm task")
    return name


def _generators(sampling: Sampling, keys: list[tuple[int, int]]) -> list[torch.Generator] | None:
    """One generator per row, seeded by (seed, prompt, member): a prompt's sample does not depend on the batch
    it runs in, and two copies of a prompt get samples of their own."""
    if sampling.greedy:
        return None
    import hashlib

    def seed(key: tuple[int, int]) -> int:
        digest = hashlib.sha256(f"{sampling.seed}:{key[0]}:{key[1]}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

    return [torch.Generator().manual_seed(seed(key)) for key in keys]


def _choose(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator] | None) -> torch.Tensor:
    if generators is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # the mass of the tokens ranked above each one
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    probs = probs.cpu()
    picked = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)]
    return torch.cat(picked).to(logits.device)


@torch.no_grad()
def generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, composition: Any,
             head: str | list[str], sampling: Sampling, eos_token_id: int | None, pad_token_id: int,
             stopped: Callable[[int, list[int]], bool] | None = None, keep_scores: bool = False,
             first_prompt: int = 0) -> Generated:
    """Continue each left-padded prompt row; see the module docstring. Under ``parallel(a, b, ...)`` every
    prompt is continued once per member, in one batch (AdapterHub's parallel inference): ``head`` then names
    one head per member, and the rows of the result are member by member (all prompts under ``a``, then
    all under ``b`` ...). ``first_prompt``: the index of the first row among all prompts, which seeds each
    row's sampling (``_generators``)."""
    from .composition import BatchSplit, Parallel

    rows = input_ids.shape[0]
    block = model.resolve_composition(composition)
    heads = [head] if isinstance(head, str) else list(head)
    prompts = rows
    if isinstance(block, Parallel):  # one copy of the batch per member, as a batch split (model._parallel)
        copies = len(block.children)
        input_ids, attention_mask = input_ids.repeat(copies, 1), attention_mask.repeat(copies, 1)
        block = BatchSplit(block.children, sizes=(rows,) * copies)
        rows *= copies
    if len(heads) * (rows // len(heads)) != rows:
        raise UsageError(f"{len(heads)} heads for {rows} rows")
    parts = [(model.heads[name], i * (rows // len(heads)), rows // len(heads)) for i, name in enumerate(heads)]
    generators = _generators(sampling, [(first_prompt + row % prompts, row // prompts) for row in range(rows)])
    steps = (_EncoderDecoderSteps if model.arch.encoder_decoder else _DecoderSteps)(model, block, input_ids,
                                                                                   attention_mask)
    inverse = model.head_inverse(block)  # an invertible adapter's reverse pass before the LM heads' output
    out = steps.first()
    result = Generated(tokens=[[] for _ in range(rows)], finish=["length"] * rows)
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    for step in range(sampling.max_new_tokens):
        last = model.lm_input(out.last_hidden_state[:, -1:]) if model.arch.encoder_decoder \
            else out.last_hidden_state[:, -1:]
        logits = torch.cat([module.logits(last[start:start + size], inverse)[:, -1] for module, start, size in parts])
        if keep_scores:
            result.scores.append(logits.float().cpu())
        chosen = torch.where(done, torch.full_like(done, pad_token_id, dtype=torch.long),
                             _choose(logits, sampling, generators))
        _record(result, chosen.tolist(), done, eos_token_id, stopped)
        if bool(done.all()) or step == sampling.max_new_tokens - 1:
            break
        out = steps.next(chosen, done)
    return result


class _DecoderSteps:
    """A decoder's forward passes: the prompt, then each new token against the cache (or, where the cache
    would not answer exactly, the whole sequence again), with positions counted from each row's first token."""

    def __init__(self, model: Any, block: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model, self.block, self.input_ids = model, block, input_ids
        self.mask = attention_mask.to(input_ids.device).long()
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cached = model.caches_exactly(block)
        self.cache: Any = None

    def first(self) -> Any:
        out = self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                         active=self.block, head=None, use_cache=self.cached)
        self.cache = out.cache
        return out

    def next(self, chosen: torch.Tensor, done: torch.Tensor) -> Any:
        self.mask = torch.cat([self.mask, (~done).long()[:, None]], dim=-1)
        if self.cached:
            self.positions = self.positions[:, -1:] + 1
            out = self.model(input_ids=chosen[:, None], attention_mask=self.mask, position_ids=self.positions,
                             active=self.block, head=None, use_cache=True, cache=self.cache)
            self.cache = out.cache
            return out
        self.input_ids = torch.cat([self.input_ids, chosen[:, None]], dim=-1)
        self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=-1)
        return self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                          active=self.block, head=None)


class _EncoderDecoderSteps:
    """An encoder-decoder's: the encoder reads the input once, with the decoder's start token (and the token the
    config forces first, ``forced_bos_token_id``: BART's <s>, mBART-50's target language, which is not counted
    as new); each new token then runs through the decoder alone, against the encoder's output and the decoder's
    cache (or, where the cache would not answer exactly, the decoder reads its whole sequence again)."""

    def __init__(self, model: Any, block: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model, self.block, self.input_ids = model, block, input_ids
        self.mask = attention_mask.to(input_ids.device).long()
        start = model.config.decoder_start_token_id
        starts = [model.config.eos_token_id if start is None else start]
        if model.forced_bos_token_id is not None:
            starts.append(model.forced_bos_token_id)
        self.decoded = torch.tensor([starts] * input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        self.cached = model.caches_exactly(block)
        self.encoded: Any = None
        self.cache: Any = None

    def first(self) -> Any:
        out = self.model(input_ids=self.input_ids, attention_mask=self.mask, decoder_input_ids=self.decoded,
                         active=self.block, head=None, use_cache=self.cached)
        from transformers.modeling_outputs import BaseModelOutput

        self.encoded, self.cache = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state), out.cache
        return out

    def next(self, chosen: torch.Tensor, _done: torch.Tensor) -> Any:
        self.decoded = torch.cat([self.decoded, chosen[:, None]], dim=-1)
        if not self.cached:
            return self.model(input_ids=None, attention_mask=self.mask, encoder_outputs=self.encoded,
                              decoder_input_ids=self.decoded, active=self.block, head=None)
        out = self.model(input_ids=None, attention_mask=self.mask, encoder_outputs=self.encoded,
                         decoder_input_ids=chosen[:, None], active=self.block, head=None, use_cache=True,
                         cache=self.cache)
        self.cache = out.cache
        return out


def _record(result: Generated, chosen: list[int], done: torch.Tensor, eos_token_id: int | None,
            stopped: Callable[[int, list[int]], bool] | None) -> None:
    """Append each unfinished row's token and mark the rows that end with it."""
    for row, token in enumerate(chosen):
        if done[row]:
            continue
        result.tokens[row].append(token)
        if eos_token_id is not None and token == eos_token_id:
            result.finish[row], done[row] = "eos", True
        elif stopped is not None and stopped(row, result.tokens[row]):
            result.finish[row], done[row] = "stop", True


def generate_texts(model: Any, tokenizer: Any, prompts: list[str], composition: Any, head: str | None,
                   sampling: Sampling, batch_size: int, max_length: int) -> Iterator[dict[str, Any]]:
    """Each prompt's continuation as one JSON-ready record, batch by batch (prompts padded and cut on the
    left: the end of a long prompt is what the next token depends on). Under ``parallel(...)`` a record
    holds one continuation per member (``members``)."""
    from .composition import BatchSplit, Parallel, shown

    block = model.resolve_composition(composition)
    if isinstance(block, BatchSplit):  # its sizes fix the rows of each batch; the prompts do not come so
        raise UsageError(f"{block}: generation takes one composition for every prompt, or parallel(...); a batch "
                         "split sends fixed rows through different adapters: generate each part on its own")
    members = [str(shown(c)) for c in block.children] if isinstance(block, Parallel) else None
    heads: str | list[str] = [choose_lm_head(model, head, c) for c in block.children] if members \
        else choose_lm_head(model, head, block)
    limit = model.max_positions
    if model.arch.encoder_decoder:  # the input and the new tokens each have the positions to themselves: the
        # decoder reads its start token and all new tokens but the last
        if limit is not None and sampling.max_new_tokens > limit:
            raise UsageError(f"max_new_tokens {sampling.max_new_tokens} is more than the {limit} positions this "
                             "model's decoder takes")
        max_length, limit = model.fit_max_length(max_length), None
    elif limit is not None and sampling.max_new_tokens >= limit:
        raise UsageError(f"max_new_tokens {sampling.max_new_tokens} leaves no room for a prompt in the {limit} "
                         "positions this model takes")
    device = next(model.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    # A decoder continues the end of its prompt; an encoder-decoder's encoder reads its input from the first
    # position (absolute positions: padding on the left would move them) and its decoder starts afresh.
    tokenizer.padding_side = tokenizer.truncation_side = "right" if model.arch.encoder_decoder else "left"

    def stopped(_row: int, tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return _cut_at_stop(text, sampling.stop) != text

    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            cut = _prompt_cuts(tokenizer, chunk, start, max_length, sampling.max_new_tokens, limit)
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            _start_empty_rows(enc, tokenizer)
            _check_reft_prompts(model, block, enc["attention_mask"], start)
            out = generate(model, enc["input_ids"].to(device), enc["attention_mask"].to(device), block, heads,
                           sampling, tokenizer.eos_token_id, tokenizer.pad_token_id or 0,
                           stopped if sampling.stop else None, first_prompt=start)
            answers = [{"generated": _cut_at_stop(tokenizer.decode(t, skip_special_tokens=True), sampling.stop),
                        "finish": f, "new_tokens": len(t)} for t, f in zip(out.tokens, out.finish)]
            for i, answer in enumerate(answers):  # say how much of a long prompt was left out
                if cut[i % len(chunk)]:
                    answer["prompt_tokens_cut"] = cut[i % len(chunk)]
            for j, prompt in enumerate(chunk):
                if members is None:
                    yield {"text": prompt, **answers[j], "head": heads}
                else:
                    yield {"text": prompt, "members": {m: {**answers[i * len(chunk) + j], "head": heads[i]}
                                                       for i, m in enumerate(members)}}
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides


def _prompt_cuts(tokenizer: Any, chunk: list[str], start: int, max_length: int, max_new_tokens: int,
                 limit: int | None) -> list[int]:
    """Per prompt, how many tokens cutting it to ``max_length`` leaves out (from its start; an encoder-decoder's
    from its end); refused in one line when what is kept and the new tokens do not fit the model's positions."""
    lengths = [len(ids) for ids in tokenizer(chunk, truncation=False)["input_ids"]]
    for i, n in enumerate(lengths):
        kept = min(n, max_length)
        if limit is not None and kept + max_new_tokens > limit:
            raise UsageError(f"prompt {start + i + 1} keeps {kept} tokens, and with max_new_tokens {max_new_tokens} "
                             f"that is more than the {limit} positions this model takes; lower max_new_tokens or "
                             f"max_length")
    return [max(0, n - max_length) for n in lengths]


def _check_reft_prompts(model: Any, block: Any, mask: torch.Tensor, start: int) -> None:
    """A ReFT adapter edits each prompt's first and last tokens: a prompt shorter than either is one line that
    names it (counted from 1 across batches, as the other prompt errors), before any step."""
    running = model.running_reft(block)
    if running is None:
        return
    first, config = running
    lengths = mask.sum(-1).tolist()
    short = [i for i, n in enumerate(lengths) if n < max(config.prefix_positions, config.suffix_positions)]
    if short:
        i = short[0]
        raise UsageError(f"prompt {start + i + 1} has {lengths[i]} tokens, but ReFT adapter {first!r} edits the "
                         f"first {config.prefix_positions} and the last {config.suffix_positions} tokens of each "
                         "prompt; give a longer prompt or lower prefix_positions/suffix_positions")


def _start_empty_rows(enc: Any, tokenizer: Any) -> None:
    """An empty prompt, which a tokenizer without a start token (GPT-2's) leaves with no token at all, starts
    from the beginning-of-sequence token (GPT-2's unconditional generation), or is refused in one line."""
    empty = (enc["attention_mask"].sum(-1) == 0).nonzero().flatten().tolist()
    if not empty:
        return
    if enc["input_ids"].shape[1] == 0:  # every prompt of the batch is empty: make room for the start token
        rows = enc["input_ids"].shape[0]
        enc["input_ids"] = enc["input_ids"].new_full((rows, 1), tokenizer.pad_token_id or 0)
        enc["attention_mask"] = enc["attention_mask"].new_zeros((rows, 1))
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UsageError("an empty prompt gives this model no token to continue from, and its tokenizer has no "
                         "start token; give each prompt some text")
    at = 0 if tokenizer.padding_side == "right" else -1  # the row's first (and only) token, by the padding side
    for row in empty:
        enc["input_ids"][row, at], enc["attention_mask"][row, at] = start, 1


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to (not including) the first stop string in it."""
    ends = [text.find(s) for s in stops if s in text]
    return text[:min(ends)] if ends else text
