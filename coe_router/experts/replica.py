"""One replica of an expert: its HTTP client, health, load and circuit breaker."""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

import httpx

from coe_router.config import UpstreamSettings
from coe_router.errors import UpstreamBadResponse, UpstreamError, UpstreamStatusError
from coe_router.experts import http1
from coe_router.experts.breaker import CircuitBreaker
from coe_router.experts.process import WAITING_STATES, LocalProcess

ReplicaState = Literal["starting", "up", "down"]
#: An upstream answer whose head arrived: httpx's, or the lean client's.
Streamed = httpx.Response | http1.Response


class ReadAnswer(Protocol):
    """An upstream answer whose body was read."""

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""


class Answer:
    """A body read in full (and capped) by :func:`read_capped`."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.content)


class Replica:
    """A vLLM (or any OpenAI-compatible) server behind one base URL.

    Owns one ``httpx.AsyncClient`` with explicit timeouts (health checks, ``/tokenize``,
    sleep mode, and every call when a test injects a transport or the URL is https), and
    for chat calls over plain http the lean :class:`~coe_router.experts.http1.ConnectionPool`
    with the same timeouts (httpx cost most of the gateway's CPU per relayed request).
    ``outstanding`` counts requests in flight for least-outstanding balancing.
    """

    def __init__(
        self,
        expert: str,
        base_url: str,
        settings: UpstreamSettings,
        *,
        process: LocalProcess | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.expert = expert
        self.base_url = base_url
        self.process = process
        self.outstanding = 0
        self.state: ReplicaState = "starting" if process is not None else "up"
        self.detail = ""
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self._health_timeout = httpx.Timeout(settings.health_timeout_s)
        #: Bodies of non-streamed answers above this many bytes are refused (502).
        self.max_response_bytes = settings.max_response_bytes
        #: One SSE event of a stream above this many bytes ends it (502 in-band).
        self.max_event_bytes = settings.max_event_bytes
        self.client = httpx.AsyncClient(
            base_url=base_url,
            # We relay bytes as they come; compression would only cost CPU on both ends
            # (and a compressed body can expand without bound before any cap sees it).
            headers={"accept-encoding": "identity"},
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.write_timeout_s,
                pool=settings.pool_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
        )
        self._lean: http1.ConnectionPool | None = None
        if transport is None and base_url.startswith("http://"):
            timeouts = http1.Timeouts(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.write_timeout_s,
                pool=settings.pool_timeout_s,
            )
            self._lean = http1.ConnectionPool(base_url, timeouts, settings.max_connections)

    async def send(self, path: str, payload: bytes, headers: dict[str, str]) -> Streamed:
        """``POST`` ``payload`` to ``path``; returns once the answer's head arrived (read or
        iterate its body, then ``aclose`` it). Raises httpx's exceptions."""
        if self._lean is not None:
            # We relay bytes as they come; compression would only cost CPU on both ends.
            headers["accept-encoding"] = "identity"
            return await self._lean.request("POST", path, payload, headers, stream=True)
        request = self.client.build_request("POST", path, content=payload, headers=headers)
        return await self.client.send(request, stream=True)

    @property
    def available(self) -> bool:
        """Up and not shut out by its breaker: may take a request right now."""
        return self.state == "up" and self.breaker.allows()

    @property
    def live(self) -> bool:
        """Up and its breaker not open (a half-open breaker will let a trial through)."""
        return self.state == "up" and self.breaker.state != "open"

    def describe(self) -> dict[str, Any]:
        """State for ``/ready`` and logs."""
        out: dict[str, Any] = {
            "url": self.base_url,
            "state": self.state,
            "breaker": self.breaker.state,
            "outstanding": self.outstanding,
        }
        if self.detail:
            out["detail"] = self.detail
        return out

    def record(self, exc: UpstreamError) -> None:
        """A request failed on this replica: act on the failure's verdict.

        Only a replica's own failures feed its breaker; a slow generation or a full
        connection pool says nothing about its health, and a 4xx proves it answers.
        """
        if exc.verdict == "fine":
            self.breaker.record_success()
        elif exc.replica_fault:
            self.breaker.record_failure()
            if exc.verdict == "down":
                self.state, self.detail = "down", exc.message
        else:
            self.breaker.release()

    async def check_health(self) -> ReplicaState:
        """Poll ``GET /health`` once and update :attr:`state`."""
        proc = self.process
        if proc is not None and proc.state in ("exited", "stopped", "failed"):
            self.state, self.detail = "down", proc.detail
            return self.state
        if proc is not None and proc.state in WAITING_STATES:
            self.state, self.detail = "starting", proc.detail  # nothing listens yet
            return self.state
        if self._lean is not None:
            self._lean.prune()  # an idle gateway lets its idle keep-alive connections go
        try:
            resp = await self.client.get("/health", timeout=self._health_timeout)
            healthy = resp.status_code == 200
            detail = "" if healthy else f"/health answered {resp.status_code}"
        except httpx.HTTPError as exc:
            healthy, detail = False, f"/health failed: {type(exc).__name__}"
        if healthy:
            if proc is not None:
                proc.mark_ready()
            if self.state != "up":
                # A replica that came back deserves a fresh breaker.
                self.breaker.record_success()
            self.state, self.detail = "up", ""
        elif proc is not None and proc.state == "starting":
            self.state = "starting"
            self.detail = f"loading for {proc.elapsed_s:.0f} s"
        else:
            self.state, self.detail = "down", detail
        return self.state

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        if self._lean is not None:
            await self._lean.aclose()
        await self.client.aclose()


async def read_capped(resp: Streamed, limit: int, what: str) -> Answer:
    """The response with its body read, at most ``limit`` bytes of it (decoded), or a 502.

    Call it inside :func:`~coe_router.errors.map_httpx_exceptions`: reading may fail.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise UpstreamBadResponse(f"{what} sent a body larger than {limit} bytes")
        parts.append(chunk)
    return Answer(resp.status_code, b"".join(parts))


def parse_object(resp: ReadAnswer, what: str) -> dict[str, Any]:
    """A 200 response's JSON object, or the right error (the status, or a bad body)."""
    if resp.status_code != 200:
        raise status_error(resp, what)
    try:
        body = resp.json()
    except ValueError:
        raise UpstreamBadResponse(f"{what} sent a body that is not JSON") from None
    if not isinstance(body, dict):
        raise UpstreamBadResponse(f"{what} sent JSON that is not an object")
    return body


def parse_completion(resp: ReadAnswer, what: str) -> dict[str, Any]:
    """Turn a non-streaming upstream response into its JSON body, or the right error."""
    body = parse_object(resp, what)
    if not isinstance(body.get("choices"), list):
        raise UpstreamBadResponse(f"{what} sent JSON that is not a chat completion")
    return body


def status_error(resp: ReadAnswer, what: str) -> UpstreamError:
    """The error for a non-200 upstream answer (the body must already be read)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
        return UpstreamStatusError(resp.status_code, body if isinstance(body, dict) else {})
    message = f"{what} answered HTTP {resp.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message += f": {body['error'].get('message', '')}"
    # An overloaded replica (429/503) is alive: report 503 but do not mark it down; a 429
    # says it is busy, not broken (no verdict), every 5xx is a failure of the replica.
    return UpstreamError(
        message,
        status_code=503 if resp.status_code in (429, 503) else 502,
        verdict="busy" if resp.status_code == 429 else "failed",
    )
