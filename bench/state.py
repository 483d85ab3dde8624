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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

CATALOG: dict[str, Any] = {
    "experts": [
        {"name": "general", "served_model_name": "general", "generalist": True,
         "categories": ["general", "writing"], "replicas": ["http://general:8000"]},
        {"name": "code", "served_model_name": "code", "categories": ["code"],
         "replicas": ["http://code:8000"]},
    ],
    "virtual_models": [{"name": "coe", "router": "keyword", "cache_ttl_s": 300}],
    "keywords": {"code": ["python", "function", "bug"], "writing": ["poem", "essay"]},
}  # fmt: skip
ANSWER = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "code",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}  # fmt: skip
ANSWER_BYTES = json.dumps(ANSWER).encode()


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only the table and the JSON line."""
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summary(samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds."""
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(percentile(s, 50) * 1000, 4),
        "p99_ms": round(percentile(s, 99) * 1000, 4),
        "mean_ms": round(sum(s) / len(s) * 1000, 4),
    }


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench/state.py needs redis-server (apt-get install redis-server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="coe-bench-redis-"))
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


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
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=10) as client,
    ):
        client.app = app  # type: ignore[attr-defined]
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
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    args.redis_version = next((v[2:] for v in version if v.startswith("v=")), "?")
    with redis_server() as url:
        log(f"redis at {url}; {args.n} requests per configuration in {args.blocks} blocks")
        result = asyncio.run(run(args, url))
    print(table(result))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
