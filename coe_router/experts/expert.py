"""Calling one expert: pick a replica, send, retry elsewhere before the first byte.

Balancing is least-outstanding-requests over replicas that are up and whose
breaker is closed (ties go round-robin). A failure is retried on another replica
only while nothing has reached the client: for a stream, until its first chunk
has arrived from upstream. What a failure does to the replica, and whether it is
retried, follows its :data:`~coe_router.errors.Verdict`: a non-streamed request that
timed out while the replica generated is not sent again (that would double the load).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from coe_router import tracing
from coe_router.catalog import ExpertSpec
from coe_router.closing import EndOnce
from coe_router.errors import (
    ExpertStarting,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamUnavailable,
    map_httpx_exceptions,
)
from coe_router.experts.replica import (
    Replica,
    Streamed,
    parse_completion,
    parse_object,
    read_capped,
    status_error,
)
from coe_router.metrics import Metrics

T = TypeVar("T")
_PATH = "/v1/chat/completions"
_TOKENIZE = "/tokenize"
#: The token counts of a usage chunk, read from the raw stream only while tracing records.
_USAGE = re.compile(rb'"(prompt_tokens|completion_tokens)":\s*(\d+)')


class UpstreamStream:
    """An open upstream SSE stream whose first chunk already arrived.

    Iterate it for the raw bytes (first chunk included); errors after the first
    chunk surface as :class:`UpstreamError` for the gateway to send in-band.
    Always ``aclose()`` it: that closes the connection, which makes vLLM abort the
    request, and returns the replica's slot.
    """

    def __init__(
        self, replica: Replica, response: Streamed, first: bytes,
        rest: AsyncIterator[bytes], on_close: Callable[[bool], None],
        span: tracing.Span = tracing.NOOP_SPAN,
    ) -> None:  # fmt: skip
        self.replica = replica
        #: The expert call's span, ended when the stream closes.
        self.span = span
        self._response = response
        self._first = first
        self._rest = rest
        self._on_close = on_close
        self._ok = False
        self._close = EndOnce(self._response.aclose, self._closed)
        #: The largest SSE event a reader of this stream should buffer.
        self.max_event_bytes = replica.max_event_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._first
        what = f"expert {self.replica.expert!r} at {self.replica.base_url}"
        traced = self.span.recording
        with map_httpx_exceptions(what):
            async for chunk in self._rest:
                if traced and b'"usage"' in chunk:
                    self._trace_usage(chunk)
                yield chunk
        self._ok = True

    def _trace_usage(self, chunk: bytes) -> None:
        counts = {k.decode(): int(v) for k, v in _USAGE.findall(chunk)}
        tracing.set_expert_result(
            self.span, input_tokens=counts.get("prompt_tokens"),
            output_tokens=counts.get("completion_tokens"),
        )  # fmt: skip

    async def aclose(self) -> None:
        """Close the upstream response and release the replica (idempotent)."""
        await self._close()

    def _closed(self) -> None:
        self._on_close(self._ok)
        if not self._ok:
            self.span.fail("the stream ended early")
        self.span.end()


class ExpertClient:
    """All replicas of one expert, behind one call."""

    def __init__(
        self, spec: ExpertSpec, replicas: list[Replica], metrics: Metrics, max_attempts: int
    ) -> None:
        self.spec = spec
        self.replicas = replicas
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._rr = itertools.count()

    @property
    def name(self) -> str:
        """The expert's catalog name."""
        return self.spec.name

    @property
    def live(self) -> bool:
        """At least one replica is up and not shut out by an open breaker."""
        return any(r.live for r in self.replicas)

    def pick(self, exclude: set[Replica]) -> Replica:
        """The available replica with the fewest requests in flight."""
        candidates = [r for r in self.replicas if r.available and r not in exclude]
        if not candidates:
            raise self.unavailable()
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        return tied[next(self._rr) % len(tied)]

    def unavailable(self) -> UpstreamUnavailable:
        """The error for "no replica can take a request now", saying why."""
        starting = [r for r in self.replicas if r.state == "starting"]
        if starting:
            return ExpertStarting(
                f"expert {self.name!r} is still starting ({starting[0].detail}); retry shortly"
            )
        details = "; ".join(
            f"{r.base_url}: {r.detail or 'breaker ' + r.breaker.state}" for r in self.replicas
        )
        return UpstreamUnavailable(f"expert {self.name!r} has no live replica ({details})")

    async def complete(self, body: dict[str, Any]) -> tuple[dict[str, Any], Replica]:
        """Non-streaming chat completion; returns the upstream JSON and the replica used."""
        payload = _encode(body)
        span = tracing.expert_span(self.name, str(body.get("model")), stream=False)

        async def call(replica: Replica) -> tuple[dict[str, Any], Replica]:
            what = f"expert {self.name!r} at {replica.base_url}"
            headers = {"content-type": "application/json"}
            span.inject(headers)
            tracing.set_expert_result(span, replica=replica.base_url)
            with map_httpx_exceptions(what):
                streamed = await replica.send(_PATH, payload, headers)
                try:
                    resp = await read_capped(streamed, replica.max_response_bytes, what)
                finally:
                    await streamed.aclose()
            tracing.set_expert_result(span, status=resp.status_code)
            return parse_completion(resp, what), replica

        with span:
            result = await self._with_retries(call, release_on_success=True, streaming=False)
            if span.recording:
                _trace_completion(span, result[0])
        return result

    async def stream(self, body: dict[str, Any]) -> UpstreamStream:
        """Open a streaming chat completion and wait for its first chunk."""
        payload = _encode(body)
        span = tracing.expert_span(self.name, str(body.get("model")), stream=True)
        started = time.perf_counter()

        async def call(replica: Replica) -> UpstreamStream:
            what = f"expert {self.name!r} at {replica.base_url}"
            headers = {"content-type": "application/json", "accept": "text/event-stream"}
            span.inject(headers)
            tracing.set_expert_result(span, replica=replica.base_url)
            with map_httpx_exceptions(what):
                resp = await replica.send(_PATH, payload, headers)
            tracing.set_expert_result(span, status=resp.status_code)
            try:
                with map_httpx_exceptions(what):
                    if resp.status_code != 200:
                        read = await read_capped(resp, replica.max_response_bytes, what)
                        raise status_error(read, what)
                    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                        raise UpstreamBadResponse(f"{what} did not answer with an event stream")
                    chunks = resp.aiter_bytes()
                    first = b""
                    while not first:  # skip empty reads; only real bytes count as "first"
                        try:
                            first = await anext(chunks)
                        except StopAsyncIteration:
                            raise UpstreamBadResponse(f"{what} closed the stream empty") from None
            except BaseException:
                await resp.aclose()
                raise
            tracing.set_expert_result(span, ttft_s=time.perf_counter() - started)
            return UpstreamStream(
                replica, resp, first, chunks, on_close=lambda ok: self._release(replica, ok),
                span=span,
            )  # fmt: skip

        try:
            return await self._with_retries(call, release_on_success=False, streaming=True)
        except BaseException as exc:
            span.fail(exc)
            span.end()
            raise

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``POST /tokenize`` on one available replica (no retries: callers fall
        back to an estimate). Raises :class:`UpstreamError` when it cannot answer."""
        replica = self.pick(set())
        what = f"expert {self.name!r} at {replica.base_url}"
        headers = {"content-type": "application/json"}
        tracing.tracer().inject(headers)
        with map_httpx_exceptions(what):
            resp = await replica.client.post(_TOKENIZE, content=_encode(body), headers=headers)
        return parse_object(resp, f"{what}/tokenize")

    async def _with_retries(
        self, call: Callable[[Replica], Awaitable[T]], *, release_on_success: bool, streaming: bool
    ) -> T:
        tried: set[Replica] = set()
        last: UpstreamError | None = None
        for _ in range(self._max_attempts):
            try:
                replica = self.pick(tried)
            except UpstreamUnavailable:
                if last is not None:
                    raise last from None
                raise
            tried.add(replica)
            if not replica.breaker.acquire():
                continue
            replica.outstanding += 1
            try:
                result = await call(replica)
            except UpstreamError as exc:
                replica.outstanding -= 1
                self._metrics.upstream_errors.labels(self.name, exc.kind).inc()
                replica.record(exc)
                if not exc.retry_elsewhere(streaming=streaming):
                    raise
                last = exc
                continue
            except BaseException:
                # Cancelled (client went away) or a bug: no verdict on the replica.
                replica.outstanding -= 1
                replica.breaker.release()
                raise
            if release_on_success:
                self._release(replica, True)
            return result
        assert last is not None
        raise last

    def _release(self, replica: Replica, ok: bool) -> None:
        replica.outstanding -= 1
        if ok:
            replica.breaker.record_success()
        else:
            replica.breaker.release()


def _trace_completion(span: tracing.Span, result: dict[str, Any]) -> None:
    raw = result.get("usage")
    usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    choices = result.get("choices") or [{}]
    finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    tracing.set_expert_result(
        span, input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        finish_reason=finish if isinstance(finish, str) else None,
    )  # fmt: skip


def _encode(body: dict[str, Any]) -> bytes:
    # Encoded once per request and reused by every attempt.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
