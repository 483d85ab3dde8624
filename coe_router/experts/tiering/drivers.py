"""Residency drivers: how one expert actually moves between tiers.

:class:`VLLMSleepDriver` uses vLLM's sleep-mode API (server started with
``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``), exactly as vLLM 0.32's
``entrypoints/serve/dev/sleep`` and ``dev/rpc`` routers define it:

* ``POST /sleep?level=1|2&mode=wait``: level 1 offloads weights to CPU RAM and drops
  the KV cache; level 2 drops both. ``mode=wait`` lets running requests finish.
* ``POST /wake_up``: wakes everything (level 1 only: the weights come back from RAM).
* After level 2 the weights must be reloaded before serving, in vLLM's own order
  (``vllm/snapshot/server.py``): ``POST /wake_up?tags=weights`` (allocate),
  ``POST /collective_rpc {"method": "reload_weights"}`` (load from disk), then
  ``POST /wake_up?tags=kv_cache``.
* ``GET /is_sleeping`` -> ``{"is_sleeping": bool}`` (it does not say the level).

These endpoints have no authentication: keep experts on an internal network.

:class:`ProcessDriver` tiers a launched local vLLM by its process (vLLM on CPU
refuses sleep mode): cold = stopped, hot = started and healthy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from coe_router.errors import UpstreamBadResponse, map_httpx_exceptions
from coe_router.experts.process import LocalProcess
from coe_router.experts.replica import Replica
from coe_router.experts.tiering.tiers import Tier

log = logging.getLogger("coe_router.experts.tiering")


class VLLMSleepDriver:
    """Sleep and wake every replica of one expert through vLLM's dev endpoints."""

    can_sleep = True

    def __init__(self, expert: str, replicas: list[Replica], timeout_s: float = 300.0) -> None:
        self._expert = expert
        self._replicas = replicas
        # Sleeping a large model or reloading its weights takes long; generous read timeout.
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        #: The level we put it to sleep at; None when unknown (found asleep at start).
        self._level: int | None = None

    async def _call(self, replica: Replica, method: str, path: str, **kw: Any) -> Any:
        what = f"expert {self._expert!r} at {replica.base_url}{path}"
        with map_httpx_exceptions(what):
            resp = await replica.client.request(method, path, timeout=self._timeout, **kw)
        if resp.status_code != 200:
            raise UpstreamBadResponse(f"{what} answered {resp.status_code}: {resp.text[:200]}")
        return resp.json() if resp.content else None

    async def sleep(self, level: int) -> Tier:
        """``POST /sleep?level=N&mode=wait`` on every replica."""
        await asyncio.gather(*(self._sleep_one(r, level) for r in self._replicas))
        self._level = level
        return Tier.WARM if level == 1 else Tier.COLD

    async def _sleep_one(self, replica: Replica, level: int) -> None:
        # vLLM ignores /sleep while anything still sleeps, and a wake that failed halfway
        # (weights allocated, KV cache not) holds memory yet reports sleeping: finish
        # that wake first so the sleep frees everything.
        state = await self._call(replica, "GET", "/is_sleeping")
        if isinstance(state, dict) and state.get("is_sleeping") is True:
            await self._call(replica, "POST", "/wake_up")
        await self._call(replica, "POST", "/sleep", params={"level": level, "mode": "wait"})

    async def wake(self, from_tier: Tier) -> None:
        """Wake every replica; after level 2 (or an unknown level) reload the weights first.

        One replica down must not keep the others asleep: the wake succeeds when at least
        one replica woke; those that did not are taken out of rotation (down) until a
        health check sees them again. It fails, with the first replica's error, only when
        none woke.
        """
        results = await asyncio.gather(
            *(self._wake_one(r, from_tier) for r in self._replicas), return_exceptions=True
        )
        failed = [(r, e) for r, e in zip(self._replicas, results, strict=True) if e is not None]
        for _, error in failed:
            if not isinstance(error, Exception):  # cancelled, or worse: not ours to absorb
                raise error
        if len(failed) == len(self._replicas):
            raise failed[0][1]
        for replica, error in failed:
            log.warning("expert %r: replica %s did not wake: %s", self._expert,
                        replica.base_url, error)  # fmt: skip
            replica.state, replica.detail = "down", f"did not wake: {type(error).__name__}"
        self._level = None

    async def _wake_one(self, replica: Replica, from_tier: Tier) -> None:
        if from_tier == Tier.WARM and self._level == 1:
            await self._call(replica, "POST", "/wake_up")
        else:
            await self._call(replica, "POST", "/wake_up", params={"tags": "weights"})
            await self._call(replica, "POST", "/collective_rpc", json={"method": "reload_weights"})
            await self._call(replica, "POST", "/wake_up", params={"tags": "kv_cache"})
        state = await self._call(replica, "GET", "/is_sleeping")
        if not isinstance(state, dict) or state.get("is_sleeping") is not False:
            raise UpstreamBadResponse(f"expert {self._expert!r} still sleeps after wake_up")

    async def probe(self) -> Tier:
        """Hot when every replica that answers is awake (and one does); asleep at an unknown
        level counts as cold. A replica that does not answer is down, not asleep."""
        results = await asyncio.gather(
            *(self._call(r, "GET", "/is_sleeping") for r in self._replicas),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        states = [s for s in results if not isinstance(s, BaseException)]
        if states and all(isinstance(s, dict) and s.get("is_sleeping") is False for s in states):
            return Tier.HOT
        # The level is not reported; only a level-1 sleep we did ourselves is known warm.
        return Tier.WARM if self._level == 1 else Tier.COLD


class ProcessDriver:
    """Tier a launched local vLLM by stopping and starting its process."""

    can_sleep = False

    def __init__(self, process: LocalProcess, replica: Replica, poll_s: float = 0.5) -> None:
        self._process = process
        self._replica = replica
        self._poll_s = poll_s

    async def sleep(self, level: int) -> Tier:
        """Stop the process: the expert is cold, whatever the level."""
        await self._process.stop()
        self._replica.state, self._replica.detail = "down", "stopped by the tier scheduler"
        return Tier.COLD

    async def wake(self, from_tier: Tier) -> None:
        """Start the process (unless running) and wait until it passes health checks."""
        if self._process.state not in ("starting", "ready"):
            # A fresh `make run` prepares nothing ahead: the first wake prepares the
            # checkpoint (a no-op once it exists).
            await self._process.prepare()
            if self._process.state == "failed":
                raise RuntimeError(self._process.detail)
            await self._process.start()
        while await self._replica.check_health() != "up":
            if self._process.state in ("exited", "failed"):
                raise RuntimeError(self._process.detail)
            await asyncio.sleep(self._poll_s)

    async def probe(self) -> Tier:
        """Hot while the process runs and answers; cold otherwise."""
        if self._process.state not in ("starting", "ready"):
            return Tier.COLD
        return Tier.HOT if await self._replica.check_health() == "up" else Tier.COLD
