"""PNG plots: the confusion matrix and quality vs cost (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> Path:
    """Row-normalized confusion matrix (rows: true, columns: predicted), with counts."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(confusion, dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def quality_cost_png(table: Sequence[dict[str, Any]], path: Path) -> Path:
    """Each system (routed, single experts, oracle) as a point: cost vs quality."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for row in table:
        marker = {"routed": "*", "oracle": "D"}.get(row["system"], "o")
        ax.scatter(row["cost"], row["quality"], marker=marker, s=120 if marker == "*" else 50)
        ax.annotate(
            row["system"],
            (row["cost"], row["quality"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("mean cost per request")
    ax.set_ylabel("mean quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
