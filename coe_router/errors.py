"""The one error tree of coe-router, and the boundary translation into it.

Every failure a client can see is a :class:`CoEError`; each knows its HTTP
status and renders the single OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``::

    CoEError                              500 internal_error
    ├── InvalidRequest                    400 invalid_request_error
    │   └── BodyTooLarge                  413
    ├── AuthenticationError               401 authentication_error
    ├── PermissionDenied                  403 permission_error
    ├── ModelNotFound                     404 invalid_request_error / model_not_found
    ├── UpstreamError                     502 upstream_error   (the expert failed us)
    │   ├── UpstreamStatusError           the expert's own 4xx, passed on as it came
    │   ├── UpstreamBadResponse           502 the expert sent something that is not OpenAI JSON
    │   ├── UpstreamUnavailable           503 no live replica: down, refused, breaker open
    │   │   ├── ExpertStarting            503 the replica's process is still loading
    │   │   └── UpstreamSaturated         503 our connection pool to the replica is full
    │   └── UpstreamTimeout               504 the expert did not answer in time
    ├── RateLimited                       429 rate_limit_error / rate_limit_exceeded (+ headers)
    ├── StateUnavailable                  503 state_unavailable: the shared state store failed
    ├── ConfigError                       startup only: bad settings or catalog
    └── ModelPrepareError                 `coe-router models prepare` (modelprep/)

httpx exceptions are translated exactly once, in :func:`map_httpx_exceptions`,
where the expert client calls its replica; nothing above ``experts/`` sees httpx. Each
:class:`UpstreamError` carries a :data:`Verdict` (what the failure says about the replica),
from which the breaker, the retries and the cross-expert fallback decide.
redis exceptions are translated exactly once too, inside ``coe_router/state/`` (the only
package that imports redis), into :class:`StateUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from coe_router.request_id import current_request_id

log = logging.getLogger("coe_router.errors")
#: What a failed upstream call says about the replica that had it:
#:
#: * ``down``: it cannot be reached (refused): out of rotation until a health check passes;
#: * ``failed``: it answered badly or broke the connection (5xx, garbage): feeds its breaker;
#: * ``slow``: it has the request and is working on it (read timeout after the request was
#:   sent): no verdict, and a non-streamed request is not sent again (it would double the load);
#: * ``busy``: it, or our connection pool to it, is saturated (429, pool timeout): no verdict;
#: * ``fine``: it answered, about the request itself (a 4xx): a success for its breaker,
#:   and nobody else is asked.
Verdict = Literal["down", "failed", "slow", "busy", "fine"]


class CoEError(Exception):
    """Base of every error coe-router raises on purpose."""

    status_code: int = 500
    error_type: str = "internal_error"
    default_code: str | None = None
    #: What a client is told when the message is not for clients (None: the message).
    #: Upstream errors set it: their messages name replica URLs and repeat the expert's
    #: own error text, which go to the log, with the request id, instead.
    client_text: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status_code is not None:
            self.status_code = status_code

    @property
    def public_message(self) -> str:
        """The message, or :attr:`client_text` and the request id to find it in the log."""
        if self.client_text is None:
            return self.message
        rid = current_request_id()
        return f"{self.client_text} (request id {rid})" if rid else self.client_text

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body, with :attr:`public_message`. An error whose message
        is kept from the client is logged here: once for each time a client is told."""
        if self.client_text is not None:
            log.warning("request %s: %s", current_request_id() or "-", self.message)
        return error_body(self.public_message, self.error_type, self.param, self.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build ``{"error": {...}}`` with the four fields in OpenAI's order."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidRequest(CoEError):
    """The request is malformed or asks for something out of range."""

    status_code = 400
    error_type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    """The request body exceeds the configured size limit."""

    status_code = 413
    default_code = "request_too_large"


class AuthenticationError(CoEError):
    """Missing or wrong API key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(CoEError):
    """The key is valid but may not do this (admin routes)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"


class ModelNotFound(CoEError):
    """``model`` names neither a virtual model nor an expert."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class UpstreamError(CoEError):
    """An expert replica failed to give a usable answer."""

    status_code = 502
    error_type = "upstream_error"
    client_text: str | None = "The expert failed to give a usable answer."
    default_code = "upstream_error"
    #: Short label for metrics (``coe_upstream_errors_total{kind}``).
    kind: str = "error"
    #: The class's usual :data:`Verdict` on the replica.
    default_verdict: Verdict = "failed"

    def __init__(self, message: str, *, verdict: Verdict | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.verdict: Verdict = verdict or self.default_verdict

    @property
    def retryable(self) -> bool:
        """Whether another replica (or expert) may succeed where this one failed."""
        return self.verdict != "fine"

    @property
    def replica_fault(self) -> bool:
        """Whether the failure counts against the replica (feeds its circuit breaker)."""
        return self.verdict in ("down", "failed")

    def retry_elsewhere(self, *, streaming: bool) -> bool:
        """Whether to send the request again, to another replica or expert (only ever
        before anything reached the client). A non-streamed request a replica is already
        generating is not sent twice; a stream's connection is closed, which aborts it."""
        return self.retryable and (streaming or self.verdict != "slow")


class UpstreamStatusError(UpstreamError):
    """The expert rejected the request itself (a 4xx); passed on unchanged."""

    kind = "status"
    #: The expert's own 4xx is about the client's request (context length, a bad
    #: parameter): passed on as it came.
    client_text = None

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        # OpenAI's shape nests the fields under "error"; older vLLM sends them flat.
        err = body.get("error") if isinstance(body.get("error"), dict) else body
        assert isinstance(err, dict)
        text = body.get("error") if isinstance(body.get("error"), str) else None
        message = str(err.get("message") or text or f"expert returned {status_code}")
        super().__init__(
            message,
            verdict="fine",
            status_code=status_code,
            param=err.get("param") if isinstance(err.get("param"), str) else None,
            code=str(err["code"]) if err.get("code") is not None else None,
        )
        self.error_type = str(err.get("type") or "invalid_request_error")


class UpstreamBadResponse(UpstreamError):
    """The expert answered with something that is not an OpenAI response."""

    default_code = "upstream_bad_response"
    client_text = "The expert sent an answer that is not a valid response."
    kind = "bad_response"


class UpstreamUnavailable(UpstreamError):
    """No replica of the expert can take the request now."""

    status_code = 503
    default_code = "expert_unavailable"
    client_text = "No replica of the expert can take the request right now."
    kind = "unavailable"


class UpstreamSaturated(UpstreamUnavailable):
    """Every connection of our pool to the replica is busy (``httpx.PoolTimeout``): the
    gateway is the bottleneck, not the replica."""

    default_code = "upstream_saturated"
    kind = "saturated"
    default_verdict = "busy"


class ExpertStarting(UpstreamUnavailable):
    """The expert's local process is still loading its weights."""

    default_code = "expert_starting"
    client_text = "The expert is still starting; retry shortly."
    kind = "starting"


class UpstreamTimeout(UpstreamError):
    """The expert did not answer within its timeout."""

    status_code = 504
    default_code = "upstream_timeout"
    client_text = "The expert did not answer in time."
    kind = "timeout"


class RateLimited(CoEError):
    """The API key used up its requests or tokens for the current window."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: ``retry-after`` and ``x-ratelimit-*``, sent with the error body.
        self.headers = dict(headers or {})


class StateUnavailable(CoEError):
    """The shared state store (Redis) failed, timed out or is being skipped after a failure.

    Callers degrade (skip the cache, affinity, the decision log); a client sees this only
    when rate limiting is configured to fail closed.
    """

    status_code = 503
    error_type = "upstream_error"
    default_code = "state_unavailable"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class ConfigError(CoEError):
    """Settings or catalog are invalid; raised at start-up, never to a client."""

    error_type = "config_error"


@contextmanager
def map_httpx_exceptions(what: str) -> Iterator[None]:
    """Translate httpx failures of a call to ``what`` (e.g. ``"expert 'code' at URL"``).

    Every httpx exception becomes an :class:`UpstreamError` with its :data:`Verdict`:

    ======================================  =====================  =========
    httpx                                   error (status)         verdict
    ======================================  =====================  =========
    ReadTimeout (the request was sent)      UpstreamTimeout 504    slow
    PoolTimeout (our pool is full)          UpstreamSaturated 503  busy
    ConnectTimeout, WriteTimeout            UpstreamTimeout 504    failed
    ConnectError (refused, no route)        UpstreamUnavailable    down
    RemoteProtocolError, ReadError, ...     UpstreamUnavailable    failed
    DecodingError (bad gzip, bad charset)   UpstreamBadResponse    failed
    StreamError, anything else from httpx   UpstreamError 502      failed
    ======================================  =====================  =========
    """
    try:
        yield
    except httpx.ReadTimeout as exc:
        raise UpstreamTimeout(f"{what} timed out (ReadTimeout)", verdict="slow") from exc
    except httpx.PoolTimeout as exc:
        raise UpstreamSaturated(f"{what}: every connection is busy (PoolTimeout)") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{what} timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise UpstreamUnavailable(
            f"{what} is unreachable: {exc or type(exc).__name__}", verdict="down"
        ) from exc
    except httpx.RemoteProtocolError as exc:
        raise UpstreamUnavailable(f"{what} is unreachable: {exc or type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"{what} failed: {exc or type(exc).__name__}") from exc
    except httpx.DecodingError as exc:
        raise UpstreamBadResponse(f"{what} sent a body that does not decode: {exc}") from exc
    except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL, httpx.CookieConflict) as exc:
        raise UpstreamError(f"{what} failed: {type(exc).__name__}") from exc
