"""How much latency the coe-router gateway adds over calling the same upstream directly,
beside LiteLLM proxy (the peer) in front of the same upstream.

One run, all local, no GPU:

1. starts ``bench/stub_upstream.py`` (a canned OpenAI-compatible server that costs about
   0.1 ms of CPU per request, syscalls included) on a free port;
2. writes a temporary catalog with two experts (``general``, the generalist, and
   ``code``) whose replicas both point at the stub, the virtual model ``coe`` routed by
   the ``keyword`` router with the keyword lists of ``deploy/local.yaml``, and starts the
   real gateway (``python -m coe_router serve --no-launch``) on a free port;
3. when the ``bench`` extra is installed (``litellm[proxy]``; or ``--litellm PATH`` /
   ``COE_BENCH_LITELLM`` names its ``litellm`` executable, e.g. in a separate venv), starts
   LiteLLM proxy (1 worker) with model ``coe`` mapped to the same stub; without it the
   peer column is skipped, with a line saying so;
4. sends the same ``model: "coe"`` chat request with a coding prompt (keyword routing
   picks the ``code`` expert; the run checks it did) to the stub directly, the gateway and
   the peer, from one ``httpx.AsyncClient`` per target (keep-alive, explicit timeouts), at
   concurrency 1 and 16, in rotating blocks (direct, gateway, peer, then the next order,
   ...) so that drift on the machine hits every side alike;
5. reports p50/p99 latency of each side, the latency each proxy adds (minus direct,
   computed on the percentiles, not per request), requests per second and the gateway's
   ratio to the peer, a streaming row (time to the first SSE bytes and to ``[DONE]``) at
   concurrency 1, the CPU time each proxy spent per request, and each proxy's resident
   memory (RSS) at idle and after ``--rss-requests`` (10,000) requests.

The numbers the product is held to (issue 13): ``p50_added_ms`` (concurrency 1, keyword
routing) <= 1 ms, streaming time to first byte added <= 1 ms, and requests/s at
concurrency 16 >= 10x LiteLLM proxy's in the same run.

The load generator, the proxies and the stub share this machine's cores. With
``--pin split`` (the default when there are at least 2 CPUs) the proxies get the last
CPU (only one of them is under load at a time) and the load generator and stub share the
others, so a proxy never competes with the client for a core (as in production, where
neither the client nor the expert runs on the gateway's host); ``--pin none`` leaves
placement to the OS.

Usage::

    python bench/gateway_overhead.py            # full run, a table
    python bench/gateway_overhead.py --quick    # a smoke run in a few seconds
    python bench/gateway_overhead.py --json     # the table, then one JSON object as last line
    python bench/gateway_overhead.py --litellm /path/to/venv/bin/litellm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/x.py`` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

from coe_router.experts import http1  # noqa: E402
from tests.support import (  # noqa: E402
    HOST,
    LaunchError,
    child_env,
    free_port,
    launch_gateway,
    log,
    percentile,
    pinned,
    start_stub,
    stop_process,
    tail,
    wait_http,
)

#: What the product must meet: p50 added latency at concurrency 1, keyword routing.
TARGET_P50_ADDED_MS = 1.0
#: Streaming: time to the first bytes, added.
TARGET_TTFB_ADDED_MS = 1.0
#: Requests/s at concurrency 16, as a multiple of the peer's.
TARGET_RPS_RATIO = 10.0
PROMPT = "Write a Python function that reverses a linked list, with a unit test."
_PATH = "/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}
_FALLBACK_KEYWORDS = {
    "code": ["python", "function", "bug", "code", "algorithm", "unit test", "linked list"],
    "writing": ["poem", "essay", "story", "email"],
    "math": ["integral", "equation", "probability"],
}
#: The environment variable naming the peer's ``litellm`` executable.
LITELLM_ENV = "COE_BENCH_LITELLM"
#: The peer's master key, made up per run.
PEER_KEY = "sk-bench-" + secrets.token_hex(16)
SIDES = ("direct", "gateway", "peer")


# --- statistics -----------------------------------------------------------------------------


@dataclass
class Side:
    """Measurements of one target (direct, gateway or peer) in one scenario."""

    latencies: list[float] = field(default_factory=list)  # seconds, per request
    firsts: list[float] = field(default_factory=list)  # seconds to first body bytes (streams)
    busy_s: float = 0.0  # wall time of this side's blocks
    block_p50s: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Percentiles in ms and requests/s."""
        lat = sorted(self.latencies)
        out = {
            "n": len(lat),
            "p50_ms": percentile(lat, 50) * 1000,
            "p90_ms": percentile(lat, 90) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "rps": len(lat) / self.busy_s if self.busy_s else float("nan"),
            "errors": self.errors,
        }
        if self.firsts:
            first = sorted(self.firsts)
            out["ttft_p50_ms"] = percentile(first, 50) * 1000
            out["ttft_p99_ms"] = percentile(first, 99) * 1000
        return out


_ADDED_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "ttft_p50_ms", "ttft_p99_ms")


def _added(proxy: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {k.replace("_ms", "_added_ms"): proxy[k] - direct[k]
            for k in _ADDED_KEYS if k in direct and k in proxy}  # fmt: skip


@dataclass
class Scenario:
    """One concurrency level (and mode), every target."""

    name: str
    concurrency: int
    stream: bool
    sides: dict[str, Side] = field(default_factory=lambda: {k: Side() for k in SIDES})
    cpu: dict[str, float] | None = None

    def summary(self) -> dict[str, Any]:
        """Each side plus the difference of the proxies' percentiles to direct's."""
        d, g = self.sides["direct"].summary(), self.sides["gateway"].summary()
        added: dict[str, Any] = _added(g, d)
        direct, gateway = self.sides["direct"], self.sides["gateway"]
        pairs = [g_ - d_ for d_, g_ in zip(direct.block_p50s, gateway.block_p50s, strict=False)]
        if pairs:
            added["p50_added_ms_blocks"] = {
                "min": min(pairs) * 1000,
                "median": statistics.median(pairs) * 1000,
                "max": max(pairs) * 1000,
            }
        out: dict[str, Any] = {"concurrency": self.concurrency, "stream": self.stream,
                               "direct": d, "gateway": g, "added": added}  # fmt: skip
        cpu = dict(self.cpu) if self.cpu else None
        if cpu and g["n"]:
            # Only gateway requests reach the gateway; the stub serves every side.
            cpu["gateway_cpu_ms_per_req"] = cpu["gateway_cpu_s"] * 1000 / g["n"]
            served = sum(s.summary()["n"] for s in self.sides.values())
            cpu["stub_cpu_ms_per_req"] = cpu["stub_cpu_s"] * 1000 / served
        peer = self.sides["peer"]
        if peer.latencies or peer.errors:
            p = peer.summary()
            out["peer"] = p
            out["peer_added"] = _added(p, d)
            out["rps_ratio"] = g["rps"] / p["rps"] if p["rps"] else float("nan")
            if cpu and p["n"] and "peer_cpu_s" in cpu:
                cpu["peer_cpu_ms_per_req"] = cpu["peer_cpu_s"] * 1000 / p["n"]
        out["cpu"] = cpu
        return out


class CpuMeter:
    """CPU time of the whole machine versus that of the benchmark's own processes (Linux).

    Whatever else runs on the machine competes with the processes measured here;
    ``background_cpus`` says how many CPUs' worth of it there was (0.0 = a quiet machine).
    The CPU time each of our processes spent is also kept: a proxy's CPU time per
    request is a figure that background load disturbs far less than wall-clock latency.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._sample()

    def _sample(self) -> tuple[float, int, dict[str, int]] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(x) for x in fields[:8]]
            busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
            ours = {name: sum(_ticks(p) for p in _tree(pid)) for name, pid in self._pids.items()}
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, ours

    def read(self) -> dict[str, float] | None:
        """CPUs busy in total, per process of ours, by everything else; CPU seconds each."""
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall = end[0] - self._start[0]
        busy = (end[1] - self._start[1]) / self._tick
        out = {"wall_s": wall, "busy_cpus": busy / wall}
        ours = 0.0
        for name in self._pids:
            cpu_s = (end[2][name] - self._start[2].get(name, 0)) / self._tick
            out[f"{name}_cpu_s"] = cpu_s
            ours += cpu_s
        out["bench_cpus"] = ours / wall
        out["background_cpus"] = max(0.0, busy - ours) / wall
        return out


def _ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])  # utime + stime, all threads


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a proxy may serve from a child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants in MiB (``VmRSS``), None off Linux."""
    total = 0
    try:
        for p in _tree(pid):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total / 1024


# --- processes ------------------------------------------------------------------------------


def catalog(stub_url: str) -> dict[str, Any]:
    """Two experts on the stub, ``coe`` routed by keyword (deploy/local.yaml's lists)."""
    keywords = _FALLBACK_KEYWORDS
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        keywords = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())["keywords"]
    return {
        "experts": [
            {"name": "general", "served_model_name": "stub-general", "generalist": True,
             "categories": ["general", "writing", "math", "science", "humanities"],
             "replicas": [stub_url]},
            {"name": "code", "served_model_name": "stub-coder", "categories": ["code"],
             "cost": 3.0, "replicas": [stub_url]},
        ],
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": keywords,
    }  # fmt: skip


def find_litellm(given: str | None) -> str | None:
    """The ``litellm`` executable: ``--litellm``, else ``$COE_BENCH_LITELLM``, else the one
    installed beside this Python (the ``bench`` extra), else on ``PATH``."""
    for candidate in (given, os.environ.get(LITELLM_ENV)):
        if candidate:
            return candidate if Path(candidate).is_file() else shutil.which(candidate)
    beside = Path(sys.executable).parent / "litellm"
    return str(beside) if beside.is_file() else shutil.which("litellm")


def litellm_version(exe: str) -> str:
    """The version of the ``litellm`` package next to ``exe`` (its venv's metadata)."""
    python = Path(exe).parent / "python"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    return "unknown"


def start_litellm(
    exe: str, stub_url: str, workdir: Path, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM proxy, 1 worker, model ``coe`` -> the stub's ``stub-coder``; waits until live."""
    config = {
        "model_list": [{"model_name": "coe", "litellm_params": {
            "model": "openai/stub-coder", "api_base": stub_url + "/v1", "api_key": "sk-stub"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }  # fmt: skip
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    logfile = workdir / "litellm.log"
    # LiteLLM refuses to start without a master key; every request to it then carries it.
    env = child_env({"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                     "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
                     "LITELLM_MASTER_KEY": PEER_KEY}, keep_coe=False)  # fmt: skip
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "--config", str(path), "--host", HOST, "--port", str(port),
             "--num_workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env, preexec_fn=pinned(cpus),
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        wait_http(url + "/health/liveliness", proc, 180, lambda: tail(logfile))
    except BaseException:
        stop_process(proc, 10)
        raise
    return proc, url


# --- load generation ------------------------------------------------------------------------


def _body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "coe",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


class BadAnswer(Exception):
    """A request that did not get a well-formed 200 answer."""


class Target:
    """One target's client: httpx, or the gateway's own lean HTTP/1.1 pool (the default,
    about 3x less CPU per request, so the load generator is less often the bottleneck)."""

    def __init__(self, url: str, headers: dict[str, str], lean: bool) -> None:
        self.url = url
        self.headers = {**_HEADERS, **headers}
        self._httpx = httpx.AsyncClient(
            base_url=url, timeout=httpx.Timeout(60.0, connect=5.0), headers=self.headers,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )  # fmt: skip
        self._lean = http1.ConnectionPool(url, http1.Timeouts(5.0, 60.0, 60.0, 60.0), 64)
        self.lean = lean

    async def aclose(self) -> None:
        """Close both clients."""
        await self._httpx.aclose()
        await self._lean.aclose()

    async def post(self, body: bytes, stream: bool) -> tuple[float, float]:
        """One request: (seconds to the end, seconds to the first body bytes)."""
        t0 = time.perf_counter()
        first = 0.0
        tail_ = b""
        if self.lean:
            resp = await self._lean.request("POST", _PATH, body, self.headers, stream=True)
            try:
                status, chunks = resp.status_code, resp.aiter_bytes()
                async for chunk in chunks:
                    if not first:
                        first = time.perf_counter() - t0
                    tail_ = (tail_ + chunk)[-64:]
            finally:
                await resp.aclose()
        else:
            async with self._httpx.stream("POST", _PATH, content=body) as r:
                status = r.status_code
                async for chunk in r.aiter_raw():
                    if not first and chunk:
                        first = time.perf_counter() - t0
                    tail_ = (tail_ + chunk)[-64:]
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise BadAnswer(f"{self.url} answered {status}: {tail_!r}")
        if stream and b"data: [DONE]" not in tail_:
            raise BadAnswer(f"{self.url}: stream ended without [DONE]")
        return elapsed, first


async def run_block(
    client: Target, n: int, concurrency: int, stream: bool, side: Side | None
) -> None:
    """``n`` requests from ``concurrency`` workers; recorded into ``side`` unless warming up."""
    body = _body(stream)
    remaining = n
    lat: list[float] = []
    firsts: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                total, first = await client.post(body, stream)
            except (BadAnswer, httpx.HTTPError) as exc:
                # Counted and reported, not timed; too many of them fail the run.
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            lat.append(total)
            firsts.append(first)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    if side is None:
        if errors:
            raise BadAnswer(f"{len(errors)} failed request(s) while warming up: {errors[0]}")
        return
    side.errors += len(errors)
    side.error_samples += errors[: max(0, 3 - len(side.error_samples))]
    side.latencies += lat
    if stream:
        side.firsts += firsts
    side.busy_s += wall
    if lat:
        side.block_p50s.append(percentile(lat, 50))


def _blocks(n: int, block: int, targets: int) -> Iterator[tuple[int, int]]:
    """(size, rotation) per block: each target leads in turn, cancelling linear drift."""
    i = 0
    while n > 0:
        size = min(block, n)
        yield size, i % targets
        n -= size
        i += 1


async def check_routing(urls: dict[str, str]) -> str:
    """One request each; the gateway must have routed the coding prompt to ``code``."""
    async with httpx.AsyncClient(base_url=urls["gateway"], timeout=30) as gateway:
        return await _check_routing(gateway, [(n, u) for n, u in urls.items() if n != "gateway"])


async def _check_routing(gateway: httpx.AsyncClient, others: list[tuple[str, str]]) -> str:
    resp = await gateway.post(_PATH, content=_body(False), headers=_HEADERS)
    resp.raise_for_status()
    expert = str(resp.headers.get("x-coe-expert", ""))
    body = resp.json()
    if expert != "code" or body.get("coe", {}).get("strategy") != "keyword":
        raise RuntimeError(f"expected keyword routing to 'code', got {expert!r}: {body}")
    if body["model"] != "stub-coder" or not body.get("choices"):
        raise RuntimeError(f"unexpected gateway answer: {body}")
    for name, url in others:
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=_auth(name)) as client:
            resp = await client.post(_PATH, content=_body(False), headers=_HEADERS)
        resp.raise_for_status()
        if not resp.json().get("choices"):
            raise RuntimeError(f"unexpected answer from {name}: {resp.text}")
    return expert


@dataclass
class Targets:
    """Base URL and pid of each target ("peer" absent without LiteLLM)."""

    urls: dict[str, str]
    pids: dict[str, int]
    #: RSS in MiB per proxy: at idle (before any request) and after ``rss_requests``.
    rss: dict[str, dict[str, float | None]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)


def _auth(target: str) -> dict[str, str]:
    return {"authorization": f"Bearer {PEER_KEY}"} if target == "peer" else {}


async def measure(
    targets: Targets, plan: list[tuple[Scenario, int, int, int]], rss_requests: int, lean: bool
) -> str:
    """Run every scenario of ``plan`` (scenario, warm-up, n, block size) on every target,
    then bring each proxy to ``rss_requests`` requests and read its RSS."""
    expert = await check_routing(targets.urls)
    clients = {name: Target(url, _auth(name), lean) for name, url in targets.urls.items()}
    try:
        names = list(clients)
        sent = dict.fromkeys(names, 1)
        for sc, warmup, n, block in plan:
            log(f"{sc.name}: warm-up {warmup} + {n} requests per target ({', '.join(names)}), "
                f"blocks of {block}")  # fmt: skip
            for name in names:
                await run_block(clients[name], warmup, sc.concurrency, sc.stream, None)
            gc.collect()
            gc.freeze()  # nothing allocated so far is scanned again: fewer, shorter pauses
            meter = CpuMeter({"loadgen": os.getpid(), "stub": targets.pids["stub"],
                              **{k: targets.pids[k] for k in names if k != "direct"}})  # fmt: skip
            for size, rot in _blocks(n, block, len(names)):
                for name in names[rot:] + names[:rot]:
                    await run_block(clients[name], size, sc.concurrency, sc.stream,
                                    sc.sides[name])  # fmt: skip
            sc.cpu = meter.read()
            gc.unfreeze()
            for name in names:
                sent[name] += warmup + n
        for name in names:
            if name == "direct":
                continue
            more = rss_requests - sent[name]
            if more > 0:
                log(f"{name}: {more} more requests (c=16) to reach {rss_requests} for its RSS")
                await run_block(clients[name], more, 16, False, None)
                sent[name] += more
            targets.rss[name]["after"] = rss_mb(targets.pids[name])
        targets.sent = sent
    finally:
        for client in clients.values():
            await client.aclose()
    return expert


# --- report ---------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def _row(label: str, s: dict[str, Any], key: str) -> str:
    d, g, a = s["direct"], s["gateway"], s["added"]
    k = key.replace("_ms", "_added_ms")
    row = f"{label:<22} {d[key]:>9.3f} {g[key]:>9.3f} {a[k]:>9.3f}"
    if "peer" in s:
        row += f" {_f(s['peer'].get(key)):>9} {_f(s['peer_added'].get(k)):>9}"
    return row


def render_table(summaries: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The human-readable report."""
    peer = meta["peer"]
    out = [
        "coe-router gateway overhead (keyword routing, model 'coe', coding prompt)",
        f"  {meta['machine_note']}",
        f"  pinning: {meta['pinning']}",
        f"  load generator: {meta['loadgen_client']} on {meta['loadgen_loop']}; "
        f"python {meta['python']}",
        f"  gateway: {meta['gateway_server']}",
        f"  peer: {peer}" if meta["peer_present"] else f"  peer: SKIPPED ({peer})",
        "",
        f"{'latency (ms)':<22} {'direct':>9} {'gateway':>9} {'added':>9}"
        + (f" {'litellm':>9} {'added':>9}" if meta["peer_present"] else ""),
    ]
    for s in summaries.values():
        label = f"c={s['concurrency']}" + (" stream" if s["stream"] else "")
        out.append(f"-- {label} (n={s['gateway']['n']} per target)")
        keys = ["p50_ms", "p90_ms", "p99_ms", "mean_ms"]
        if s["stream"]:
            keys = ["ttft_p50_ms", "ttft_p99_ms", *keys]
        for key in keys:
            out.append(_row(f"  {key.removesuffix('_ms')}", s, key))
        blocks = s["added"].get("p50_added_ms_blocks")
        if blocks:
            out.append(
                f"  gateway p50 added per block: min {blocks['min']:.3f}, "
                f"median {blocks['median']:.3f}, max {blocks['max']:.3f}"
            )
        rps = f"  requests/s             {s['direct']['rps']:>9.0f} {s['gateway']['rps']:>9.0f}"
        if "peer" in s:
            rps += f" {'':>9} {s['peer']['rps']:>9.0f}   gateway/litellm {s['rps_ratio']:.1f}x"
        out.append(rps)
        cpu = s.get("cpu")
        if cpu:
            noisy = "  <- NOT QUIET: numbers inflated" if cpu["background_cpus"] > 0.1 else ""
            out.append(
                f"  CPUs busy: {cpu['busy_cpus']:.2f} (bench {cpu['bench_cpus']:.2f}, "
                f"background {cpu['background_cpus']:.2f}){noisy}"
            )
            line = (f"  CPU per request (ms): gateway {cpu['gateway_cpu_ms_per_req']:.3f}, "
                    f"stub {cpu['stub_cpu_ms_per_req']:.3f}")  # fmt: skip
            if "peer_cpu_ms_per_req" in cpu:
                line += f", litellm {cpu['peer_cpu_ms_per_req']:.3f}"
            out.append(line)
    rss = meta["rss_mb"]
    out.append("")
    for name, label in (("gateway", "gateway"), ("peer", "litellm")):
        if name in rss:
            r = rss[name]
            idle, after = _f(r.get("idle"), ".1f"), _f(r.get("after"), ".1f")
            n = meta["rss_requests"]
            out.append(f"RSS {label:<8} idle {idle:>7} MiB, after {n} requests {after:>7} MiB")
    out.append("")
    for verdict in verdicts(summaries).values():
        out.append(verdict["line"])
    return "\n".join(out)


def verdicts(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target of issue 13: the measured value, whether it is met, and a line."""
    out: dict[str, dict[str, Any]] = {}
    c1 = summaries["c1"]["added"]["p50_added_ms"]
    out["p50_added"] = {"value": c1, "met": c1 <= TARGET_P50_ADDED_MS,
                        "target": f"<= {TARGET_P50_ADDED_MS} ms",
                        "what": "p50 added at c=1"}  # fmt: skip
    stream = summaries.get("stream_c1")
    if stream is not None:
        ttfb = stream["added"]["ttft_p50_added_ms"]
        out["ttfb_added"] = {"value": ttfb, "met": ttfb <= TARGET_TTFB_ADDED_MS,
                             "target": f"<= {TARGET_TTFB_ADDED_MS} ms",
                             "what": "streaming TTFB p50 added at c=1"}  # fmt: skip
    ratio = summaries["c16"].get("rps_ratio")
    if ratio is not None:
        out["rps_ratio"] = {"value": ratio, "met": ratio >= TARGET_RPS_RATIO,
                            "target": f">= {TARGET_RPS_RATIO:g}x LiteLLM",
                            "what": "requests/s at c=16, gateway / LiteLLM"}  # fmt: skip
    for v in out.values():
        unit = "x" if v["what"].startswith("requests") else " ms"
        v["line"] = (f"{v['what']}: {v['value']:.3f}{unit} -> "
                     f"{'MEETS' if v['met'] else 'MISSES'} the target ({v['target']})")  # fmt: skip
    return out


# --- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="small run (seconds), for smoke tests")
    p.add_argument("--n1", type=int, help="measured requests per target at c=1 (default 2000)")
    p.add_argument("--n16", type=int, help="measured requests per target at c=16 (default 4000)")
    p.add_argument("--n-stream", type=int, help="streamed requests per target at c=1 "
                   "(default n1/4; 0 skips the streaming row)")  # fmt: skip
    p.add_argument("--warmup", type=int, help="warm-up requests per target per scenario")
    p.add_argument("--rss-requests", type=int, help="requests each proxy has served when its "
                   "RSS is read after the run (default 10000; topped up at c=16)")  # fmt: skip
    p.add_argument("--pin", choices=["auto", "split", "none"], default="auto",
                   help="CPU placement: split = proxies alone on the last CPU, load generator "
                   "and stub on the rest; auto = split when there are >= 2 CPUs")  # fmt: skip
    p.add_argument(
        "--litellm",
        metavar="PATH",
        help=f"the peer's `litellm` executable (default ${LITELLM_ENV}, else the one "
        "beside this Python, else PATH)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip LiteLLM even when installed")
    p.add_argument("--loadgen", choices=["lean", "httpx"], default="lean",
                   help="the load generator's HTTP client: the gateway's lean HTTP/1.1 pool "
                   "(coe_router/experts/http1.py, cheapest) or httpx")  # fmt: skip
    p.add_argument("--no-uvloop", action="store_true", help="load generator on stdlib asyncio")
    p.add_argument("--json", action="store_true", help="also print one JSON object, last line")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the logs")
    return p


def _placement(mode: str) -> tuple[set[int] | None, set[int] | None, str]:
    """(proxy CPUs, load generator and stub CPUs, description)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None, "none (no sched_setaffinity on this platform)"
    if mode == "none" or (mode == "auto" and len(cpus) < 2):
        return None, None, f"none (OS places every process on CPUs {cpus})"
    if len(cpus) < 2:
        return None, None, f"none (only CPU {cpus} available; split needs 2)"
    gw, rest = {cpus[-1]}, set(cpus[:-1])
    return gw, rest, (f"split: gateway (and peer) alone on CPU {cpus[-1]}; load generator "
                      f"and stub share CPU(s) {sorted(rest)}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets met or not), 1 when over 1% of requests failed."""
    args = _parser().parse_args(argv)
    n1 = args.n1 or (300 if args.quick else 2000)
    n16 = args.n16 or (600 if args.quick else 4000)
    n_stream = n1 // 4 if args.n_stream is None else args.n_stream
    warmup = args.warmup if args.warmup is not None else (50 if args.quick else 300)
    rss_requests = args.rss_requests if args.rss_requests is not None else (
        0 if args.quick else 10_000)  # fmt: skip
    gw_cpus, rest_cpus, pinning = _placement(args.pin)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
            loop_name = f"uvloop {importlib.metadata.version('uvloop')}"
        except ImportError:
            pass
    # uvicorn's loop="auto" and http="auto" take uvloop and httptools when they import.
    has = {m: importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools")}
    gw_loop = "uvloop" if has["uvloop"] else "asyncio"
    gw_http = "httptools" if has["httptools"] else "h11"
    litellm = None if args.no_peer else find_litellm(args.litellm)
    peer_note = "--no-peer" if args.no_peer else (
        "LiteLLM proxy not installed: `pip install -e '.[bench]'`, or pass --litellm PATH / "
        f"set {LITELLM_ENV}")  # fmt: skip

    # SIGTERM must unwind through the finally below, so the children are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="coe-bench-"))
    stub: subprocess.Popen[bytes] | None = None
    gateway = None
    peer: subprocess.Popen[bytes] | None = None
    keep_logs = args.keep_logs
    try:
        if rest_cpus:
            os.sched_setaffinity(0, rest_cpus)
        stub, stub_url = start_stub(tmp / "stub.log", cpus=rest_cpus)
        wait_http(stub_url + "/health", stub, 10, lambda: tail(tmp / "stub.log"))
        # Health checks are not on the request path. On a busy shared machine one can stall
        # past the default 2 s timeout, which would take the stub out of rotation mid-run.
        gateway = launch_gateway(
            tmp, catalog(stub_url), args=["--no-launch"], keep_coe_env=False, cpus=gw_cpus,
            env={"COE_SERVER__LOG_LEVEL": "warning", "COE_UPSTREAM__HEALTH_TIMEOUT_S": "10"},
            timeout_s=60,
        )  # fmt: skip
        targets = Targets({"direct": stub_url, "gateway": gateway.url},
                          {"stub": stub.pid, "gateway": gateway.process.pid})  # fmt: skip
        targets.rss["gateway"] = {"idle": rss_mb(gateway.process.pid)}
        if litellm is not None:
            log(f"starting LiteLLM proxy ({litellm})")
            peer, peer_url = start_litellm(litellm, stub_url, tmp, gw_cpus)
            peer_note = f"LiteLLM proxy {litellm_version(litellm)}, 1 worker ({litellm})"
            targets.urls["peer"] = peer_url
            targets.pids["peer"] = peer.pid
            targets.rss["peer"] = {"idle": rss_mb(peer.pid)}
        else:
            log(f"peer skipped: {peer_note}")
        log(f"targets {targets.urls}, pids {targets.pids}; logs in {tmp}")

        scenarios = [
            (Scenario("c1", 1, False), warmup, n1, 100),
            (Scenario("c16", 16, False), warmup * 2, n16, 400),
        ]
        if n_stream > 0:
            scenarios.append((Scenario("stream_c1", 1, True), warmup, n_stream, 100))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            expert = runner.run(measure(targets, scenarios, rss_requests, args.loadgen == "lean"))
        for proc, name in ((stub, "stub"), (gateway.process, "gateway"), (peer, "peer")):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} exited during the run ({proc.returncode})")
    except BaseException:
        keep_logs = True
        log(f"benchmark failed; logs kept in {tmp}")
        raise
    finally:
        stop_process(peer, 10)
        if gateway is not None:
            gateway.stop(10)
        stop_process(stub, 5)
        if not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)

    summaries = {sc.name: sc.summary() for sc, *_ in scenarios}
    cpu_count = os.cpu_count() or 0
    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": cpu_count,
        "cpu_model": _cpu_model(),
        "machine_note": (
            f"{cpu_count} CPU(s) shared by load generator, proxies and stub: absolute numbers "
            "are this machine's; 'added' and the ratios are the comparable figures"
        ),
        "pinning": pinning,
        "loadgen_loop": loop_name,
        "loadgen_client": (
            "coe_router lean HTTP/1.1 pool"
            if args.loadgen == "lean"
            else f"httpx {httpx.__version__}"
        ),
        "gateway_server": f"uvicorn, 1 worker, loop {gw_loop}, http {gw_http}, access log off",
        "peer": peer_note,
        "peer_present": peer is not None,
        "routing": "keyword",
        "routed_to": expert,
        "prompt": PROMPT,
        "rss_mb": targets.rss,
        "rss_requests": rss_requests,
    }
    print(render_table(summaries, meta))
    every = [s[k] for s in summaries.values() for k in ("direct", "gateway", "peer") if k in s]
    requests = sum(x["n"] + x["errors"] for x in every)
    errors = sum(x["errors"] for x in every)
    for sc, *_ in scenarios:
        for side in sc.sides.values():
            for sample in side.error_samples:
                log(f"{sc.name}: {sample}")
    backgrounds = [s["cpu"]["background_cpus"] for s in summaries.values() if s.get("cpu")]
    meta["background_cpus_max"] = max(backgrounds) if backgrounds else None
    meta["quiet"] = bool(backgrounds) and max(backgrounds) <= 0.1
    if args.json:
        print(json.dumps(_rounded(_result(summaries, meta, errors, n1, n16, n_stream)),
                         separators=(",", ":")))  # fmt: skip
    if errors > 0.01 * requests:
        log(f"{errors} of {requests} requests failed: the numbers above are not trustworthy")
        return 1
    return 0


def _result(
    summaries: dict[str, dict[str, Any]], meta: dict[str, Any], errors: int,
    n1: int, n16: int, n_stream: int,
) -> dict[str, Any]:  # fmt: skip
    """The ``--json`` object: headline figures first, then every scenario and the metadata."""
    c1, c16 = summaries["c1"], summaries["c16"]
    stream = summaries.get("stream_c1")
    cpu = {k: (s.get("cpu") or {}) for k, s in summaries.items()}
    rss = meta["rss_mb"]
    checks = verdicts(summaries)
    result: dict[str, Any] = {
        "p50_added_ms": c1["added"]["p50_added_ms"],
        "p99_added_ms": c1["added"]["p99_added_ms"],
        "p50_added_ms_c16": c16["added"]["p50_added_ms"],
        "p99_added_ms_c16": c16["added"]["p99_added_ms"],
        "ttfb_p50_added_ms": stream["added"]["ttft_p50_added_ms"] if stream else None,
        "rps_c16": c16["gateway"]["rps"],
        "rps_direct_c16": c16["direct"]["rps"],
        "rps_c1": c1["gateway"]["rps"],
        "rps_direct_c1": c1["direct"]["rps"],
        "p50_direct_ms_c1": c1["direct"]["p50_ms"],
        "p50_gateway_ms_c1": c1["gateway"]["p50_ms"],
        "p50_direct_ms_c16": c16["direct"]["p50_ms"],
        "p50_gateway_ms_c16": c16["gateway"]["p50_ms"],
        "gateway_cpu_ms_per_req_c1": cpu["c1"].get("gateway_cpu_ms_per_req"),
        "gateway_cpu_ms_per_req_c16": cpu["c16"].get("gateway_cpu_ms_per_req"),
        "gateway_rss_idle_mb": rss["gateway"].get("idle"),
        "gateway_rss_after_mb": rss["gateway"].get("after"),
        "peer": meta["peer"] if meta["peer_present"] else None,
        "peer_p50_added_ms": c1.get("peer_added", {}).get("p50_added_ms"),
        "peer_p50_ms_c16": c16.get("peer", {}).get("p50_ms"),
        "peer_rps_c16": c16.get("peer", {}).get("rps"),
        "peer_rps_c1": c1.get("peer", {}).get("rps"),
        "peer_ttfb_p50_added_ms": (stream or {}).get("peer_added", {}).get("ttft_p50_added_ms"),
        "peer_cpu_ms_per_req_c1": cpu["c1"].get("peer_cpu_ms_per_req"),
        "peer_cpu_ms_per_req_c16": cpu["c16"].get("peer_cpu_ms_per_req"),
        "peer_rss_idle_mb": rss.get("peer", {}).get("idle"),
        "peer_rss_after_mb": rss.get("peer", {}).get("after"),
        "rps_ratio_c16": c16.get("rps_ratio"),
        "rss_requests": meta["rss_requests"],
        "errors": errors,
        "target_p50_added_ms": TARGET_P50_ADDED_MS,
        "target_ttfb_added_ms": TARGET_TTFB_ADDED_MS,
        "target_rps_ratio": TARGET_RPS_RATIO,
        "meets_target": checks["p50_added"]["met"],
        "meets": {k: v["met"] for k, v in checks.items()},
        "n_c1": n1,
        "n_c16": n16,
        "n_stream_c1": n_stream,
        "scenarios": summaries,
    }
    return {**result, **{k: v for k, v in meta.items() if k != "rss_mb"}}


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4) if obj == obj else None  # NaN is not JSON
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LaunchError as exc:
        log(str(exc))
        sys.exit(2)
