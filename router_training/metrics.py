"""Classification metrics in plain numpy: accuracy, per-category P/R/F1, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def classification_report(
    y_true: NDArray[Any], y_pred: NDArray[Any], labels: Sequence[str]
) -> dict[str, Any]:
    """``accuracy``, ``n``, ``macro_f1``, ``per_category`` (precision, recall, f1, support)
    and ``confusion`` (rows: true, columns: predicted, in ``labels`` order)."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true), np.asarray(y_pred)), 1)
    per: dict[str, dict[str, float]] = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
        if support:
            f1s.append(f1)
    n = int(confusion.sum())
    return {
        "accuracy": round(float(np.trace(confusion)) / n, 4) if n else 0.0,
        "n": n,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "per_category": per,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of durations, in milliseconds."""
    return round(float(np.percentile(np.asarray(seconds) * 1000.0, q)), 2) if seconds else 0.0
