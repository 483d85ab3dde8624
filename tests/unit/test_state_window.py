"""The sliding-window arithmetic, the guard that degrades on store failures, the queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from coe_router.errors import StateUnavailable
from coe_router.metrics import Metrics
from coe_router.state import Background, StateGuard, WindowCounts, admission
from coe_router.state.base import estimate, wait_until_at_most


def test_estimate_weighs_the_previous_window_by_its_overlap() -> None:
    assert estimate(10, 0, 0) == 10
    assert estimate(10, 2, 30) == pytest.approx(7)
    assert estimate(10, 2, 60) == pytest.approx(2)


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed", "cap"),
    [(10, 0, 0, 5), (10, 3, 12, 4), (0, 8, 20, 3), (6, 6, 59, 5), (4, 4, 1, 0)],
)
def test_the_wait_brings_the_estimate_down_to_the_cap(
    prev: int, cur: int, elapsed: float, cap: int
) -> None:
    wait = wait_until_at_most(prev, cur, elapsed, cap)
    assert wait > 0
    at = elapsed + wait
    if at <= 60:
        assert estimate(prev, cur, at) <= cap + 1e-9
        assert estimate(prev, cur, at - 0.01) > cap
    else:  # the current window became the previous one
        assert estimate(cur, 0, at - 60) <= cap + 1e-9


def test_admission_reports_headers_and_which_limit_refused() -> None:
    ok = admission(WindowCounts(True, 4, 100, 0, 0), 10, 10, 1000)
    assert ok.allowed
    assert (ok.requests_remaining, ok.tokens_remaining) == (6, 900)
    assert ok.retry_after_s == 0
    refused = admission(WindowCounts(False, 10, 0, 0, 0), 10, 10, 1000)
    assert refused.limit == "requests"
    assert refused.requests_remaining == 0
    assert refused.retry_after_s == pytest.approx(50 + 60 * (1 - 9 / 10))


class _Boom:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        raise StateUnavailable("redis GET failed: connection refused")


async def test_the_guard_counts_logs_rarely_and_skips_for_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    now = [0.0]
    guard = StateGuard(metrics, retry_interval_s=1.0, log_interval_s=30.0, clock=lambda: now[0])
    boom = _Boom()
    with caplog.at_level(logging.WARNING, logger="coe_router.state"):
        for _ in range(50):
            assert await guard.quietly("cache_get", boom, None) is None
    assert boom.calls == 1  # the rest were skipped without touching the store
    assert not guard.healthy
    assert metrics.state_errors.labels("cache_get")._value.get() == 50
    assert len([r for r in caplog.records if "state store failing" in r.message]) == 1
    now[0] = 1.5  # past the retry interval: the store is tried again
    assert await guard.quietly("cache_get", boom, None) is None
    assert boom.calls == 2

    async def fine() -> int:
        return 7

    now[0] = 3.0
    with caplog.at_level(logging.INFO, logger="coe_router.state"):
        assert await guard.call("cache_get", fine) == 7
    assert any("answering again" in r.message for r in caplog.records)


async def test_background_drops_when_full_and_never_blocks() -> None:
    metrics = Metrics()
    guard = StateGuard(metrics)
    bg = Background(guard, metrics, max_pending=2, workers=1)
    release = asyncio.Event()
    ran: list[int] = []

    def job(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await release.wait()
            ran.append(i)

        return run

    bg.start()
    for i in range(5):
        bg.submit("decision_log", job(i))
    await asyncio.sleep(0)
    release.set()
    await bg.drain()
    await bg.aclose()
    assert len(ran) < 5
    assert metrics.state_errors.labels("decision_log_dropped")._value.get() == 5 - len(ran)
