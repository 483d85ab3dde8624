"""How much latency the coe-router gateway adds over calling the same upstream directly.

One run, all local, no GPU:

1. starts ``bench/stub_upstream.py`` (a canned OpenAI-compatible server that costs about
   0.1 ms of CPU per request, syscalls included) on a free port;
2. writes a temporary catalog with two experts (``general``, the generalist, and
   ``code``) whose replicas both point at the stub, the virtual model ``coe`` routed by
   the ``keyword`` router with the keyword lists of ``deploy/local.yaml``, and starts the
   real gateway (``python -m coe_router serve --no-launch``) on a free port;
3. sends the same ``model: "coe"`` chat request with a coding prompt (keyword routing
   picks the ``code`` expert; the run checks it did) to (a) the stub directly and (b)
   the gateway, from one ``httpx.AsyncClient`` per target (keep-alive, explicit
   timeouts), at concurrency 1 and 16, in alternating blocks (direct, gateway, gateway,
   direct, ...) so that drift on the machine hits both sides equally;
4. reports p50/p99 latency of each side, the latency the gateway adds (gateway minus
   direct, computed on the percentiles, not per request), requests per second, and a
   streaming row (time to the first SSE bytes and to ``[DONE]``) at concurrency 1.

The number the product is held to: ``p50_added_ms`` (concurrency 1, keyword routing)
<= 2 ms.

The load generator, the gateway and the stub share this machine's cores. With
``--pin split`` (the default when there are at least 2 CPUs) the gateway gets the last
CPU to itself and the load generator and stub share the others, so the gateway never
competes with the client for a core (as in production, where neither the client nor
the expert runs on the gateway's host); ``--pin none`` leaves placement to the OS.

Usage::

    python bench/gateway_overhead.py            # full run, a table
    python bench/gateway_overhead.py --quick    # a smoke run in a few seconds
    python bench/gateway_overhead.py --json     # the table, then one JSON object as last line
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
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # ``python bench/gateway_overhead.py`` puts only bench/ there

from tests.support import (  # noqa: E402
    GatewayProcess,
    launch_gateway,
    log,
    percentile,
    start_stub,
    stop_process,
    tail,
    wait_http,
)

#: What the product must meet: p50 added latency at concurrency 1, keyword routing.
TARGET_P50_ADDED_MS = 2.0
PROMPT = "Write a Python function that reverses a linked list, with a unit test."
_PATH = "/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}
_FALLBACK_KEYWORDS = {
    "code": ["python", "function", "bug", "code", "algorithm", "unit test", "linked list"],
    "writing": ["poem", "essay", "story", "email"],
    "math": ["integral", "equation", "probability"],
}


@dataclass
class Side:
    """Measurements of one target (direct or gateway) in one scenario."""

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


@dataclass
class Scenario:
    """One concurrency level (and mode), both targets."""

    name: str
    concurrency: int
    stream: bool
    direct: Side = field(default_factory=Side)
    gateway: Side = field(default_factory=Side)
    cpu: dict[str, float] | None = None

    def summary(self) -> dict[str, Any]:
        """Both sides plus the difference of their percentiles."""
        d, g = self.direct.summary(), self.gateway.summary()
        added: dict[str, Any] = {
            k.replace("_ms", "_added_ms"): g[k] - d[k]
            for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "ttft_p50_ms", "ttft_p99_ms")
            if k in d and k in g
        }
        pairs = [
            g_ - d_ for d_, g_ in zip(self.direct.block_p50s, self.gateway.block_p50s, strict=False)
        ]
        if pairs:
            added["p50_added_ms_blocks"] = {
                "min": min(pairs) * 1000,
                "median": statistics.median(pairs) * 1000,
                "max": max(pairs) * 1000,
            }
        cpu = dict(self.cpu) if self.cpu else None
        if cpu and g["n"]:
            # Only gateway requests reach the gateway; the stub serves both sides.
            cpu["gateway_cpu_ms_per_req"] = cpu["gateway_cpu_s"] * 1000 / g["n"]
            cpu["stub_cpu_ms_per_req"] = cpu["stub_cpu_s"] * 1000 / (g["n"] + d["n"])
        return {"concurrency": self.concurrency, "stream": self.stream,
                "direct": d, "gateway": g, "added": added, "cpu": cpu}  # fmt: skip


class CpuMeter:
    """CPU time of the whole machine versus that of the benchmark's own processes (Linux).

    Whatever else runs on the machine competes with the three processes measured here;
    ``background_cpus`` says how many CPUs' worth of it there was (0.0 = a quiet machine).
    The CPU time each of our processes spent is also kept: the gateway's CPU time per
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
            ours: dict[str, int] = {}
            for name, pid in self._pids.items():
                stat = Path(f"/proc/{pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                ours[name] = int(rest[11]) + int(rest[12])  # utime + stime, all threads
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
            cpu_s = (end[2][name] - self._start[2][name]) / self._tick
            out[f"{name}_cpu_s"] = cpu_s
            ours += cpu_s
        out["bench_cpus"] = ours / wall
        out["background_cpus"] = max(0.0, busy - ours) / wall
        return out


# --- processes ------------------------------------------------------------------------------


def write_catalog(path: Path, stub_url: str) -> None:
    """Two experts on the stub, ``coe`` routed by keyword (deploy/local.yaml's lists)."""
    keywords = _FALLBACK_KEYWORDS
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        keywords = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())["keywords"]
    catalog = {
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
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))


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


async def _post(client: httpx.AsyncClient, body: bytes) -> tuple[float, float]:
    t0 = time.perf_counter()
    resp = await client.post(_PATH, content=body, headers=_HEADERS)
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise BadAnswer(f"{client.base_url} answered {resp.status_code}: {resp.text[:300]}")
    return elapsed, elapsed


async def _post_stream(client: httpx.AsyncClient, body: bytes) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = 0.0
    tail = b""
    async with client.stream("POST", _PATH, content=body, headers=_HEADERS) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise BadAnswer(f"{client.base_url} answered {resp.status_code}: {resp.text[:300]}")
        async for chunk in resp.aiter_raw():
            if not first and chunk:
                first = time.perf_counter() - t0
            tail = (tail + chunk)[-64:]
    elapsed = time.perf_counter() - t0
    if b"data: [DONE]" not in tail:
        raise BadAnswer(f"{client.base_url}: stream ended without [DONE]")
    return elapsed, first


async def run_block(
    client: httpx.AsyncClient, n: int, concurrency: int, stream: bool, side: Side | None
) -> None:
    """``n`` requests from ``concurrency`` workers; recorded into ``side`` unless warming up."""
    body = _body(stream)
    call: Callable[[httpx.AsyncClient, bytes], Awaitable[tuple[float, float]]] = (
        _post_stream if stream else _post
    )
    remaining = n
    lat: list[float] = []
    firsts: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                total, first = await call(client, body)
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
        side.block_p50s.append(percentile(sorted(lat), 50))


def _blocks(n: int, block: int) -> Iterator[tuple[int, bool]]:
    """(size, direct first?) per block pair: ABBA order cancels linear drift."""
    i = 0
    while n > 0:
        size = min(block, n)
        yield size, i % 2 == 0
        n -= size
        i += 1


async def check_routing(gateway: httpx.AsyncClient, direct: httpx.AsyncClient) -> str:
    """One request each; the gateway must have routed the coding prompt to ``code``."""
    resp = await gateway.post(_PATH, content=_body(False), headers=_HEADERS)
    resp.raise_for_status()
    expert = str(resp.headers.get("x-coe-expert", ""))
    body = resp.json()
    if expert != "code" or body.get("coe", {}).get("strategy") != "keyword":
        raise RuntimeError(f"expected keyword routing to 'code', got {expert!r}: {body}")
    if body["model"] != "stub-coder" or not body.get("choices"):
        raise RuntimeError(f"unexpected gateway answer: {body}")
    resp = await direct.post(_PATH, content=_body(False), headers=_HEADERS)
    resp.raise_for_status()
    if not resp.json().get("choices"):
        raise RuntimeError(f"unexpected stub answer: {resp.text}")
    return expert


async def measure(
    stub_url: str,
    gateway_url: str,
    plan: list[tuple[Scenario, int, int, int]],
    pids: dict[str, int],
) -> str:
    """Run every scenario of ``plan`` (scenario, warm-up, n, block size) on both targets."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with (
        httpx.AsyncClient(base_url=stub_url, limits=limits, timeout=timeout) as direct,
        httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=timeout) as gateway,
    ):
        expert = await check_routing(gateway, direct)
        for sc, warmup, n, block in plan:
            log(f"{sc.name}: warm-up {warmup} + {n} requests per target, blocks of {block}")
            for client in (direct, gateway):
                await run_block(client, warmup, sc.concurrency, sc.stream, None)
            gc.collect()
            gc.freeze()  # nothing allocated so far is scanned again: fewer, shorter pauses
            meter = CpuMeter(pids)
            for size, direct_first in _blocks(n, block):
                order = [(direct, sc.direct), (gateway, sc.gateway)]
                for client, side in order if direct_first else order[::-1]:
                    await run_block(client, size, sc.concurrency, sc.stream, side)
            sc.cpu = meter.read()
            gc.unfreeze()
    return expert


# --- report ---------------------------------------------------------------------------------


def _row(label: str, s: dict[str, Any], key: str) -> str:
    d, g, a = s["direct"], s["gateway"], s["added"]
    k = key.replace("_ms", "")
    return f"{label:<22} {d[key]:>9.3f} {g[key]:>9.3f} {a[k + '_added_ms']:>9.3f}"


def render_table(summaries: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The human-readable report."""
    out = [
        "coe-router gateway overhead (keyword routing, model 'coe', coding prompt)",
        f"  {meta['machine_note']}",
        f"  pinning: {meta['pinning']}",
        f"  load generator: httpx {httpx.__version__} on {meta['loadgen_loop']}; "
        f"python {meta['python']}",
        "",
        f"{'latency (ms)':<22} {'direct':>9} {'gateway':>9} {'added':>9}",
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
                f"  p50 added per block pair: min {blocks['min']:.3f}, "
                f"median {blocks['median']:.3f}, max {blocks['max']:.3f}"
            )
        out.append(
            f"  requests/s             {s['direct']['rps']:>9.0f} {s['gateway']['rps']:>9.0f}"
        )
        cpu = s.get("cpu")
        if cpu:
            noisy = "  <- NOT QUIET: numbers inflated" if cpu["background_cpus"] > 0.1 else ""
            out.append(
                f"  CPUs busy: {cpu['busy_cpus']:.2f} (bench {cpu['bench_cpus']:.2f}, "
                f"background {cpu['background_cpus']:.2f}){noisy}"
            )
            out.append(
                f"  gateway CPU per request: {cpu['gateway_cpu_ms_per_req']:.3f} ms; "
                f"stub: {cpu['stub_cpu_ms_per_req']:.3f} ms"
            )
    c1 = summaries["c1"]["added"]["p50_added_ms"]
    verdict = "MEETS" if c1 <= TARGET_P50_ADDED_MS else "MISSES"
    out += ["", f"p50 added at c=1: {c1:.3f} ms -> {verdict} the target "
                f"(<= {TARGET_P50_ADDED_MS} ms)"]  # fmt: skip
    return "\n".join(out)


# --- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="small run (seconds), for smoke tests")
    p.add_argument("--n1", type=int, help="measured requests per target at c=1 (default 2000)")
    p.add_argument("--n16", type=int, help="measured requests per target at c=16 (default 4000)")
    p.add_argument("--n-stream", type=int, help="streamed requests per target at c=1 "
                   "(default n1/4; 0 skips the streaming row)")  # fmt: skip
    p.add_argument("--warmup", type=int, help="warm-up requests per target per scenario")
    p.add_argument("--pin", choices=["auto", "split", "none"], default="auto",
                   help="CPU placement: split = gateway alone on the last CPU, load generator "
                   "and stub on the rest; auto = split when there are >= 2 CPUs")  # fmt: skip
    p.add_argument("--no-uvloop", action="store_true", help="load generator on stdlib asyncio")
    p.add_argument("--json", action="store_true", help="also print one JSON object, last line")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the logs")
    return p


def _placement(mode: str) -> tuple[set[int] | None, set[int] | None, str]:
    """(gateway CPUs, load generator and stub CPUs, description)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None, "none (no sched_setaffinity on this platform)"
    if mode == "none" or (mode == "auto" and len(cpus) < 2):
        return None, None, f"none (OS places all three processes on CPUs {cpus})"
    if len(cpus) < 2:
        return None, None, f"none (only CPU {cpus} available; split needs 2)"
    gw, rest = {cpus[-1]}, set(cpus[:-1])
    return (
        gw,
        rest,
        (
            f"split: gateway alone on CPU {cpus[-1]}; load generator and stub share "
            f"CPU(s) {sorted(rest)}"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (target met or not), 1 when over 1% of requests failed."""
    args = _parser().parse_args(argv)
    n1 = args.n1 or (300 if args.quick else 2000)
    n16 = args.n16 or (600 if args.quick else 4000)
    n_stream = n1 // 4 if args.n_stream is None else args.n_stream
    warmup = args.warmup if args.warmup is not None else (50 if args.quick else 300)
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

    # SIGTERM must unwind through the finally below, so the children are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="coe-bench-"))
    stub: subprocess.Popen[bytes] | None = None
    gateway: GatewayProcess | None = None
    keep_logs = args.keep_logs
    try:
        if rest_cpus:
            os.sched_setaffinity(0, rest_cpus)
        stub, stub_url = start_stub(tmp / "stub.log", cpus=rest_cpus)
        wait_http(stub_url + "/health", stub, 10, lambda: tail(tmp / "stub.log"))
        write_catalog(tmp / "catalog.yaml", stub_url)
        gateway = launch_gateway(
            tmp, tmp / "catalog.yaml", args=["--no-launch"], timeout_s=60, cpus=gw_cpus,
            # The caller's COE_* settings (API keys, catalog...) must not change what is
            # measured. Health checks are not on the request path; on a busy shared machine
            # one can stall past the default 2 s timeout and take the stub out of rotation.
            keep_coe_env=False,
            env={"COE_SERVER__LOG_LEVEL": "warning", "COE_UPSTREAM__HEALTH_TIMEOUT_S": "10"},
        )  # fmt: skip
        gateway_url = gateway.url
        log(f"stub {stub_url} (pid {stub.pid}), gateway {gateway_url} "
            f"(pid {gateway.process.pid}); logs in {tmp}")  # fmt: skip

        scenarios = [
            (Scenario("c1", 1, False), warmup, n1, 100),
            (Scenario("c16", 16, False), warmup * 2, n16, 400),
        ]
        if n_stream > 0:
            scenarios.append((Scenario("stream_c1", 1, True), warmup, n_stream, 100))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            pids = {"loadgen": os.getpid(), "stub": stub.pid, "gateway": gateway.process.pid}
            expert = runner.run(measure(stub_url, gateway_url, scenarios, pids))
        for proc, name in ((stub, "stub"), (gateway.process, "gateway")):
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} exited during the run ({proc.returncode})")
    except BaseException:
        keep_logs = True
        log(f"benchmark failed; logs kept in {tmp}")
        raise
    finally:
        if gateway is not None:
            gateway.stop(5)
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
            f"{cpu_count} CPU(s) shared by load generator, gateway and stub: absolute numbers "
            "are this machine's; 'added' is the comparable figure"
        ),
        "pinning": pinning,
        "loadgen_loop": loop_name,
        "gateway_server": f"uvicorn, 1 worker, loop {gw_loop}, http {gw_http}, access log off",
        "routing": "keyword",
        "routed_to": expert,
        "prompt": PROMPT,
    }
    print(render_table(summaries, meta))
    requests = sum(
        s[k]["n"] + s[k]["errors"] for s in summaries.values() for k in ("direct", "gateway")
    )
    errors = sum(s[k]["errors"] for s in summaries.values() for k in ("direct", "gateway"))
    for sc, *_ in scenarios:
        for side in (sc.direct, sc.gateway):
            for sample in side.error_samples:
                log(f"{sc.name}: {sample}")
    cpu_c1 = summaries["c1"].get("cpu") or {}
    backgrounds = [s["cpu"]["background_cpus"] for s in summaries.values() if s.get("cpu")]
    meta["background_cpus_max"] = max(backgrounds) if backgrounds else None
    meta["quiet"] = bool(backgrounds) and max(backgrounds) <= 0.1
    if args.json:
        c1 = summaries["c1"]
        result: dict[str, Any] = {
            **_headline(summaries),
            "gateway_cpu_ms_per_req_c1": cpu_c1.get("gateway_cpu_ms_per_req"),
            "errors": errors,
            "target_p50_added_ms": TARGET_P50_ADDED_MS,
            "meets_target": c1["added"]["p50_added_ms"] <= TARGET_P50_ADDED_MS,
            "n_c1": n1,
            "n_c16": n16,
            "n_stream_c1": n_stream,
            "scenarios": _rounded(summaries),
            **meta,
        }
        print(json.dumps(_rounded(result), separators=(",", ":")))
    if errors > 0.01 * requests:
        log(f"{errors} of {requests} requests failed: the numbers above are not trustworthy")
        return 1
    return 0


def _headline(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The flat figures of the JSON line: added latency, requests/s and p50 per side.

    Keys as before: ``p50_added_ms`` (c=1), ``p50_added_ms_c16``, ``rps_c1``,
    ``rps_direct_c16``, ``p50_gateway_ms_c1``, ...
    """
    out: dict[str, float] = {}
    for sc in ("c1", "c16"):
        s, suffix = summaries[sc], "" if sc == "c1" else "_c16"
        for q in ("p50", "p99"):
            out[f"{q}_added_ms{suffix}"] = round(s["added"][f"{q}_added_ms"], 4)
    for sc in ("c16", "c1"):
        s = summaries[sc]
        out[f"rps_{sc}"] = round(s["gateway"]["rps"], 1)
        out[f"rps_direct_{sc}"] = round(s["direct"]["rps"], 1)
    for sc in ("c1", "c16"):
        for side in ("direct", "gateway"):
            out[f"p50_{side}_ms_{sc}"] = round(summaries[sc][side]["p50_ms"], 4)
    return out


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
    sys.exit(main())
