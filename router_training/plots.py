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
    """Each system (routed, single experts, oracle) as a point: cost vs quality; a second
    panel against measured seconds per request when the rows have them."""
    plt = _pyplot()
    axes_keys = [("cost", "mean cost per request (catalog)")]
    if all("seconds" in row for row in table):
        axes_keys.append(("seconds", "mean seconds per request (measured)"))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5 * len(axes_keys), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_keys, strict=True):
        # Routed with other cost weights: a dashed trade-off line, labelled by weight only.
        sweep = sorted((r for r in table if str(r["system"]).startswith("routed w=")),
                       key=lambda r: r[key])  # fmt: skip
        if sweep:
            ax.plot([r[key] for r in sweep], [r["quality"] for r in sweep], "--", color="grey",
                    marker=".", lw=0.8)  # fmt: skip
            for r in sweep:
                ax.annotate(str(r["system"]).removeprefix("routed "), (r[key], r["quality"]),
                            textcoords="offset points", xytext=(3, -10), fontsize=6,
                            color="grey")  # fmt: skip
        for row in table:
            name = str(row["system"])
            if name.startswith("routed w="):
                continue
            marker = "*" if name == "routed" else "D" if name == "oracle" else "o"
            ax.scatter(row[key], row["quality"], marker=marker, s=120 if marker == "*" else 50)
            ax.annotate(
                name, (row[key], row["quality"]), textcoords="offset points", xytext=(5, 5),
                fontsize=8,
            )  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("mean quality")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
