"""Traffic shares: per-category offsets (and a fallback threshold) so that given shares of
requests go to each expert.

RouteLLM picks one threshold so that a chosen percentage of requests reaches the strong
model. With N experts one threshold is not enough; here each category gets a log-offset
added to its calibrated logit, found by iterative proportional fitting: an expert that
gets too much traffic has the offsets of its categories lowered, and vice versa, until
the shares on a sample of (unlabelled) prompts match the targets. ``fallback_share``
instead sets the confidence threshold so that share goes to the generalist, the
two-expert RouteLLM case exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from coe_router.routing.artifact import Array, softmax


def assign(
    log_proba: Array,
    bias: Array,
    labels: Sequence[str],
    expert_of: Mapping[str, str],
    generalist: str,
    threshold: float,
) -> list[str]:
    """The expert each row goes to, as the category router decides it."""
    proba = softmax(log_proba + bias)
    top = proba.argmax(1)
    conf = proba.max(1)
    return [
        generalist if c < threshold else expert_of[labels[t]]
        for t, c in zip(top, conf, strict=True)
    ]


def shares(experts: Sequence[str], assigned: Sequence[str]) -> dict[str, float]:
    """Fraction of rows per expert."""
    n = max(len(assigned), 1)
    return {e: sum(a == e for a in assigned) / n for e in experts}


def fit_shares(
    log_proba: Array,
    labels: Sequence[str],
    expert_of: Mapping[str, str],
    generalist: str,
    targets: Mapping[str, float],
    threshold: float = 0.0,
    iterations: int = 500,
    tolerance: float = 0.01,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-category offsets that make the experts' shares match ``targets``.

    Returns ``(category -> offset, expert -> achieved share)``. Experts without a target
    keep what they get; targets are normalized to sum to 1 over the experts named.
    """
    experts = sorted(set(expert_of.values()) | {generalist})
    unknown = sorted(set(targets) - set(experts))
    if unknown:
        raise ValueError(f"no category routes to {unknown} (reachable experts: {experts})")
    total = sum(targets.values())
    if total <= 0 or any(v < 0 for v in targets.values()):
        raise ValueError("target shares must be non-negative and sum to more than 0")
    want = {e: v / total for e, v in targets.items()}
    bias = np.zeros(len(labels), dtype=np.float32)
    got = shares(experts, assign(log_proba, bias, labels, expert_of, generalist, threshold))
    for step in range(iterations):
        if all(abs(got[e] - want[e]) <= tolerance for e in want):
            break
        rate = 0.5 if step < iterations // 2 else 0.1  # smaller steps once close
        for i, label in enumerate(labels):
            e = expert_of[label]
            if e in want:
                ratio = (want[e] + 1e-3) / (got[e] + 1e-3)
                bias[i] += rate * float(np.log(ratio))
        got = shares(experts, assign(log_proba, bias, labels, expert_of, generalist, threshold))
    return {label: round(float(b), 4) for label, b in zip(labels, bias, strict=True)}, got


def fallback_threshold(confidence: Array, share: float) -> float:
    """The confidence threshold that sends ``share`` of the rows to the generalist."""
    if not 0.0 <= share <= 1.0:
        raise ValueError("fallback share must be in [0, 1]")
    return round(float(np.quantile(confidence, share)), 4) if share > 0 else 0.0
