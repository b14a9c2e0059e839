"""Tokens a training epoch computes, padding included, with and without `group_by_length` (counted, not timed).

    python bench/padding.py [GLUE_DIR] [--batch-size 32] [--max-length 128]

GLUE_DIR holds the original GLUE folders (default: ../shared/data/glue, or $ADAPT_SHARED/data/glue); each
task's training split is tokenised with the embedded MiniLM's tokenizer and batched as `adapt train` batches it
(seed 42, epoch 0).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

TASKS = {"sst2": "SST-2", "cola": "CoLA", "rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B"}


def main() -> None:
    shared = Path(os.environ.get("ADAPT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glue", nargs="?", type=Path, default=shared / "data" / "glue")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from adapter_cli.defaults import resolve_model
    from adapter_cli.tasks import get_task
    from adapter_cli.tokenizer import load_tokenizer
    from adapter_cli.training.data import encode, epoch_batches, lengths_of, load_examples

    tokenizer = load_tokenizer(resolve_model("minilm"), None, "minilm")
    print("| task | examples | real tokens | computed, plain | computed, grouped | grouped / plain |\n"
          "|---|---|---|---|---|---|")
    for name, folder in TASKS.items():
        if not (args.glue / folder).is_dir():
            continue
        task = get_task(name)
        train, _, _ = load_examples(task, str(args.glue / folder), 42, None, 10)
        lengths = lengths_of(encode(task, train, tokenizer, args.max_length))
        real = sum(lengths)
        plain, grouped = (sum(len(b) * max(lengths[i] for i in b)
                              for b in epoch_batches(len(lengths), args.batch_size, 42, 0, lengths=by))
                          for by in (None, lengths))
        print(f"| {name} | {len(lengths)} | {real} | {plain} ({plain / real:.2f}x) | {grouped} ({grouped / real:.2f}x) "
              f"| {grouped / plain:.2f} |")


if __name__ == "__main__":
    main()
