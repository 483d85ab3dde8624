"""Evaluating a router the way the gateway runs it: one ``route()`` call per request.

Accuracy and per-category precision/recall/F1 compare the decision's ``category`` with
the label; latency is measured around each ``route()`` call (p50/p99). With expert
quality (per-example ``scores`` or category-level profiles) it also gives the CoE view:
quality and cost of the routed system against every single expert and the oracle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from coe_router.catalog import Catalog
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import ExpertProfiles
from coe_router.routing.base import Router, RoutingDecision
from router_training.data import Example
from router_training.metrics import classification_report, percentile_ms


def messages_of(example: Example) -> list[ChatMessage]:
    """The conversation of an example: its ``messages`` if it had them, else one user turn."""
    raw = example.extra.get("messages")
    if isinstance(raw, list):
        return [ChatMessage.model_validate(m) for m in raw]
    return [ChatMessage(role="user", content=example.prompt)]


async def route_all(
    router: Router, examples: Sequence[Example], progress: bool = True
) -> tuple[list[RoutingDecision], list[float]]:
    """Each example routed once, in order; returns decisions and seconds per call."""
    decisions, seconds = [], []
    for ex in tqdm(examples, desc="routing", unit="req", disable=not progress):
        messages = messages_of(ex)
        start = time.perf_counter()
        decisions.append(await router.route(messages))
        seconds.append(time.perf_counter() - start)
    return decisions, seconds


def evaluate(
    router: Router,
    examples: Sequence[Example],
    *,
    labels: Sequence[str] | None = None,
    catalog: Catalog | None = None,
    profiles: ExpertProfiles | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The metrics of ``router`` on ``examples`` (see module doc)."""
    decisions, seconds = asyncio.run(route_all(router, examples, progress))
    predicted = [d.category or "general" for d in decisions]
    names = list(labels or sorted({e.category for e in examples} | set(predicted)))
    index = {c: i for i, c in enumerate(names)}
    for c in [*predicted, *(e.category for e in examples)]:
        if c not in index:
            index[c] = len(names)
            names.append(c)
    report = classification_report(
        np.array([index[e.category] for e in examples]),
        np.array([index[p] for p in predicted]),
        names,
    )
    report["latency_ms"] = {"p50": percentile_ms(seconds, 50), "p99": percentile_ms(seconds, 99)}
    report["experts"] = dict(sorted(_count(d.expert for d in decisions).items()))
    report["strategy"] = decisions[0].strategy if decisions else None
    per_source: dict[str, list[bool]] = {}
    for ex, p in zip(examples, predicted, strict=True):
        per_source.setdefault(ex.source or "-", []).append(p == ex.category)
    if len(per_source) > 1:
        report["per_source_accuracy"] = {
            s: round(float(np.mean(v)), 4) for s, v in sorted(per_source.items())
        }
    report["per_language"] = per_language(examples, predicted)
    if catalog is not None:
        table = quality_cost(examples, decisions, catalog, profiles)
        if table:
            report["quality_vs_cost"] = table
    return report


def per_language(examples: Sequence[Example], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy per detected language (``extra["lang"]`` when given): English, every
    language with at least 10 examples, the rest pooled as ``other``, and all non-English
    together as ``non-en``."""
    from coe_router.routing.language import language

    hits: dict[str, list[bool]] = {}
    for ex, p in zip(examples, predicted, strict=True):
        lang = str(ex.extra.get("lang") or language(ex.prompt))
        hits.setdefault(lang, []).append(p == ex.category)
    out: dict[str, Any] = {}
    other: list[bool] = []
    for lang, v in sorted(hits.items(), key=lambda kv: -len(kv[1])):
        if lang == "en" or len(v) >= 10:
            out[lang] = {"n": len(v), "accuracy": round(float(np.mean(v)), 4)}
        else:
            other += v
    if other:
        out["other"] = {"n": len(other), "accuracy": round(float(np.mean(other)), 4)}
    foreign = [h for lang, v in hits.items() if lang != "en" for h in v]
    if foreign:
        out["non-en"] = {"n": len(foreign), "accuracy": round(float(np.mean(foreign)), 4)}
    return out


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def quality_cost(
    examples: Sequence[Example],
    decisions: Sequence[RoutingDecision],
    catalog: Catalog,
    profiles: ExpertProfiles | None,
) -> list[dict[str, Any]]:
    """Rows (system, quality, cost): routed, each single expert, and the oracle.

    Quality of an expert on an example is the example's ``scores[expert]`` when given,
    else the profiled score of the expert on the example's category. Examples with no
    quality for some expert are left out of the table (and counted in ``n``). ``cost`` is
    the catalog's cost per request; with profiles that measured it, ``seconds`` is the
    mean measured seconds per request of the experts picked.
    """
    experts = [e.name for e in catalog.experts]
    cost = {e.name: e.cost for e in catalog.experts}
    seconds = profiles.seconds if profiles is not None else {}
    rows_q: list[dict[str, float]] = []
    routed: list[str] = []
    for ex, d in zip(examples, decisions, strict=True):
        q: dict[str, float] = {}
        for e in experts:
            if e in ex.scores:
                q[e] = ex.scores[e]
            elif profiles is not None and ex.category in profiles.categories.get(e, {}):
                q[e] = profiles.categories[e][ex.category]
        if len(q) == len(experts):
            rows_q.append(q)
            routed.append(d.expert)
    if not rows_q:
        return []
    n = len(rows_q)

    def row(name: str, picks: list[str]) -> dict[str, Any]:
        quality = sum(q[p] for q, p in zip(rows_q, picks, strict=True)) / n
        out: dict[str, Any] = {
            "system": name,
            "quality": round(quality, 4),
            "cost": round(sum(cost[p] for p in picks) / n, 4),
            "n": n,
        }
        if all(e in seconds for e in experts):
            out["seconds"] = round(sum(seconds[p] for p in picks) / n, 3)
        return out

    table = [row("routed", routed)]
    table += [row(e, [e] * n) for e in experts]
    # The oracle: the best expert for each example, the cheapest among ties.
    oracle = [max(experts, key=lambda e, q=q: (q[e], -cost[e])) for q in rows_q]  # type: ignore[misc]
    table.append(row("oracle", oracle))
    return table


def dominating(table: Sequence[dict[str, Any]], system: str = "routed") -> list[str]:
    """The single experts of a quality-vs-cost table that are at least as good and at
    least as cheap as ``system``, and strictly better on one of the two (empty: ``system``
    is on the frontier against every single expert). Checked on ``cost`` and, where the
    rows have it, on measured ``seconds``."""
    rows = {r["system"]: r for r in table}
    if system not in rows:
        return []
    me = rows[system]
    keys = ["cost"] + (["seconds"] if "seconds" in me else [])
    out = []
    for name, r in rows.items():
        if name == system or name == "oracle" or name.startswith("routed"):
            continue
        for key in keys:
            no_worse = r["quality"] >= me["quality"] and r[key] <= me[key]
            if no_worse and (r["quality"] > me["quality"] or r[key] < me[key]):
                out.append(f"{name} ({key})")
    return out


def print_report(r: dict[str, Any]) -> None:
    """The report as the ``evaluate`` command prints it."""
    print(
        f"n={r['n']}  accuracy={r['accuracy']:.3f}  macro-F1={r['macro_f1']:.3f}  "
        f"routing latency p50={r['latency_ms']['p50']} ms p99={r['latency_ms']['p99']} ms"
    )
    print(f"{'category':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for c, m in r["per_category"].items():
        if m["support"] or m["precision"]:
            print(
                f"{c:<12} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                f"{m['support']:>8}"
            )
    for source, acc in r.get("per_source_accuracy", {}).items():
        print(f"  source {source:<14} accuracy {acc:.3f}")
    for lang, m in r.get("per_language", {}).items():
        print(f"  language {lang:<12} accuracy {m['accuracy']:.3f} (n={m['n']})")
    if r.get("quality_vs_cost"):
        print(f"{'system':<16} {'quality':>8} {'cost':>6} {'s/request':>10}")
        for row in r["quality_vs_cost"]:
            secs = f"{row['seconds']:>10.2f}" if "seconds" in row else f"{'-':>10}"
            print(f"{row['system']:<16} {row['quality']:>8.3f} {row['cost']:>6.2f} {secs}")
        worse = r.get("dominated_by") or []
        print(
            "routed is dominated by: " + ", ".join(worse)
            if worse
            else "no single expert is at least as good and at least as cheap as routed"
        )
