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
        rows += _method_rows(result["config"])
    if result["kind"] == "fusion":
        rows.append(["adapters", ", ".join(result["adapters"])])
    base = result["base_model"]
    rows.append(["base model", f"{base.get('name_or_path') or '?'} ({base['model_type']}, hidden {base['hidden_size']}"
                 + (f", {base['num_layers']} layers" if base.get("num_layers") else "") + ")"])
    rows.append(["parameters", f"{result['parameters']:,}"])
    rows.append(["file size", human_bytes(result["bytes"])])
    if result.get("head"):
        head = result["head"]
        rows.append(["head", f"{head['name']}: {head['config']['head_type']} ({head['parameters']:,} parameters)"])
    print_table(["field", "value"], rows)


def _method_rows(cfg: dict) -> list[list]:
    """Where the adapter sits and how big it is: a bottleneck's placement and width, or the linear layers a
    LoRA-family adapter changes and its rank."""
    if cfg.get("architecture") == "lora":
        from ..methods import config_from_dict

        config = config_from_dict(cfg)
        rows = [["variant", config.variant], ["matrices", ", ".join(config.matrices)]]
        if config.variant != "ia3":
            rows.append(["rank", config.r])
        return rows + [["alpha", f"{config.alpha:g}"]]
    return [["placement", ", ".join(loc for loc in ("mh_adapter", "output_adapter") if cfg.get(loc))],
            ["reduction factor" if cfg.get("reduction_factor") else "bottleneck size",
             cfg.get("reduction_factor") or cfg.get("bottleneck_size")],
            ["non-linearity", cfg.get("non_linearity")]]
