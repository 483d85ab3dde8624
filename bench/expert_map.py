"""Does the profiled expert map buy quality per cost on prompts it was NOT derived from?

`evaluate --profiles` scores the routed system on the profiling set itself: the category
-> expert map (and the retriever's pilots) were derived from the same examples, so that
table is in-sample. This script cross-fits: the examples are split in ``--folds`` by a
hash of the prompt; for each fold, profiles (per-category and per-skill means) and pilots
are derived from the other folds only, and the fold is routed with them. Peers in the same run: each
single expert, the oracle, and the in-sample routed numbers.

    python bench/expert_map.py docs/profiles/scores.jsonl [--folds 2] [--json]

Reads the per-example ``scores`` written by ``python -m router_training profile``; no
expert runs. Prints a table; with ``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coe_router.catalog import load_catalog  # noqa: E402
from coe_router.routing.artifact import RouterArtifact  # noqa: E402
from coe_router.routing.base import ROUTER_CLS, RoutingDecision  # noqa: E402
from coe_router.routing.encoder import describe_encoder  # noqa: E402
from router_training.data import Example, read_jsonl  # noqa: E402
from router_training.embed import embed_all  # noqa: E402
from router_training.evaluate import dominating, quality_cost, route_all  # noqa: E402
from router_training.profile import pilots  # noqa: E402


def fold_of(prompt: str, folds: int) -> int:
    """A stable fold per prompt."""
    return int(hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8], 16) % folds


def measured_profiles(examples: list[Example]) -> dict[str, Any]:
    """profiles.json's shape from per-example scores: mean score and count per expert, for
    each category and each skill."""
    sums: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: {"categories": defaultdict(list), "skills": defaultdict(list)}
    )
    for ex in examples:
        for expert, s in ex.scores.items():
            sums[expert]["categories"][ex.category].append(s)
            for skill in ex.skills:
                sums[expert]["skills"][skill].append(s)
    return {
        "experts": {
            e: {
                block: {k: {"score": float(np.mean(v)), "n": len(v)} for k, v in got.items()}
                for block, got in blocks.items()
            }
            for e, blocks in sums.items()
        }
    }


def route(strategy: str, options: dict[str, Any], catalog: Any, rows: list[Example]) -> Any:
    router = ROUTER_CLS[strategy](catalog, options)
    return asyncio.run(route_all(router, rows, progress=False))[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", type=Path)
    p.add_argument("--catalog", type=Path, default=ROOT / "deploy" / "local.yaml")
    p.add_argument("--artifact", type=Path, default=ROOT / "deploy" / "routers" / "default")
    p.add_argument("--cost-weight", type=float, default=0.05)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from coe_router.routing import category, retriever, skill  # noqa: F401  (registers them)

    examples, _ = read_jsonl(a.scores)
    catalog = load_catalog(a.catalog)
    art = RouterArtifact.load(a.artifact)
    encoder, _ = describe_encoder(str(art.encoder["spec"]), str(art.encoder["long_text"]))
    x = embed_all(encoder, [e.prompt for e in examples])
    fold = [fold_of(e.prompt, a.folds) for e in examples]
    held: dict[str, list[RoutingDecision | None]] = {
        "category": [None] * len(examples),
        "retriever": [None] * len(examples),
        "skill": [None] * len(examples),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.folds):
            train = [i for i, f in enumerate(fold) if f != k]
            test = [i for i, f in enumerate(fold) if f == k]
            prof = Path(tmp) / f"profiles{k}.json"
            prof.write_text(json.dumps(measured_profiles([examples[i] for i in train])))
            pil = Path(tmp) / f"pilots{k}.npz"
            np.savez(pil, **pilots(x[train], [examples[i].scores for i in train]))
            base = {"artifact": str(a.artifact)}
            rows = [examples[i] for i in test]
            for strategy, extra in (
                ("category", {"profiles": str(prof), "cost_weight": a.cost_weight}),
                ("retriever", {"pilots": str(pil)}),
                ("skill", {"profiles": str(prof), "cost_weight": a.cost_weight}),
            ):
                for i, d in zip(
                    test, route(strategy, {**base, **extra}, catalog, rows), strict=True
                ):
                    held[strategy][i] = d
        full = Path(tmp) / "profiles.json"
        full.write_text(json.dumps(measured_profiles(examples)))
        pil = Path(tmp) / "pilots.npz"
        np.savez(pil, **pilots(x, [e.scores for e in examples]))
        base = {"artifact": str(a.artifact)}
        in_sample = {
            "category": route(
                "category",
                {**base, "profiles": str(full), "cost_weight": a.cost_weight},
                catalog,
                examples,
            ),
            "retriever": route("retriever", {**base, "pilots": str(pil)}, catalog, examples),
            "skill": route(
                "skill",
                {**base, "profiles": str(full), "cost_weight": a.cost_weight},
                catalog,
                examples,
            ),
        }
    table: list[dict[str, Any]] = []
    for strategy in ("category", "retriever", "skill"):
        decisions = [d for d in held[strategy] if d is not None]
        got = quality_cost(examples, decisions, catalog, None)
        if not table:
            table = [r for r in got if r["system"] != "routed"]
        cross = {**got[0], "system": f"{strategy}, cross-fitted"}
        inside = {
            **quality_cost(examples, in_sample[strategy], catalog, None)[0],
            "system": f"{strategy}, in-sample",
        }
        table[0:0] = [cross, inside]
    print(f"{'system':<24} {'quality':>8} {'cost':>6}  dominated by")
    result: dict[str, Any] = {"n": len(examples), "folds": a.folds, "cost_weight": a.cost_weight}
    singles = [r for r in table if "," not in r["system"] and r["system"] != "oracle"]
    for r in table:
        # Against the single experts only: the done-when of the expert map.
        worse = dominating([{**r, "system": "routed"}, *singles]) if "," in r["system"] else []
        r["dominated_by"] = worse
        print(
            f"{r['system']:<24} {r['quality']:>8.3f} {r['cost']:>6.2f}  {', '.join(worse) or '-'}"
        )
    result["table"] = table
    if a.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
