"""One request's bookkeeping, the same on every path: tier hold, metrics, charge, cache fill.

Every chat request, single-expert or synthesis, streamed or not, gets one
:class:`RequestLifecycle`. The request path tells it what happens (``begin`` once the
answering expert is known, ``first_byte``, ``charge`` / ``fill`` after a complete answer)
and ends it exactly once with :meth:`RequestLifecycle.finish`, which releases every tier
hold it took, and counts the request, its latency and its in-flight gauge. Because the
paths share this object, a feature added here (a metric, a limit) cannot skip one of them.

Invariants (checked by tests):

* ``finish`` runs at most once, whatever fails and however often it is called;
* every hold taken with :meth:`RequestLifecycle.occupy` is released by ``finish``;
* the in-flight gauge goes up once in ``begin`` and down once in ``finish``;
* the request's trace span (:mod:`coe_router.tracing`), when given, ends in ``finish``
  with the status, so a streamed request's span covers the whole stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from coe_router import tracing
from coe_router.errors import CoEError
from coe_router.experts.expert import UpstreamStream
from coe_router.experts.pool import ExpertPool
from coe_router.metrics import Metrics
from coe_router.protocol import usage_tokens
from coe_router.shared.cache import CachedAnswer, CachePlan, ResponseCache
from coe_router.shared.ratelimit import RateLimiter
from coe_router.sse import Relay, StreamTap

#: Status recorded when the client hung up before the answer (nginx's convention).
CLIENT_CLOSED = "499"


class ClientDisconnected(Exception):
    """The client went away while we waited on the experts."""


@dataclass(frozen=True, slots=True)
class LifecycleServices:
    """What every request's bookkeeping talks to (built once per app)."""

    metrics: Metrics
    pool: ExpertPool
    limiter: RateLimiter
    cache: ResponseCache


class RequestLifecycle:
    """The bookkeeping of one request, from admission to the end of its answer."""

    def __init__(
        self,
        services: LifecycleServices,
        *,
        model: str,
        caller: str,
        cache_plan: CachePlan | None = None,
        started: float | None = None,
        span: tracing.Span = tracing.NOOP_SPAN,
    ) -> None:
        self._services = services
        #: The request's root span (ended by :meth:`finish`).
        self.span = span
        self.model = model
        self.caller = caller
        self.cache_plan = cache_plan
        self.started = time.perf_counter() if started is None else started
        #: The expert the request is counted under (set by :meth:`begin`).
        self.expert: str | None = None
        self.strategy = ""
        self._releases: list[Callable[[], None]] = []
        self._first_byte_seen = False
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` ran."""
        return self._finished

    @property
    def capture_limit(self) -> int | None:
        """How much of a streamed answer to copy for the cache (None: it is not cached)."""
        return self._services.cache.max_entry_bytes if self.cache_plan is not None else None

    @property
    def counts_tokens(self) -> bool:
        """Whether the caller has a token limit (answers must then report their usage)."""
        return self._services.limiter.counts_tokens(self.caller)

    def begin(self, expert: str, strategy: str) -> None:
        """The request is now in flight on ``expert`` (the one that answers, or merges)."""
        if self.expert is not None:
            return
        self.expert, self.strategy = expert, strategy
        self._services.metrics.in_flight.labels(expert).inc()

    async def occupy(self, expert: str) -> None:
        """Keep ``expert`` awake (waking it first) until :meth:`finish`."""
        pool = self._services.pool
        if pool.scheduler is None or expert not in pool.scheduler.experts:
            release = await pool.acquire(expert)
        else:
            wake_s = pool.expected_wake_s(expert)
            with tracing.tier_span(expert, pool.scheduler.experts[expert].tier.value) as span:
                t0 = time.perf_counter()
                release = await pool.acquire(expert)
                span.set("coe.tier.woke", wake_s > 0)
                span.set("coe.tier.expected_wake_s", wake_s)
                span.set("coe.tier.waited_s", time.perf_counter() - t0)
        if self._finished:  # finished while waiting: give the slot straight back
            release()
        else:
            self._releases.append(release)

    def hold(self, expert: str) -> AbstractAsyncContextManager[None]:
        """Keep ``expert`` awake for one call inside the request (a panel member)."""
        return self._services.pool.hold(expert)

    def first_byte(self) -> None:
        """The first byte of the answer is on its way to the client (time to first token)."""
        if self._first_byte_seen or self.expert is None:
            return
        self._first_byte_seen = True
        self._services.metrics.ttft.labels(self.expert).observe(time.perf_counter() - self.started)

    def count_calls(self, calls: int) -> None:
        """The request makes ``calls`` expert calls (a synthesis: k members and maybe an
        aggregator): count the ones beyond the first against the caller's request limit."""
        self._services.limiter.count_requests(self.caller, calls - 1)

    def charge(self, tokens: int | None) -> None:
        """Count a complete answer's tokens against the caller's token limit."""
        self.span.set("gen_ai.usage.total_tokens", tokens)
        self._services.limiter.charge(self.caller, tokens)

    def fill(self, entry: CachedAnswer) -> None:
        """Keep a complete answer in the response cache (when this request caches)."""
        if self.cache_plan is not None:
            self._services.cache.fill(self.cache_plan, entry)

    def finish(self, status: str, expert: str | None = None) -> None:
        """End the request with ``status`` (idempotent). ``expert`` names who answered
        when that was decided late (synthesis); the in-flight gauge keeps ``begin``'s."""
        if self._finished:
            return
        self._finished = True
        releases, self._releases = self._releases, []
        for release in releases:
            release()
        m = self._services.metrics
        begun = self.expert
        if begun is not None:
            m.in_flight.labels(begun).dec()
        answered = expert or begun or "-"
        m.requests.labels(self.model, answered, self.strategy or "-", status).inc()
        m.latency.labels(answered).observe(time.perf_counter() - self.started)
        self.span.set("coe.expert", answered)
        self.span.set("http.response.status_code", int(status) if status.isdigit() else None)
        if status != "200":
            self.span.fail(f"status {status}")
        self.span.end()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Finish with the right status if the block raises (and let it raise)."""
        try:
            yield
        except ClientDisconnected:
            self.finish(CLIENT_CLOSED)
            raise
        except CoEError as exc:
            self.finish(str(exc.status_code))
            raise
        except BaseException:
            self.finish("500")
            raise

    def relay(
        self, upstream: UpstreamStream, routing_headers: dict[str, str], *, hide_usage: bool
    ) -> StreamTap:
        """The client's stream of ``upstream``: whole events, errors in-band, then on a
        complete answer its tokens charged and its bytes cached; finished either way."""

        def end(status: str) -> None:
            if status == "200":
                self.charge(tap.tokens)
                captured = tap.captured
                if captured is not None:
                    self.fill(CachedAnswer("sse", routing_headers, captured))
            self.finish(status)

        relay = Relay(upstream, on_first_byte=self.first_byte, on_end=end)
        tap = StreamTap(relay, capture_limit=self.capture_limit, hide_usage=hide_usage)
        return tap

    def completed(
        self, result: dict[str, Any], payload: bytes, routing_headers: dict[str, str]
    ) -> None:
        """A non-streamed answer is complete: charge it, cache it, finish with 200."""
        self.charge(usage_tokens(result))
        self.fill(CachedAnswer("json", routing_headers, payload))
        self.finish("200")
