"""Per-caller rate limits: requests and tokens per minute, sliding window, on the store.

The caller is the API key (its id), or the client's address when no keys are configured
(``gateway/auth.py``: ``caller_id``). A synthesis counts each of its expert calls
(:meth:`RateLimiter.count_requests`).

Before routing, :meth:`RateLimiter.admit` counts the request atomically (one Lua script
on Redis) if the key's sliding-window estimate leaves room for it and its tokens are
under their limit; otherwise the client gets OpenAI's 429 (``rate_limit_error`` /
``rate_limit_exceeded``) with ``retry-after`` and ``x-ratelimit-*`` headers. Tokens are
known only after the answer: :meth:`RateLimiter.charge` adds the upstream ``usage`` in
the background, so a key goes over its token limit by at most the requests in flight.
Cached answers count as requests but cost no tokens.

When the store fails, ``COE_RATE_LIMITS__ON_STORE_ERROR`` decides: ``open`` serves the
request unlimited, ``closed`` answers 503 ``state_unavailable``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from coe_router.config import KeyLimits, RateLimitSettings
from coe_router.errors import RateLimited, StateUnavailable
from coe_router.metrics import Metrics
from coe_router.state import Admission, StoreAccess, admission, window_index

#: Caller id of a request without a key where keys are configured (it never gets past
#: authentication; kept for callers built outside the gateway). An open gateway limits by
#: client address instead (``ip:...``, see ``gateway/auth.py``).
ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """The id of ``key`` in settings (``rate_limits.overrides``), logs and the store."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def limit_headers(adm: Admission) -> dict[str, str]:
    """``x-ratelimit-*`` (OpenAI's names) for the limits that apply, plus ``retry-after``
    when refused."""
    headers: dict[str, str] = {}
    if adm.requests_limit is not None:
        headers["x-ratelimit-limit-requests"] = str(adm.requests_limit)
        headers["x-ratelimit-remaining-requests"] = str(adm.requests_remaining)
        headers["x-ratelimit-reset-requests"] = _duration(adm.requests_reset_s)
    if adm.tokens_limit is not None:
        headers["x-ratelimit-limit-tokens"] = str(adm.tokens_limit)
        headers["x-ratelimit-remaining-tokens"] = str(adm.tokens_remaining)
        headers["x-ratelimit-reset-tokens"] = _duration(adm.tokens_reset_s)
    if not adm.allowed:
        headers["retry-after"] = str(max(1, math.ceil(adm.retry_after_s)))
    return headers


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """Admits or refuses requests per API key; counts their tokens afterwards."""

    _settings: RateLimitSettings
    _access: StoreAccess
    _metrics: Metrics
    # Wall-clock time: every gateway of a fleet must agree on window boundaries.
    _clock: Callable[[], float] = time.time

    def limits_for(self, kid: str) -> KeyLimits:
        """The limits of the key with id ``kid``."""
        s = self._settings
        return s.overrides.get(kid) or KeyLimits(
            requests_per_min=s.requests_per_min, tokens_per_min=s.tokens_per_min
        )

    def counts_tokens(self, kid: str) -> bool:
        """Whether answers for ``kid`` must report their usage."""
        return self.limits_for(kid).tokens_per_min is not None

    async def admit(self, kid: str) -> Admission | None:
        """Count the request or raise :class:`RateLimited`; None when ``kid`` is unlimited
        or the store failed open."""
        limits = self.limits_for(kid)
        if limits.requests_per_min is None and limits.tokens_per_min is None:
            return None
        now = self._clock()
        try:
            counts = await self._access.guard.call(
                "rate_limit",
                lambda: self._access.store.hit(
                    kid, now, limits.requests_per_min, limits.tokens_per_min
                ),
            )
        except StateUnavailable as exc:
            if self._settings.on_store_error == "closed":
                raise StateUnavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    headers={"retry-after": "1"},
                ) from exc
            return None
        adm = admission(
            counts, window_index(now)[1], limits.requests_per_min, limits.tokens_per_min
        )
        if not adm.allowed:
            assert adm.limit is not None
            self._metrics.rate_limited.labels(adm.limit).inc()
            limit = limits.requests_per_min if adm.limit == "requests" else limits.tokens_per_min
            raise RateLimited(
                f"Rate limit reached for {adm.limit} per min (limit: {limit}). "
                f"Please try again in {_duration(adm.retry_after_s)}.",
                headers=limit_headers(adm),
            )
        return adm

    def count_requests(self, kid: str, extra: int) -> None:
        """Count ``extra`` more requests against ``kid`` (a synthesis asks several experts
        for one admitted request); in the background, like :meth:`charge`."""
        if extra <= 0 or self.limits_for(kid).requests_per_min is None:
            return
        now = self._clock()
        for _ in range(extra):
            # A limit of None always counts the hit: these calls are already under way.
            self._access.background.submit(
                "rate_limit_requests", lambda: self._access.store.hit(kid, now, None, None)
            )

    def charge(self, kid: str, tokens: int | None) -> None:
        """Count ``tokens`` against ``kid`` (in the background; never blocks the answer)."""
        if not tokens or not self.counts_tokens(kid):
            return
        now = self._clock()
        self._access.background.submit(
            "rate_limit_tokens", lambda: self._access.store.add_tokens(kid, now, tokens)
        )
