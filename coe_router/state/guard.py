"""Degrading gracefully when the store fails: count it, log it (rarely), skip it a while.

:class:`StateGuard` wraps each store call. A failure is counted in
``coe_state_errors_total{op}`` and logged at most once per ``log_interval_s`` per
operation (with how many were not logged), then the store is skipped for
``retry_interval_s``: a Redis that is down or blackholed costs one timeout, not one per
request. The first call after the interval goes through, and redis-py reconnects.

:class:`Background` runs fire-and-forget writes (decision log, affinity, cache fills,
token counts) on a bounded queue with a few workers, so no request waits on them and a
stuck store cannot pile up tasks or memory: past the bound, writes are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from coe_router.errors import StateUnavailable
from coe_router.metrics import Metrics
from coe_router.state.base import StateStore

log = logging.getLogger("coe_router.state")
T = TypeVar("T")


class StateGuard:
    """Counts, logs and short-circuits failing store operations."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        retry_interval_s: float = 1.0,
        log_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._retry_interval_s = retry_interval_s
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._skip_until = 0.0
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    @property
    def healthy(self) -> bool:
        """False while calls are being skipped after a failure."""
        return self._clock() >= self._skip_until

    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()``; on failure count, maybe log, and raise StateUnavailable."""
        if not self.healthy:
            self._failed(op, None)
            raise StateUnavailable(f"state store skipped after a recent failure ({op})")
        try:
            result = await fn()
        except StateUnavailable as exc:
            self._skip_until = self._clock() + self._retry_interval_s
            self._failed(op, exc)
            raise
        if self._logged_at:  # it failed before: say once that it is back
            self._recovered()
        return result

    async def quietly(self, op: str, fn: Callable[[], Awaitable[T]], default: T) -> T:
        """:meth:`call`, but ``default`` instead of an exception: for uses that may be skipped."""
        try:
            return await self.call(op, fn)
        except StateUnavailable:
            return default

    def _failed(self, op: str, exc: StateUnavailable | None) -> None:
        self._metrics.state_errors.labels(op).inc()
        now = self._clock()
        last = self._logged_at.get(op)
        if last is not None and now - last < self._log_interval_s:
            self._unlogged[op] = self._unlogged.get(op, 0) + 1
            return
        self._logged_at[op] = now
        hidden = self._unlogged.pop(op, 0)
        log.warning(
            "state store failing on %s: %s; serving without it (%d more failure(s) not logged "
            "since the last line)", op, exc or "skipped after a recent failure", hidden,
        )  # fmt: skip

    def _recovered(self) -> None:
        hidden = sum(self._unlogged.values())
        self._logged_at.clear()
        self._unlogged.clear()
        log.info("state store answering again (%d failure(s) not logged before)", hidden)


class Background:
    """A bounded queue of fire-and-forget store writes, run by a few workers."""

    def __init__(
        self, guard: StateGuard, metrics: Metrics, *, max_pending: int = 1024, workers: int = 8
    ) -> None:
        self._guard = guard
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[str, Callable[[], Awaitable[object]]]] = asyncio.Queue(
            max_pending
        )
        self._n_workers = workers
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the workers (on the running loop)."""
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n_workers)]

    def submit(self, op: str, fn: Callable[[], Awaitable[object]]) -> None:
        """Queue ``fn`` to run soon; never waits. Dropped (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((op, fn))
        except asyncio.QueueFull:
            self._metrics.state_errors.labels(f"{op}_dropped").inc()

    async def drain(self) -> None:
        """Wait until everything submitted so far has run (tests, shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            op, fn = await self._queue.get()
            try:
                await self._guard.quietly(op, fn, None)
            except Exception:  # a bug in a write must not kill the worker
                log.exception("background state write %s failed", op)
            finally:
                self._queue.task_done()

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Let queued writes finish for up to ``timeout_s``, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.drain()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []


@dataclass(frozen=True, slots=True)
class StoreAccess:
    """How a feature reaches the store: the store itself, the guard every call goes
    through, and the background writer for fire-and-forget writes."""

    store: StateStore
    guard: StateGuard
    background: Background
