"""Fake vLLM replicas with sleep mode, for ``httpx.MockTransport``: the tiered pool's test bed.

Each replica follows vLLM 0.32's dev endpoints (``entrypoints/serve/dev/sleep`` and
``dev/rpc``) as vLLM implements them:

* ``POST /sleep?level=1|2&mode=...``: level 1 moves the weights to CPU RAM and drops the
  KV cache; level 2 drops both. Answers ``{"status": "sleeping", "level": N}``.
* ``POST /wake_up`` with optional repeated ``tags`` (``weights``, ``kv_cache``): no tags
  wakes everything. Weights dropped at level 2 come back *allocated but unloaded*: the
  replica then answers garbage until ``reload_weights`` ran, as a real engine would.
  Answers ``{"status": "awake" | "sleeping", "tags": [...] | null}``.
* ``POST /collective_rpc {"method": "reload_weights"}``: loads the weights from "disk".
* ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``.

A shared :class:`FakeGPU` tracks the memory each device holds and records every
moment it exceeded its capacity, so tests can check the pool's budget invariant.
Memory is claimed when a wake *starts* and freed when a sleep *ends* (worst case).
Latencies are configurable per replica; they run on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from tests.fakes import completion

Weights = Literal["gpu", "cpu", "none", "unloaded"]


@dataclass
class FakeGPU:
    """Memory per device, with a log of every over-commitment."""

    capacity_gb: dict[str, float]
    used_gb: dict[str, float] = field(default_factory=dict)
    peak_gb: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def claim(self, device: str, gb: float, who: str) -> None:
        used = self.used_gb.get(device, 0.0) + gb
        self.used_gb[device] = used
        self.peak_gb[device] = max(self.peak_gb.get(device, 0.0), used)
        if used > self.capacity_gb[device] + 1e-9:
            self.violations.append(f"{who}: {device} at {used:.1f}/{self.capacity_gb[device]} GB")

    def free(self, device: str, gb: float) -> None:
        self.used_gb[device] = self.used_gb.get(device, 0.0) - gb


@dataclass
class SleepReplica:
    """State and timings of one fake replica."""

    name: str
    memory_gb: float
    device: str = "gpu0"
    weights: Weights = "gpu"
    kv_cache: bool = True
    level: int | None = None
    sleep_s: dict[int, float] = field(default_factory=lambda: {1: 0.0, 2: 0.0})
    #: Level 1 wake: weights back from CPU RAM.
    wake_s: float = 0.0
    #: Level 2: reloading weights from disk.
    reload_s: float = 0.0
    generate_s: float = 0.0
    #: Fail the next wake_up with a 500 (a driver error).
    fail_wake: bool = False
    calls: list[str] = field(default_factory=list)
    answers: int = 0

    @property
    def sleeping(self) -> bool:
        return not (self.weights == "gpu" or self.weights == "unloaded") or not self.kv_cache

    @property
    def on_gpu(self) -> bool:
        return self.weights in ("gpu", "unloaded")


@dataclass
class FakeSleepFleet:
    """Many sleep-mode replicas behind one MockTransport, addressed by host name."""

    gpu: FakeGPU
    replicas: dict[str, SleepReplica] = field(default_factory=dict)

    def add(self, replica: SleepReplica, *, awake: bool = True) -> str:
        """Register ``replica`` (awake claims its memory now); returns its base URL."""
        if not awake:
            replica.weights, replica.kv_cache, replica.level = "none", False, 2
        elif replica.on_gpu:
            self.gpu.claim(replica.device, replica.memory_gb, replica.name)
        self.replicas[replica.name] = replica
        return f"http://{replica.name}:8000"

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        r = self.replicas[request.url.host]
        path = request.url.path
        query = f"?{request.url.query.decode()}" if request.url.query else ""
        r.calls.append(f"{request.method} {path}{query}")
        if path == "/health":
            return httpx.Response(200)
        if path == "/is_sleeping":
            return httpx.Response(200, json={"is_sleeping": r.sleeping})
        if path == "/sleep" and request.method == "POST":
            return await self._sleep(r, int(request.url.params.get("level", "1")))
        if path == "/wake_up" and request.method == "POST":
            tags = request.url.params.get_list("tags") or None
            return await self._wake(r, tags)
        if path == "/collective_rpc" and request.method == "POST":
            body = json.loads(await request.aread())
            if body.get("method") != "reload_weights":
                return httpx.Response(400, json={"detail": "unknown method"})
            if r.weights not in ("unloaded", "gpu"):
                return httpx.Response(500, json={"detail": "weights are not allocated"})
            await asyncio.sleep(r.reload_s)
            r.weights = "gpu"
            return httpx.Response(200, json={"results": [None]})
        if path == "/v1/chat/completions":
            body = json.loads(await request.aread())
            if r.sleeping:
                return httpx.Response(503, json={"error": {"message": "engine is sleeping"}})
            await asyncio.sleep(r.generate_s)
            r.answers += 1
            text = (
                "<garbage: weights not reloaded>"
                if r.weights == "unloaded"
                else f"{r.name} says hi"
            )
            return httpx.Response(200, json=completion(body, text))
        return httpx.Response(404, json={"detail": "Not Found"})

    async def _sleep(self, r: SleepReplica, level: int) -> httpx.Response:
        if r.sleeping:
            # vLLM's executor: "if self.is_sleeping: logger.warning(...); return".
            return httpx.Response(200, json={"status": "sleeping", "level": level})
        await asyncio.sleep(r.sleep_s.get(level, 0.0))
        if r.on_gpu:
            self.gpu.free(r.device, r.memory_gb)
        r.weights = "cpu" if level == 1 else "none"
        r.kv_cache, r.level = False, level
        return httpx.Response(200, json={"status": "sleeping", "level": level})

    async def _wake(self, r: SleepReplica, tags: list[str] | None) -> httpx.Response:
        if r.fail_wake:
            r.fail_wake = False
            return httpx.Response(500, json={"detail": "CUDA out of memory"})
        if (tags is None or "weights" in tags) and not r.on_gpu:
            self.gpu.claim(r.device, r.memory_gb, r.name)
            if r.weights == "cpu":
                await asyncio.sleep(r.wake_s)
                r.weights = "gpu"
            else:  # level 2: memory back, contents not
                r.weights = "unloaded"
        if tags is None or "kv_cache" in tags:
            r.kv_cache = True
        if not r.sleeping:
            r.level = None
        return httpx.Response(200, json={"status": "sleeping" if r.sleeping else "awake",
                                         "tags": tags})  # fmt: skip


def as_dict(replica: SleepReplica) -> dict[str, Any]:
    """A replica's state, for assertion messages."""
    return {"weights": replica.weights, "kv": replica.kv_cache, "level": replica.level}
