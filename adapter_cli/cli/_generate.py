"""``adapt infer --generate``: continue texts with a decoder's causal-LM head, adapters active."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import info

# What --generate cannot be combined with, and why (one line each).
_NOT_WITH_GENERATE = {
    "--pair": "generation continues one text per row",
    "--pair-column": "generation continues one text per row",
    "--route-column": "per-row adapters are not supported with --generate yet; run one composition per call",
    "--label-column": "generated text has no labels to score",
    "--task": "generation continues given texts; score a task without --generate",
    "--metrics": "generated text has no metrics",
    "--allow-single": "generation continues single texts anyway",
    "--compile": "--generate runs eagerly",
}


def refuse_options(given: dict[str, Any]) -> None:
    from ..errors import UsageError

    for flag, value in given.items():
        if value:
            raise UsageError(f"--generate cannot be combined with {flag}: {_NOT_WITH_GENERATE[flag]}")


def run(loaded: tuple, rows: list[str], sampling: Any, batch_size: int, max_length: int, where: Any,
        autocast: Any, output: Path | None, write: Any) -> list[dict]:
    """Continue every row with ``loaded`` (model, tokenizer, composition, head from cli.infer._load); print
    the records, or ``write`` them to ``output``."""
    import json

    import torch

    from ..composition import shown
    from ..generation import generate_texts
    from ._progress import batch_progress

    m, tokenizer, composition, head_name = loaded
    if autocast is not None:
        m.cast_frozen_linears(autocast)
    m.to(where).eval()
    records: list[dict] = []
    with batch_progress(-(-len(rows) // batch_size), "generate") as advance, \
            torch.autocast(where.type, dtype=autocast, enabled=autocast is not None):
        for record in generate_texts(m, tokenizer, rows, composition, head_name, sampling, batch_size, max_length):
            if composition is not None and "members" not in record:
                record["active"] = shown(composition)
            records.append(record)
            if len(records) % batch_size == 0:
                advance(1)
    if output is None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        write(output, records)
        info(f"wrote {len(records)} continuations to {output}")
    return records
