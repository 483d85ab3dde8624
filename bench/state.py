"""What shared state in Redis costs per request, compared with the in-process store.

One run, all local, no GPU:

1. starts its own ``redis-server`` on a free loopback port (no persistence);
2. builds three gateways with ``create_app()`` in this process, each over a canned
   upstream (``httpx.MockTransport`` answering at once, so only the gateway is measured):

   * ``off``: no shared-state use (affinity off, no limits, no cache, no decision log);
   * ``memory``: every use on, in-process store;
   * ``redis``: every use on, Redis store on loopback TCP;

   "every use": rate limits (requests and tokens per minute, never reached), affinity,
   the response cache on the virtual model (every request misses: unique prompts, so
   each pays a lookup and a background fill), and the decision log;
3. sends the same kind of routed request (``model: coe``, keyword routing) to each
   through ``httpx.ASGITransport`` at concurrency 1, in alternating blocks
   (off, memory, redis, redis, memory, off, ...) so machine drift hits all equally;
4. also times each store primitive alone (rate-limit hit, GET, SET) on both stores.

Reports p50/p99 per configuration and the overhead of each over ``off`` (computed on the
percentiles). On the request path the Redis store adds its round trips in series:
rate-limit script, cache GET, affinity GET; the writes (affinity, cache fill, tokens,
decision log) go through the background queue.

Usage::

    python bench/state.py            # full run, a table
    python bench/state.py --quick    # a smoke run in a few seconds
    python bench/state.py --json     # the table, then one JSON object as the last line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coe_router.config import Settings  # noqa: E402
from coe_router.gateway import create_app  # noqa: E402
from coe_router.gateway.context import AppContext  # noqa: E402
from coe_router.state import MemoryStore, StateStore, connect_redis  # noqa: E402
from tests.support import (  # noqa: E402
    LaunchError,
    RedisServer,
    in_process_client,
    keyword_catalog,
    log,
    percentile,
)

CATALOG = keyword_catalog(cache_ttl_s=300)
ANSWER = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "code",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}  # fmt: skip
ANSWER_BYTES = json.dumps(ANSWER).encode()


def summary(samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds."""
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(percentile(s, 50) * 1000, 4),
        "p99_ms": round(percentile(s, 99) * 1000, 4),
        "mean_ms": round(sum(s) / len(s) * 1000, 4),
    }


def upstream() -> httpx.MockTransport:
    """An expert that answers at once."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(
            200, content=ANSWER_BYTES, headers={"content-type": "application/json"}
        )

    return httpx.MockTransport(handle)


@contextlib.asynccontextmanager
async def gateway(
    catalog: Path, store: StateStore | None, uses: bool
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway app (lifespan entered) and an in-process client bound to it."""
    extra: dict[str, Any] = {
        "affinity": {"enabled": uses},
        "upstream": {"health_interval_s": 3600},
    }
    if uses:
        extra |= {
            "rate_limits": {"requests_per_min": 10**9, "tokens_per_min": 10**12},
            "decision_log": {"enabled": True, "max_entries": 10_000},
        }
    cat = catalog if uses else catalog.with_name("catalog-nocache.yaml")
    app = create_app(
        Settings(catalog=cat, **extra), upstream_transport=upstream(), state_store=store
    )
    async with in_process_client(app, timeout=10) as client:
        yield client


async def measure(client: httpx.AsyncClient, n: int, tag: str, start: int) -> list[float]:
    """Latency of ``n`` routed requests with unique prompts (cache misses)."""
    out: list[float] = []
    shared = client.app.state.coe.shared  # type: ignore[attr-defined]
    for i in range(start, start + n):
        body = {"model": "coe", "messages": [
            {"role": "user", "content": f"fix this python function ({tag} {i})"}]}  # fmt: skip
        t0 = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=body)
        out.append(time.perf_counter() - t0)
        if resp.status_code != 200:
            raise SystemExit(f"{tag}: request failed with {resp.status_code}: {resp.text}")
    await shared.background.drain()  # background writes do not spill into the next block
    return out


async def time_op(fn: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    """Latency of ``n`` calls of ``fn(i)``."""
    out: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t0)
    return out


async def store_ops(store: StateStore, n: int) -> dict[str, dict[str, float]]:
    """Each request-path primitive alone."""
    now = time.time()
    await store.set("bench:k", b"expert-name", 300)
    return {
        "rate_limit_hit": summary(
            await time_op(lambda i: store.hit(f"k{i % 50}", now, 10**9, 10**12), n)
        ),
        "get": summary(await time_op(lambda i: store.get("bench:k"), n)),
        "set": summary(await time_op(lambda i: store.set(f"bench:{i}", b"x" * 200, 300), n)),
    }


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """The whole benchmark; returns the JSON result."""
    tmp = Path(tempfile.mkdtemp(prefix="coe-bench-state-"))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    plain = {**CATALOG, "virtual_models": [{"name": "coe", "router": "keyword"}]}
    (tmp / "catalog-nocache.yaml").write_text(yaml.safe_dump(plain))
    samples: dict[str, list[float]] = {"off": [], "memory": [], "redis": []}
    redis = connect_redis(url)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            "off": await stack.enter_async_context(gateway(catalog, MemoryStore(), uses=False)),
            "memory": await stack.enter_async_context(gateway(catalog, MemoryStore(), True)),
            "redis": await stack.enter_async_context(gateway(catalog, redis, True)),
        }
        for name, client in clients.items():
            await measure(client, args.warmup, f"warm-{name}", 0)
        order = ["off", "memory", "redis"]
        block = max(1, args.n // args.blocks)
        for b in range(args.blocks):
            for name in order if b % 2 == 0 else order[::-1]:
                samples[name] += await measure(clients[name], block, name, b * block)
        log("timing store primitives")
        st: AppContext = clients["redis"].app.state.coe  # type: ignore[attr-defined]
        ops = {
            "memory": await store_ops(MemoryStore(), args.n_ops),
            "redis": await store_ops(st.shared.store, args.n_ops),
        }
    shutil.rmtree(tmp, ignore_errors=True)
    requests = {name: summary(s) for name, s in samples.items()}
    base = requests["off"]
    added = {
        name: {
            "p50_added_ms": round(requests[name]["p50_ms"] - base["p50_ms"], 4),
            "p99_added_ms": round(requests[name]["p99_ms"] - base["p99_ms"], 4),
        }
        for name in ("memory", "redis")
    }
    redis_vs_memory = {
        "p50_ms": round(requests["redis"]["p50_ms"] - requests["memory"]["p50_ms"], 4),
        "p99_ms": round(requests["redis"]["p99_ms"] - requests["memory"]["p99_ms"], 4),
    }
    return {
        "bench": "state",
        "requests": requests,
        "added_over_off": added,
        "redis_minus_memory": redis_vs_memory,
        "store_ops": ops,
        "n_per_config": args.n,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "redis_server": args.redis_version,
    }


def table(result: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        "per-request latency through the gateway (in-process client, instant upstream)",
        f"{'config':<8} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'+p50 ms':>9} {'+p99 ms':>9}",
    ]
    for name, s in result["requests"].items():
        add = result["added_over_off"].get(name, {"p50_added_ms": 0.0, "p99_added_ms": 0.0})
        lines.append(
            f"{name:<8} {s['n']:>6} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} "
            f"{add['p50_added_ms']:>9.3f} {add['p99_added_ms']:>9.3f}"
        )
    d = result["redis_minus_memory"]
    lines.append(f"redis - memory: p50 {d['p50_ms']:+.3f} ms, p99 {d['p99_ms']:+.3f} ms")
    lines += ["", "store primitives alone", f"{'op':<16} {'store':<7} {'p50 ms':>9} {'p99 ms':>9}"]
    for store, ops in result["store_ops"].items():
        for op, s in ops.items():
            lines.append(f"{op:<16} {store:<7} {s['p50_ms']:>9.4f} {s['p99_ms']:>9.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and the JSON line with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--json", action="store_true", help="end with one JSON object line")
    p.add_argument("--n", type=int, help="requests per configuration")
    p.add_argument("--blocks", type=int, default=10, help="alternating blocks")
    p.add_argument("--warmup", type=int, help="requests per configuration before timing")
    p.add_argument("--n-ops", type=int, help="calls per store primitive")
    args = p.parse_args(argv)
    args.n = args.n or (300 if args.quick else 3000)
    args.warmup = args.warmup if args.warmup is not None else (30 if args.quick else 300)
    args.n_ops = args.n_ops or (500 if args.quick else 5000)
    try:
        args.redis_version = RedisServer.version()
        with (
            tempfile.TemporaryDirectory(prefix="coe-bench-redis-") as tmp,
            RedisServer(Path(tmp)) as redis,
        ):
            log(f"redis at {redis.url}; {args.n} requests per config, {args.blocks} blocks")
            result = asyncio.run(run(args, redis.url))
    except LaunchError as exc:
        sys.exit(f"bench/state.py: {exc}")
    print(table(result))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
