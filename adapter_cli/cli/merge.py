"""``adapt merge``: fold a LoRA-family adapter into its base model's weights and save a plain transformers model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ._common import emit_json, handle_errors, info
from .app import app


@app.command(
    "merge",
    epilog=(
        "Examples:\n\n"
        "  adapt train --task mrpc --config lora --data-dir glue/MRPC && adapt merge mrpc-lora-s42 -m minilm "
        "--out ./mrpc-merged\n\n"
        "  adapt add lora init_weights=bert --model minilm --save ./my-lora && adapt merge ./my-lora -m minilm "
        "--out ./minilm-lora --json"
    ),
)
@handle_errors
def merge(
    adapter: str = typer.Argument(..., help="A LoRA-family adapter (lora, ia3, dora, vera): a cache name (see adapt "
                                  "cache ls) or an adapter directory (ours or AdapterHub's)."),
    model: str = typer.Option(..., "--model", "-m", help="The base model the adapter was made for: directory or "
                              "Hub id; 'minilm' is the embedded all-MiniLM-L6-v2."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the merged model to (new or empty)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it holds an earlier model."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout."),
) -> None:
    """Fold a LoRA-family adapter into the base model's weights and save the result as a plain transformers
    model (config.json, model.safetensors and the base model's tokenizer files).

    It loads with transformers.AutoModel.from_pretrained(OUT), computes what the base model with the adapter
    computes, and costs nothing extra at inference. The adapter's prediction head is not part of it: use
    `adapt infer -m OUT --head ADAPTER_DIR`. Bottleneck adapters and gated LoRA cannot be merged.
    """
    _check_out(out, overwrite)
    directory, config = _mergeable(adapter, model)
    result = _merge(adapter, directory, model, out)
    result.update(method=config.architecture, variant=config.variant, rank=None if config.variant == "ia3"
                  else config.r, matrices=list(config.matrices))
    if json_out:
        emit_json(result)
        return
    print(f"merged {adapter} ({config.variant}, {result['linear_layers']} linear layers) into {result['base_model']}"
          f" -> {out}")
    if result["head"] is not None:
        print(f"next: adapt infer -m {out} --head {result['head']} 'some text'")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that is a file, or a directory with content and no --overwrite."""
    from ..errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it, or choose another "
                         "directory")


def _mergeable(adapter: str, model: str) -> tuple[Path, Any]:
    """The adapter's directory (``adapter`` resolved as `adapt infer -a` does) and its config, refused with one
    line before any model is loaded unless it can be merged."""

    from ..defaults import model_id, resolve_model
    from ..formats import read_adapter
    from ..merging import check_mergeable
    from ..resolve import locate

    directory = locate(adapter, model_id(resolve_model(model)), "adapter")
    config = read_adapter(directory, shapes_only=True).config
    check_mergeable(adapter, config)
    return directory, config


def _merge(adapter: str, directory: Path, model: str, out: Path) -> dict[str, Any]:
    """Load the base model and the adapter, fold it in, and write the model (and tokenizer) to ``out`` whole."""
    from ..defaults import resolve_model
    from ..errors import UsageError
    from ..formats import has_head
    from ..fsutil import atomic_directory
    from ..model import AdapterModel
    from ..tokenizer import load_preprocessor
    from ._common import quiet_libraries

    quiet_libraries()
    path = resolve_model(model)
    info(f"loading {model} ...")
    m = AdapterModel.from_pretrained(path)
    name = m.load_adapter(directory, with_head=False)
    m.merge_adapter(name)
    try:
        tokenizer = load_preprocessor(path, m, model)  # a vision model's image processor
    except UsageError as exc:  # a base model without tokenizer files: the merged one has none either
        print(f"warning: {exc}; the merged model is written without a tokenizer", file=sys.stderr)
        tokenizer = None
    from ..defaults import forget_base_identity

    forget_base_identity(m.base.config)  # merged weights are not the MT-A base's any more
    with atomic_directory(out, overwrite=True) as tmp:
        m.base.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
    config = m.adapters[name].config
    return {"merged": adapter, "out": str(out), "base_model": m.name_or_path,
            "linear_layers": sum(len(layers) for _, layers in config.placed(m.num_layers, m.encoder_layers)),
            "tokenizer": tokenizer is not None,
            "head": str(directory) if has_head(directory) else None, "files": files}
