"""``compare``: every routing strategy of a catalog on the same labelled set, in one table.

Each virtual model is routed exactly as the gateway routes it (its router and options from
the catalog), one ``route()`` call per example, through :func:`router_training.evaluate.evaluate`:
accuracy, macro-F1, English and non-English accuracy, latency, and where its requests went.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_training.data import Example, read_jsonl


def compare(
    catalog: Any, models: Sequence[str], examples: Sequence[Example]
) -> list[dict[str, Any]]:
    """One row per virtual model (see the module doc)."""
    from coe_router.errors import ConfigError
    from coe_router.routing.base import build_router
    from router_training.evaluate import evaluate
    from router_training.taxonomy import CATEGORIES

    rows = []
    for name in models:
        spec = catalog.virtual_model(name)
        if spec is None:
            raise ConfigError(f"the catalog has no virtual model {name!r}")
        report = evaluate(build_router(spec, catalog), examples, labels=CATEGORIES, progress=False)
        lang = report["per_language"]
        rows.append(
            {
                "model": name,
                "strategy": spec.router,
                "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"],
                "accuracy_en": lang.get("en", {}).get("accuracy"),
                "accuracy_non_en": lang.get("non-en", {}).get("accuracy"),
                "p50_ms": report["latency_ms"]["p50"],
                "p99_ms": report["latency_ms"]["p99"],
                "experts": report["experts"],
                "n": report["n"],
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a text table."""

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = (
        f"{'model':<14} {'strategy':<9} {'accuracy':>8} {'macroF1':>7} {'en':>6} {'non-en':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7}  experts"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shares = ", ".join(f"{e} {n}" for e, n in r["experts"].items())
        lines.append(
            f"{r['model']:<14} {r['strategy']:<9} {num(r['accuracy']):>8} "
            f"{num(r['macro_f1']):>7} {num(r['accuracy_en']):>6} {num(r['accuracy_non_en']):>6} "
            f"{r['p50_ms']:>7} {r['p99_ms']:>7}  {shares}"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``compare`` command."""
    p.add_argument("data", type=Path, nargs="+", help="labelled JSONL")
    p.add_argument("--catalog", type=Path, help="catalog YAML (default: COE_CATALOG)")
    p.add_argument("--models", help="comma-separated virtual models (default: every one)")
    p.add_argument("--json", action="store_true", help="last stdout line: the rows as JSON")


def cmd_compare(a: argparse.Namespace) -> int:
    """``compare``: see the module doc."""
    from coe_router.catalog import load_catalog
    from coe_router.config import Settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    examples = [e for path in a.data for e in read_jsonl(path)[0]]
    catalog = load_catalog(a.catalog or Settings().catalog)
    if a.models:
        models = [m.strip() for m in a.models.split(",") if m.strip()]
    else:
        models = [v.name for v in catalog.virtual_models]
    print(f"comparing {len(models)} virtual models on {len(examples)} examples", file=sys.stderr)
    rows = compare(catalog, models, examples)
    print(format_table(rows))
    if a.json:
        print(json.dumps(rows, separators=(",", ":")))
    return 0
