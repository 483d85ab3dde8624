"""``python -m router_training replay``: the gateway's routing-decision log -> evaluation JSONL.

The gateway (``COE_DECISION_LOG__ENABLED=true``) appends one entry per routed request
to a capped Redis stream (``{prefix}log:decisions``; fields in
``coe_router/shared/decision_log.py``). This command reads it, oldest first, and
writes one line per decision in the router_training data format::

    {"category": "code", "prompt": "...", "source": "replay:coe", "expert": "code",
     "confidence": 0.875, "strategy": "keyword", "served_expert": "code",
     "alternatives": [["general", 0.1]], "ts": 1732370000.123, "affinity": "new"}

``category`` is what the logged router decided, not a human label: the set measures
agreement with (and regressions against) the router that served the traffic, on real
traffic. Relabel it (rules, a teacher, review) before using it as ground truth.
Repeated prompts are kept once (the first decision) unless ``--keep-duplicates``.

Usage::

    python -m router_training replay --redis-url redis://redis:6379/0 -o replay.jsonl
    python -m router_training replay --model coe --min-confidence 0.6 --limit 5000 -o -
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from coe_router.config import StateSettings
from coe_router.errors import StateUnavailable
from coe_router.shared.decision_log import LOG_NAME
from coe_router.state import StateStore, connect_redis
from router_training.data import Example

#: Entries fetched per XRANGE call.
_PAGE = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``replay`` options (for a subparser of the router_training CLI)."""
    p.add_argument(
        "--redis-url",
        default=os.environ.get("COE_REDIS_URL"),
        help="Redis the gateways log to (default: $COE_REDIS_URL)",
    )
    p.add_argument(
        "--prefix",
        default=os.environ.get("COE_STATE__PREFIX", StateSettings().prefix),
        help="key prefix of the gateways (default: $COE_STATE__PREFIX or coe:)",
    )
    p.add_argument("-o", "--out", default="-", help="output JSONL file ('-': stdout)")
    p.add_argument("--model", help="only decisions for this virtual model")
    p.add_argument("--min-confidence", type=float, default=0.0, help="drop less confident ones")
    p.add_argument("--since", help="only entries after this stream id (e.g. from a last run)")
    p.add_argument("--limit", type=int, default=0, help="at most this many lines (0: all)")
    p.add_argument(
        "--keep-duplicates", action="store_true", help="keep every decision of a repeated prompt"
    )


def parser() -> argparse.ArgumentParser:
    """The standalone parser (``router_training.replay.main``)."""
    p = argparse.ArgumentParser(
        prog="python -m router_training replay",
        description="Turn the gateway's routing-decision log into an evaluation set (JSONL).",
    )
    add_arguments(p)
    return p


def to_example(fields: dict[str, str]) -> Example | None:
    """One log entry as an evaluation example; None for entries without a category or prompt."""
    prompt, category = fields.get("prompt", ""), fields.get("category", "")
    if not prompt.strip() or not category.strip():
        return None
    try:
        confidence = float(fields.get("confidence", "0"))
        ts = float(fields.get("ts", "0"))
        alternatives: Any = json.loads(fields.get("alternatives") or "[]")
    except ValueError:
        return None
    extra: dict[str, Any] = {
        "expert": fields.get("expert", ""),
        "confidence": confidence,
        "strategy": fields.get("strategy", ""),
        "served_expert": fields.get("served", ""),
        "alternatives": alternatives,
        "ts": ts,
        "affinity": fields.get("affinity", ""),
    }
    return Example(
        prompt=prompt,
        category=category.strip(),
        source=f"replay:{fields.get('model', '')}",
        extra=extra,
    )


async def _entries(store: StateStore, since: str | None) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    after = since
    while True:
        page = await store.read(LOG_NAME, after=after, count=_PAGE)
        out.extend(page)
        if len(page) < _PAGE:
            return out
        after = page[-1][0]


def select(
    entries: Sequence[tuple[str, dict[str, str]]], args: argparse.Namespace
) -> Iterator[Example]:
    """The examples ``args`` asks for, in log order."""
    seen: set[str] = set()
    n = 0
    for _id, fields in entries:
        if args.model and fields.get("model") != args.model:
            continue
        ex = to_example(fields)
        if ex is None or float(ex.extra["confidence"]) < args.min_confidence:
            continue
        if not args.keep_duplicates:
            if ex.prompt in seen:
                continue
            seen.add(ex.prompt)
        yield ex
        n += 1
        if args.limit and n >= args.limit:
            return


def _write(examples: Iterator[Example], out: TextIO) -> int:
    n = 0
    for ex in examples:
        out.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
        n += 1
    return n


async def fetch(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]] | None:
    """The log entries ``args`` points at; None (after saying why) when they cannot be read."""
    if not args.redis_url:
        print("error: give --redis-url or set COE_REDIS_URL", file=sys.stderr)
        return None
    store = connect_redis(args.redis_url, StateSettings(prefix=args.prefix, socket_timeout_s=10))
    try:
        return await _entries(store, args.since)
    except StateUnavailable as exc:
        print(f"error: cannot read the decision log: {exc}", file=sys.stderr)
        return None
    finally:
        await store.aclose()


def write(entries: Sequence[tuple[str, dict[str, str]]], args: argparse.Namespace) -> int:
    """Write the selected examples of ``entries`` where ``args.out`` says; returns 0."""
    examples = select(entries, args)
    if args.out == "-":
        n = _write(examples, sys.stdout)
    else:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            n = _write(examples, handle)
    last = entries[-1][0] if entries else args.since
    print(
        f"replay: {len(entries)} log entries -> {n} example(s)"
        + (f"; next run: --since {last}" if last else ""),
        file=sys.stderr,
    )
    return 0


async def run(argv: Sequence[str] | None = None) -> int:
    """``main`` for callers that already run an event loop."""
    args = parser().parse_args(argv)
    entries = await fetch(args)
    if entries is None:
        return 2
    return await asyncio.to_thread(write, entries, args)


def cmd_replay(args: argparse.Namespace) -> int:
    """For ``sub.add_parser("replay").set_defaults(run=cmd_replay)`` in the CLI."""
    entries = asyncio.run(fetch(args))
    return 2 if entries is None else write(entries, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cmd_replay(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
