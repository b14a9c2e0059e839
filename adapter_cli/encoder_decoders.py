"""What an encoder-decoder (BART, mBART, T5, mT5) reads besides its inputs, as transformers and AdapterHub make
it: the decoder's inputs shifted right after its start token, the position its classification heads read, and
the token its generation puts first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def shift_right(ids: torch.Tensor, config: Any, starts_with_last_token: bool = False) -> torch.Tensor:
    """``ids`` one position later, after the decoder's start token: ``decoder_start_token_id`` (BART, T5), or
    each row's last token before its padding, its language code (mBART, ``starts_with_last_token``); -100 (no
    label) read as padding."""
    pad, start = config.pad_token_id, config.decoder_start_token_id
    ids = ids.masked_fill(ids == -100, pad)
    shifted = ids.new_full(ids.shape, pad)
    shifted[:, 1:] = ids[:, :-1]
    if starts_with_last_token:
        last = (ids != pad).sum(-1, keepdim=True) - 1
        shifted[:, 0] = ids.gather(1, last.clamp(min=0)).squeeze(1)
    else:
        shifted[:, 0] = start if start is not None else config.eos_token_id
    return shifted


def last_eos(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """Per row, the position of its last end-of-sequence token (what classification heads read, in the
    decoder's states); -1 in a row without one."""
    if eos_token_id is None:
        return torch.full(input_ids.shape[:1], -1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return torch.where(input_ids == eos_token_id, positions, -1).amax(-1)


def forced_first_token(config: Any, source: str | None) -> int | None:
    """The token generation puts first after the start token (BART's <s>, mBART-50's target language).
    transformers 5 keeps it in the generation config only, which a bare model does not load: it is read from
    the model directory's generation_config.json (or config.json) where the config lacks it."""
    found = getattr(config, "forced_bos_token_id", None)
    if found is None and source and Path(source).is_dir():
        for name in ("generation_config.json", "config.json"):
            try:
                found = json.loads((Path(source) / name).read_text()).get("forced_bos_token_id")
            except (OSError, ValueError, AttributeError):
                found = None
            if found is not None:
                break
    return found if isinstance(found, int) and not isinstance(found, bool) else None
