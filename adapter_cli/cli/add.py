"""``adapt add``: introduce an adapter into a base model and show what it costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ._common import emit_json, handle_errors, human_bytes, human_count, info, print_table
from .app import app



@app.command(
    "add",
    epilog=(
        "Examples:\n\n"
        "  adapt add pfeiffer --hidden-size 768 --num-layers 12 --json     # cost from the config alone\n\n"
        "  adapt add lora r=16 alpha=32 --hidden-size 768 --num-layers 12   # LoRA: the rank, not a width\n\n"
        "  adapt add ia3 --hidden-size 768 --num-layers 12 --intermediate-size 3072 --json\n\n"
        "  adapt add houlsby reduction_factor=64 --model ./my-bert --save ./adapters/houlsby64\n\n"
        "  adapt add 'pfeiffer[non_linearity=gelu]' -m bert-base-uncased --format adapterhub --save out/"
    ),
)
@handle_errors
def add(
    config: str = typer.Argument("pfeiffer", help="Preset: bottleneck adapters pfeiffer, houlsby, bapna, parallel, "
                                 "compacter, compacter_pp (AdapterHub aliases seq_bn, double_seq_bn, par_bn, compacter++), the LoRA "
                                 "family lora, ia3, dora, vera, ReFT loreft, noreft, direft, prefix_tuning, prefix_tuning_flat, or prompt_tuning; "
                                 "'preset[key=value,...]', or a YAML/JSON file (`adapt recipes ls`)."),
    overrides: list[str] = typer.Argument(None, help="key=value changes to the config, e.g. reduction_factor=8 "
                                          "non_linearity=gelu leave_out=[0,1], or for LoRA r=16 alpha=32 "
                                          "attn_matrices=[q,k,v] intermediate_lora=true", show_default=False),
    model: str = typer.Option(None, "--model", "-m", help="Base model directory or Hub id to introduce the adapter "
                              "into (its parameters are counted and the adapter is built for real); 'minilm' is "
                              "the embedded all-MiniLM-L6-v2."),
    hidden_size: int = typer.Option(None, "--hidden-size", help="Count from the config alone for this hidden size "
                                    "(no model needed; a prefix is counted with one key head per query head: "
                                    "give --model for a grouped-query decoder)."),
    num_layers: int = typer.Option(None, "--num-layers", help="... and this number of layers."),
    intermediate_size: int = typer.Option(None, "--intermediate-size", help="... and this feed-forward width, "
                                          "for LoRA-family adapters on the feed-forward layers (default: 4 x "
                                          "the hidden size)."),
    name: str = typer.Option(None, "--name", "-n", help="Adapter name (default: the preset name)."),
    save: Path = typer.Option(None, "--save", help="Save the initialised adapter to this directory (needs --model)."),
    head: str = typer.Option(None, "--head", help="Also add a head saved with the adapter: classification:N, "
                             "multilabel:N, tagging:N, qa (extractive question answering), regression, "
                             "multiple_choice:N (N labels / choices), causal_lm (a decoder's own LM head), "
                             "seq2seq_lm (an encoder-decoder's: BART, T5, ...) or "
                             "image_classification:N (ViT: AdapterHub's image head, one layer)."),
    fmt: str = typer.Option("adapt", "--format", help="Format for --save: adapt, adapterhub or peft (LoRA, (IA)³ and DoRA)."),
    dtype: str = typer.Option("float32", "--dtype", help="Weight precision for --save: float32, float16, bfloat16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --save directory."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout."),
) -> None:
    """Introduce an adapter into a base model: placement, parameters and size.

    With --model the adapter is built inside the real model; with --hidden-size and --num-layers the
    counts come from the configuration alone. A bottleneck adapter is placed after sub-layers and has a
    width; a LoRA-family adapter (lora, ia3, dora, vera) changes linear layers (q, k, v, intermediate,
    output) and has a rank.
    """
    from ..errors import UsageError
    from ..presets import parse_overrides, resolve_adapter_config

    changes = parse_overrides(overrides or [])
    adapter_config = resolve_adapter_config(config, changes)
    from ..devices import DTYPE_NAMES

    if dtype.lower() not in DTYPE_NAMES:
        raise UsageError(f"unknown --dtype {dtype!r}; use float32, float16 or bfloat16")
    if fmt not in ("adapt", "adapterhub", "peft"):
        raise UsageError(f"unknown --format {fmt!r}; use adapt, adapterhub or peft")
    if fmt == "peft" and head is not None:
        raise UsageError("--format peft has no place for a head (PEFT saves adapters only); drop --head or use "
                         "--format adapt")
    adapter_name = name or _default_name(config)
    from ..composition import check_name

    check_name(adapter_name)
    result: dict[str, Any] = {"name": adapter_name, "method": adapter_config.architecture,
                              "variant": getattr(adapter_config, "variant", adapter_config.architecture),
                              "config": adapter_config.to_dict()}
    if head is not None:
        _head_spec(head)  # validate before loading anything
    if save is not None and save.exists() and not overwrite:
        what = "a file" if not save.is_dir() else "not empty" if any(save.iterdir()) else None
        if what is not None:  # an empty directory holds nothing to lose
            raise UsageError(f"--save {save} exists and is {what}; pass --overwrite to replace it, or choose "
                             "another directory")
    if model is None:
        counts = _count(adapter_config, (hidden_size, num_layers, intermediate_size), head, save, result)
    else:
        if intermediate_size is not None:
            raise UsageError("--intermediate-size is for counts from the config alone; with --model the "
                             "model's own feed-forward width is used")
        counts = _build(model, adapter_name, adapter_config, head, save, fmt, dtype, result)
    result.update(placements=[_placement(adapter_config, p) for p in counts["placements"]],
                  parameters=counts["parameters"],
                  trainable_parameters=counts.get("trainable_parameters", counts["parameters"]),
                  bytes_fp32=counts["bytes_fp32"], bytes_fp16=counts["bytes_fp16"],
                  percent_of_base=(100.0 * counts["parameters"] / result["base_parameters"]
                                   if result["base_parameters"] else None),
                  saved_to=str(save) if save is not None else None)
    if json_out:
        emit_json(result)
        return
    _print(result, counts, config, save)


# What a placement's width is, per method: a bottleneck's width, a rank (LoRA family; ReFT edits rank r after
# each layer), or a number of tokens (prefix tuning's keys and values per layer).
WIDTH = {"lora": "rank", "reft": "rank", "prefix_tuning": "prefix_length", "prompt_tuning": "prompt_length",
         "union": "width"}


def _placement(adapter_config: Any, p: dict[str, Any]) -> dict[str, Any]:
    """One placement as shown: its width (None for (IA)³'s rank, which learns a vector)."""
    width = WIDTH.get(adapter_config.architecture, "bottleneck")
    value = None if getattr(adapter_config, "variant", None) == "ia3" else _width(p["widths"])
    if "method" in p:  # a config union: each part's own width, under one key
        return {"location": p["location"], "method": p["method"], "layers": p["layers"], "width": value,
                "parameters": p["parameters"]}
    return {"location": p["location"], "layers": p["layers"], width: value, "parameters": p["parameters"]}


def _count(adapter_config: Any, shape: tuple[int | None, int | None, int | None], head: str | None,
           save: Path | None, result: dict[str, Any]) -> dict[str, Any]:
    """The counts from the configuration alone: no model, no torch. ``shape``: hidden size, layers and
    feed-forward width (None: 4 x hidden) as given on the command line."""
    from ..errors import UsageError

    hidden_size, num_layers, intermediate_size = shape
    if head is not None:
        raise UsageError("--head needs --model")
    if save is not None:
        raise UsageError("--save needs --model: an adapter is saved for a specific base model")
    if hidden_size is None or num_layers is None:
        raise UsageError("give --model, or both --hidden-size and --num-layers to count from the config alone")
    from ..architectures import MAX_HIDDEN_SIZE, MAX_LAYERS

    inner = intermediate_size if intermediate_size is not None else 4 * hidden_size
    for flag, value, top in (("--hidden-size", hidden_size, MAX_HIDDEN_SIZE), ("--num-layers", num_layers, MAX_LAYERS),
                             ("--intermediate-size", inner, 8 * MAX_HIDDEN_SIZE)):
        if not 1 <= value <= top:
            raise UsageError(f"{flag} must be from 1 to {top}, got {value}")
    result.update(hidden_size=hidden_size, num_layers=num_layers, base_model=None, base_parameters=None)
    if getattr(adapter_config, "cross_adapter", False):  # its layers are the decoder's, which the counts lack
        raise UsageError("a cross-attention adapter sits in an encoder-decoder's decoder layers only: give --model "
                         "to count it")
    if adapter_config.architecture != "lora":
        counts: dict[str, Any] = adapter_config.parameter_count(hidden_size, num_layers)
        return counts
    adapter_config.check_rank(hidden_size)
    result["intermediate_size"] = inner
    counts = adapter_config.parameter_count(hidden_size, num_layers, inner)
    return counts


def _build(model: str, adapter_name: str, adapter_config: Any, head: str | None, save: Path | None, fmt: str,
           dtype: str, result: dict[str, Any]) -> dict[str, Any]:
    """Introduce the adapter into the real model (and save it); the counts, checked against the built modules."""
    from ..defaults import resolve_model
    from ..devices import torch_dtype
    from ..model import AdapterModel
    from ._common import quiet_libraries

    info(f"loading {model} ...")
    quiet_libraries()  # transformers is imported now
    m = AdapterModel.from_pretrained(resolve_model(model))
    m.add_adapter(adapter_name, adapter_config)
    if adapter_config.architecture == "lora":
        inner = m.intermediate_size
        result["intermediate_size"] = inner
        counts: dict[str, Any] = adapter_config.parameter_count(m.hidden_size, m.num_layers, inner, m.linear_shapes,
                                                                m.encoder_layers)
    elif adapter_config.architecture == "bottleneck":  # invertible adapters: as wide as the embeddings
        counts = adapter_config.parameter_count(m.hidden_size, m.num_layers, embedding_size=m.embedding_size,
                                                encoder_layers=m.encoder_layers)
    elif adapter_config.architecture == "prompt_tuning":  # prompts: as wide as the embeddings
        counts = adapter_config.parameter_count(m.hidden_size, m.num_layers, embedding_size=m.embedding_size)
    elif adapter_config.architecture == "union":
        counts = adapter_config.parameter_count(m.hidden_size, m.num_layers, m.intermediate_size, m.linear_shapes,
                                                m.kv_size, m.encoder_layers)
    elif adapter_config.architecture == "prefix_tuning":  # keys narrower than hidden under grouped-query attention
        counts = adapter_config.parameter_count(m.hidden_size, m.num_layers, m.kv_size, m.encoder_layers)
    else:
        counts = adapter_config.parameter_count(m.hidden_size, m.num_layers)
    built = sum(p.numel() for p in m.adapters[adapter_name].parameters())
    assert built == counts["parameters"], (built, counts["parameters"])
    base_params = sum(p.numel() for p in m.base.parameters())
    result.update(hidden_size=m.hidden_size, num_layers=m.num_layers, base_model=m.base_info.to_dict(),
                  base_parameters=base_params)
    if head in ("causal_lm", "seq2seq_lm"):  # the model's own LM head: tied to its embeddings, or its lm_head
        from ..lm_head import attach_own_head

        attach_own_head(m, adapter_name, head)
    elif head is not None:
        m.add_head(adapter_name, **_head_spec(head))
    if save is not None:
        m.save_adapter(save, adapter_name, format=fmt, dtype=torch_dtype(dtype),
                       safetensors=True)
    return counts


def _print(result: dict[str, Any], counts: dict[str, Any], config: str, save: Path | None) -> None:
    lora = result["method"] in ("lora", "reft")  # both have a rank, not a bottleneck width
    width = WIDTH.get(result["method"], "bottleneck")
    rows = [[p["location"], _layers(p["layers"]), "vector" if lora and p["rank"] is None else p[width],
             f"{p['parameters']:,}"] for p in result["placements"]]
    variant = f", {result['variant']}" if lora and result["variant"] != config else ""
    print_table(["matrix" if result["method"] == "lora" else "placement", "layers", width.replace("_", " "),
                 "parameters"], rows,
                title=f"adapter {result['name']!r} ({config}{variant}) for hidden size {result['hidden_size']}, "
                      f"{result['num_layers']} layers")
    size = f" ({human_count(counts['parameters'])})" if counts["parameters"] >= 1e5 else ""
    line = (f"total: {counts['parameters']:,} parameters{size}, "
            f"{human_bytes(counts['bytes_fp32'])} in fp32, {human_bytes(counts['bytes_fp16'])} in fp16")
    if result["percent_of_base"] is not None:
        line += f", {result['percent_of_base']:.2f}% of the base model's {human_count(result['base_parameters'])}"
    frozen = counts["parameters"] - result["trainable_parameters"]
    if frozen:
        what = counts.get("frozen_what", "shared random projections")
        line += f"; {result['trainable_parameters']:,} trained, {frozen:,} frozen ({what})"
    print(line)
    if save is not None:
        print(f"saved to {save}")


def _head_spec(text: str) -> dict[str, Any]:
    from ..errors import UsageError
    from ..head_config import MAX_OUTPUTS

    kind, colon, count = text.partition(":")
    if kind in ("causal_lm", "seq2seq_lm") and not colon:
        return {"head_type": kind}  # built from the model itself (lm_head.attach_own_head)
    if kind == "image_classification":  # AdapterHub's image head: a classification head, one layer by default
        try:
            return {**_head_spec(f"classification{colon}{count}"), "layers": 1}
        except UsageError as exc:
            raise UsageError(str(exc).replace("classification", kind)) from None
    kind = {"multilabel": "multilabel_classification", "qa": "question_answering"}.get(kind, kind)
    if kind not in ("classification", "multilabel_classification", "tagging", "question_answering", "regression",
                    "multiple_choice"):
        raise UsageError(f"unknown head type {kind!r}; use classification:N, multilabel:N, tagging:N, qa, regression, "
                         "multiple_choice:N, causal_lm, seq2seq_lm or (for ViT) image_classification:N")
    if kind in ("regression", "question_answering"):
        if colon:
            raise UsageError(f"--head {text!r}: a {kind} head has fixed outputs and takes no count; use "
                             f"--head {text.partition(':')[0]}")
        if kind == "question_answering":  # start and end per token; AdapterHub's qa head: one layer
            return {"head_type": kind, "num_labels": 2, "layers": 1}
        return {"head_type": kind, "num_labels": 1}
    if kind == "multiple_choice" and not colon:
        raise UsageError("--head multiple_choice needs the number of choices, e.g. multiple_choice:4")
    try:
        n = int(count) if colon else 2
    except ValueError:
        raise UsageError(f"--head {text!r}: the count after ':' must be a whole number, e.g. {kind}:3") from None
    what = "choices" if kind == "multiple_choice" else "labels"
    least = 1 if kind == "multilabel_classification" else 2
    if not least <= n <= MAX_OUTPUTS:
        hint = "; use --head regression for one score" if kind == "classification" and n == 1 else ""
        raise UsageError(f"--head {text!r}: the number of {what} must be from {least} to {MAX_OUTPUTS}, got {n}{hint}")
    if kind == "tagging":
        return {"head_type": kind, "num_labels": n, "layers": 1}  # AdapterHub's tagging head: one linear layer
    if kind != "multiple_choice":
        return {"head_type": kind, "num_labels": n}
    return {"head_type": kind, "num_choices": n, "num_labels": 1}


def _default_name(config: str) -> str:
    import re

    stem = Path(config).stem if ("/" in config or config.endswith((".yaml", ".yml", ".json"))) else config
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem.split("[")[0]) or "adapter"


def _width(widths: list[int]) -> Any:
    return widths[0] if len(set(widths)) == 1 else widths


def _layers(layers: list[int]) -> str:
    if not layers:  # a placement outside the layers: the invertible adapter on the embeddings
        return "embeddings"
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))
