"""Which adapters does each fusion layer listen to? Mean AdapterFusion attention per layer and adapter.

For a fusion and a task's evaluation examples, the softmax weights over the member adapters are averaged
over every real (non-padding) token of every example, per layer and placement: the AdapterFusion
paper's Figure 4 / appendix Figure 6. Each row of weights sums to 1.

Layers are numbered from 0 everywhere (CSV, JSON, the table and the heat map), as in ``leave_out`` and
``adapt add``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Activations:
    target: str  # the task the weights were measured on
    fusion: str
    adapters: list[str]
    weights: dict[tuple[str, int], list[float]]  # (placement, layer) -> mean weight per adapter

    def rows(self) -> list[dict[str, Any]]:
        return [{"target": self.target, "fusion": self.fusion, "placement": loc, "layer": layer, "adapter": a,
                 "weight": w} for (loc, layer), ws in sorted(self.weights.items()) for a, w in zip(self.adapters, ws)]


def layer_label(placement: str, layer: int) -> str:
    """A layer as the table and the heat map name it: 0-based, like the CSV, with the attention placement marked."""
    return f"{layer}" + {"mh_adapter": " (attention)", "cross_adapter": " (cross-attention)"}.get(placement, "")


def batches(n_examples: int, batch_size: int) -> int:
    return (n_examples + batch_size - 1) // batch_size


def measure(model: Any, fusion: str, encoded: Any, batch_size: int, pad_id: int, target: str,
            progress: Callable[[int], None] | None = None) -> Activations:
    """Run the fusion over the examples and average its attention over real tokens; ``progress(1)`` is called
    after each batch."""
    from .composition import Fuse
    from .training.data import collate

    members = model.fusions[fusion].adapters
    layers = model.fusions[fusion].sites()
    sums = {(loc, i): torch.zeros(len(members), dtype=torch.float64) for loc, i, _ in layers}
    tokens = 0
    for _, _, layer in layers:
        layer.keep_attention = True
    active = Fuse(tuple(members), name=fusion if fusion != ",".join(members) else None)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = collate(encoded, list(range(start, min(start + batch_size, len(encoded)))), pad_id, False)
                for _, _, layer in layers:
                    layer.last_attention = None
                model(**{k: v for k, v in batch.items() if k != "labels"}, active=active, head=None)
                ran = [(loc, i, layer.last_attention) for loc, i, layer in layers
                       if layer.last_attention is not None]  # a layer the members all leave out never runs
                if "attention_mask" in batch:
                    mask = batch["attention_mask"].bool()
                elif ran:  # an image has no padding: every patch (and [CLS]) counts
                    mask = torch.ones(ran[0][2].shape[:2], dtype=torch.bool)
                tokens += int(mask.sum()) if ran or "attention_mask" in batch else 0
                for loc, i, attention in ran:
                    sums[(loc, i)] += attention[mask.to(attention.device)].double().sum(0).cpu()
                if progress is not None:
                    progress(1)
    finally:
        for _, _, layer in layers:
            layer.keep_attention = False
            layer.last_attention = None
    weights = {key: (s / tokens).tolist() for key, s in sums.items() if float(s.sum()) > 0}
    return Activations(target=target, fusion=fusion, adapters=list(members), weights=weights)


def plot(results: list[Activations], path: Path) -> None:
    """The paper's grid: one panel per layer; rows are target tasks, columns adapters; values annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapters = list(dict.fromkeys(a for r in results for a in r.adapters))
    keys = sorted({k for r in results for k in r.weights}, key=lambda k: (k[1], k[0]))
    cols = min(len(keys), 6)
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 + 0.45 * len(adapters) * cols + 1.5,
                                                  0.45 * len(results) * rows + 1.3 * rows + 0.6),
                             squeeze=False, layout="constrained")
    targets = [r.target for r in results]
    labels = [r.target if targets.count(r.target) == 1 else f"{r.target} ({r.fusion})" for r in results]
    image = None
    for index, (ax, key) in enumerate(zip(axes.flat, keys)):
        grid = [[dict(zip(r.adapters, r.weights.get(key, []))).get(a, float("nan")) for a in adapters]
                for r in results]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        loc, layer = key
        ax.set_title(f"layer {layer_label(loc, layer)}", fontsize=9)
        ax.set_xticks(range(len(adapters)), adapters, rotation=60, fontsize=7)
        ax.set_yticks(range(len(results)), labels if index % cols == 0 else [], fontsize=7)
        for y, row in enumerate(grid):
            for x, value in enumerate(row):
                if value == value:
                    ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if value > 0.6 else "white")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="mean fusion attention")
    fig.suptitle("AdapterFusion activations: rows target task, columns adapters, one panel per layer "
                 "(numbered from 0)", fontsize=10)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
