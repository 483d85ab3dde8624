"""The :class:`StateStore` contract, and the sliding-window arithmetic both stores share.

A store holds what several gateways must agree on. It offers small primitives, each
atomic on its own (one Redis command, one Lua script or one MULTI), never a sequence
the caller has to make atomic:

* key/value with a TTL (response cache, session affinity);
* a sliding-window counter of requests and tokens per key (rate limits);
* leases with fencing tokens, and a table written only by the current lease holder
  (the tier table of a fleet's expert pool);
* a capped append-only log (the routing-decision log).

Every method raises :class:`~coe_router.errors.StateUnavailable` when the store cannot
answer; nothing else escapes a store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

#: Length of the rate-limit window: limits are per minute.
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Raw counts of a key's current and previous fixed windows, as a store returns them."""

    allowed: bool
    cur_requests: int
    cur_tokens: int
    prev_requests: int
    prev_tokens: int


@dataclass(frozen=True, slots=True)
class Admission:
    """A rate-limit verdict, with what the ``x-ratelimit-*`` headers report."""

    allowed: bool
    #: Which limit refused the request (``requests`` or ``tokens``), when refused.
    limit: str | None
    requests_limit: int | None
    requests_remaining: int | None
    tokens_limit: int | None
    tokens_remaining: int | None
    #: Seconds until the refused limit lets one more request through (0 when allowed).
    retry_after_s: float
    #: Seconds until each window would be empty again if nothing more arrived.
    requests_reset_s: float
    tokens_reset_s: float


def window_index(now: float, window_s: float = WINDOW_S) -> tuple[int, float]:
    """The fixed window ``now`` falls in, and how far into it ``now`` is (seconds)."""
    index = math.floor(now / window_s)
    return index, now - index * window_s


def estimate(prev: float, cur: float, elapsed: float, window_s: float = WINDOW_S) -> float:
    """Sliding-window estimate: the previous window weighted by how much of it still
    overlaps the last ``window_s`` seconds, plus the current window (Cloudflare's
    "sliding window counter"; it assumes the previous window's events were spread evenly).
    """
    return prev * (1.0 - elapsed / window_s) + cur


def wait_until_at_most(
    prev: float, cur: float, elapsed: float, cap: float, window_s: float = WINDOW_S
) -> float:
    """Seconds until :func:`estimate` falls to ``cap`` or below, if nothing more arrives."""
    if estimate(prev, cur, elapsed, window_s) <= cap:
        return 0.0
    if cur <= cap:  # the previous window's share decays within the current window
        return max(0.0, window_s * (1.0 - (cap - cur) / prev) - elapsed)
    # The current window alone is over the cap: it becomes "previous" at the next boundary
    # and then decays the same way.
    rest = window_s - elapsed
    if cap <= 0:
        return rest + window_s
    return rest + max(0.0, window_s * (1.0 - cap / cur))


def admission(
    counts: WindowCounts,
    elapsed: float,
    requests_limit: int | None,
    tokens_limit: int | None,
    window_s: float = WINDOW_S,
) -> Admission:
    """Turn a store's raw counts into the verdict and its headers."""
    req = estimate(counts.prev_requests, counts.cur_requests, elapsed, window_s)
    tok = estimate(counts.prev_tokens, counts.cur_tokens, elapsed, window_s)
    limit: str | None = None
    retry = 0.0
    if not counts.allowed:
        # Requests: one more must fit. Tokens: the window must be below its limit.
        if requests_limit is not None and req + 1 > requests_limit:
            limit = "requests"
            retry = wait_until_at_most(
                counts.prev_requests, counts.cur_requests, elapsed, requests_limit - 1, window_s
            )
        if tokens_limit is not None and tok >= tokens_limit:
            wait = wait_until_at_most(
                counts.prev_tokens, counts.cur_tokens, elapsed, tokens_limit - 1, window_s
            )
            if limit is None or wait > retry:
                limit, retry = "tokens", wait
        limit = limit or "requests"

    def reset(prev: int, cur: int) -> float:
        return wait_until_at_most(prev, cur, elapsed, 0, window_s)

    return Admission(
        allowed=counts.allowed,
        limit=limit,
        requests_limit=requests_limit,
        requests_remaining=(
            None if requests_limit is None else max(0, math.floor(requests_limit - req))
        ),
        tokens_limit=tokens_limit,
        tokens_remaining=None if tokens_limit is None else max(0, math.floor(tokens_limit - tok)),
        retry_after_s=retry,
        requests_reset_s=reset(counts.prev_requests, counts.cur_requests),
        tokens_reset_s=reset(counts.prev_tokens, counts.cur_tokens),
    )


class StateStore(Protocol):
    """State shared by the gateways of a fleet (or kept in-process for a single one)."""

    #: ``memory`` or ``redis``, for logs, metrics and ``/admin``.
    kind: str

    # --- key/value with TTL ---

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (one atomic write)."""
        ...

    # --- rate limits ---

    async def hit(
        self,
        key: str,
        now: float,
        requests_limit: int | None,
        tokens_limit: int | None,
        window_s: float = WINDOW_S,
    ) -> WindowCounts:
        """Atomically: read ``key``'s windows at ``now`` and, if the sliding estimate leaves
        room for one more request and the tokens are under their limit, count the request.
        """
        ...

    async def add_tokens(
        self, key: str, now: float, tokens: int, window_s: float = WINDOW_S
    ) -> None:
        """Count ``tokens`` used by ``key`` at ``now`` (after the answer, from ``usage``)."""
        ...

    # --- leases with fencing tokens ---

    async def acquire(self, name: str, owner: str, ttl_s: float) -> int | None:
        """Take the lease ``name`` for ``ttl_s`` seconds.

        Returns a fencing token, strictly greater than every token issued for ``name``
        before, or None when another owner holds it. The holder acquiring again gets its
        current token back and the TTL restarted.
        """
        ...

    async def renew(self, name: str, owner: str, token: int, ttl_s: float) -> bool:
        """Extend the lease if ``owner`` still holds it under ``token``."""
        ...

    async def release(self, name: str, owner: str, token: int) -> bool:
        """Give the lease back if ``owner`` still holds it under ``token``."""
        ...

    async def fenced_set(
        self, name: str, owner: str, token: int, table: str, field: str, value: bytes
    ) -> bool:
        """Compare-and-set: write ``table[field] = value`` only while ``owner`` holds lease
        ``name`` under ``token``. A holder whose lease expired or was taken over (a newer
        token) is refused, so a paused process cannot overwrite its successor's writes.
        """
        ...

    async def table(self, table: str) -> dict[str, bytes]:
        """Every field of ``table``."""
        ...

    # --- capped log ---

    async def append(self, log: str, entry: Mapping[str, str], max_entries: int) -> str:
        """Append ``entry`` to ``log``, keeping about the last ``max_entries``; its id."""
        ...

    async def read(
        self, log: str, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries of ``log`` after the id ``after`` (from the start if None),
        oldest first."""
        ...

    # --- lifecycle ---

    async def ping(self) -> None:
        """Raise StateUnavailable unless the store answers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
