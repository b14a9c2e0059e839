"""``adapt inspect``: what an adapter, fusion or head directory holds, without loading a model.

Weights are described from their safetensors headers (shapes and dtypes), so no tensor is read and
torch is not imported; only AdapterHub's legacy ``.bin`` pickles need torch.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit_json, handle_errors, human_bytes, print_table
from .app import app


@app.command(
    "inspect",
    epilog="Examples:\n\n  adapt inspect ./adapters/mrpc\n\n  adapt inspect ./fusions/mnli,qqp,rte --json",
)
@handle_errors
def inspect(
    path: Path = typer.Argument(..., help="An adapter, fusion or head directory (adapt or AdapterHub format)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout."),
) -> None:
    """Show an adapter or fusion directory: method, config, base model, parameter count, file size."""
    from ..formats import describe

    result = describe(path)
    if json_out:
        emit_json(result)
        return
    rows = [["kind", result["kind"]], ["name", result["name"]], ["format", result["format"]]]
    if result["kind"] == "adapter":
        rows.append(["method", result["method"]])
        rows += _method_rows(result["config"], result["base_model"].get("encoder_layers") is not None)
        rows += _madx_rows(result)
    if result["kind"] == "fusion":
        rows.append(["adapters", ", ".join(result["adapters"])])
    base = result["base_model"]
    rows.append(["base model", f"{base.get('name_or_path') or '?'} ({base['model_type']}, hidden {base['hidden_size']}"
                 + (f", {base['num_layers']} layers" if base.get("num_layers") else "")
                 + (", gated feed-forward" if base.get("gated_feed_forward") else "") + ")"])
    rows.append(["parameters", f"{result['parameters']:,}"])
    rows.append(["file size", human_bytes(result["bytes"])])
    if result.get("head"):
        head = result["head"]
        rows.append(["head", f"{head['name']}: {head['config']['head_type']} ({head['parameters']:,} parameters)"])
    print_table(["field", "value"], rows)


def _madx_rows(result: dict) -> list[list]:
    """A language adapter's language; a task adapter's language adapter (MAD-X)."""
    rows = [["adapter kind", result.get("adapter_kind") or "task"]]
    if result.get("adapter_kind") == "language":
        rows.append(["language", result.get("language") or "unknown"])
    under = result.get("trained_under")
    if under:
        rows.append(["trained under", f"{under['name']} (language {under['language']}, from {under['source']})"])
    return rows


def _method_rows(cfg: dict, encoder_decoder: bool = False) -> list[list]:
    """Where the adapter sits and how big it is: a bottleneck's placement and width, or the linear layers a
    LoRA-family adapter changes (an encoder-decoder's decoder layers: the cross-attention's too) and its rank."""
    if cfg.get("architecture") == "lora":
        from ..methods import config_from_dict

        config = config_from_dict(cfg)
        cross = config.layer_matrices(encoder_decoder)[len(config.matrices):]
        rows = [["variant", config.variant], ["matrices", ", ".join(config.matrices) + (
            f"; in decoder layers also {', '.join(cross)}" if cross else "")]]
        if config.variant != "ia3":
            rows.append(["rank", config.r])
        return rows + [["alpha", f"{config.alpha:g}"]]
    if cfg.get("architecture") == "union":  # each part's own rows, named by its method
        parts = cfg.get("configs") or []
        rows = [["union of", ", ".join(p.get("architecture") or "bottleneck" for p in parts)]]
        for part in parts:
            method = part.get("architecture") or "bottleneck"
            rows += [[f"{method}: {label}", value] for label, value in _method_rows({**part, "architecture": method})]
        return rows
    if cfg.get("architecture") == "prefix_tuning":
        made = "flat (keys and values stored)" if cfg.get("flat") else \
            f"MLP {cfg.get('bottleneck_size')} wide, {cfg.get('non_linearity')} (`adapt extract --flat` drops it)"
        rows = [["prefix length", cfg.get("prefix_length")], ["made by", made]]
        return rows + ([["gated", "one gate per layer" + ("" if cfg.get("shared_gating") else " each for keys, values")]]
                       if cfg.get("use_gating") else [])
    if cfg.get("architecture") == "prompt_tuning":
        init = cfg.get("prompt_init")
        if init == "from_string":
            init = f"{init} {cfg.get('prompt_init_text')!r}"
        return [["prompt length", cfg.get("prompt_length")], ["combine", cfg.get("combine")], ["init", init]]
    if cfg.get("architecture") == "reft":
        from ..methods import config_from_dict

        config = config_from_dict(cfg)
        return [["variant", config.variant], ["layers", config.layers if config.layers == "all" else
                                              ", ".join(map(str, config.layers))],
                ["positions", f"first {config.prefix_positions}, last {config.suffix_positions}"], ["rank", config.r]]
    rows = [["placement", ", ".join(loc for loc in ("mh_adapter", "cross_adapter", "output_adapter") if cfg.get(loc))],
            ["reduction factor" if cfg.get("reduction_factor") else "bottleneck size",
             cfg.get("reduction_factor") or cfg.get("bottleneck_size")],
            ["non-linearity", cfg.get("non_linearity")]]
    if cfg.get("phm_layer"):  # Compacter: the PHM projections' size and what all layers share
        shared = [what for what, key in (("rule", "shared_phm_rule"), ("W", "shared_W_phm")) if cfg.get(key)]
        rows.append(["PHM layers", f"phm_dim {cfg.get('phm_dim')}, shared by all layers: "
                                   f"{', '.join(shared) or 'none'}"])
    return rows
