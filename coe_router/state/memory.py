"""The in-process store: the embedded default, for a single gateway.

Every method runs without awaiting anything, so on one event loop each is atomic,
which is what the Redis store gets from Lua scripts and MULTI.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coe_router.state.base import WINDOW_S, WindowCounts, estimate, window_index


@dataclass
class _Lease:
    owner: str
    token: int
    expires: float


class MemoryStore:
    """:class:`~coe_router.state.base.StateStore` in this process's memory."""

    kind = "memory"

    def __init__(
        self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_keys = max_keys
        self._clock = clock
        # key -> (expires, value); oldest write first, so a full store drops the oldest.
        self._kv: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # key -> window index -> [requests, tokens]
        self._windows: dict[str, dict[int, list[int]]] = {}
        # The window index of the last sweep of idle callers' windows (see _buckets).
        self._swept = 0
        self._leases: dict[str, _Lease] = {}
        self._fences: dict[str, int] = {}
        self._tables: dict[str, dict[str, bytes]] = {}
        self._logs: dict[str, deque[tuple[str, dict[str, str]]]] = {}
        self._seq = itertools.count(1)

    # --- key/value ---

    async def get(self, key: str) -> bytes | None:
        """See :meth:`StateStore.get`."""
        item = self._kv.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._kv[key]
            return None
        return item[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """See :meth:`StateStore.set`."""
        self._kv.pop(key, None)
        self._kv[key] = (self._clock() + ttl_s, value)
        while len(self._kv) > self._max_keys:
            self._kv.popitem(last=False)

    # --- rate limits ---

    def _buckets(self, key: str, index: int) -> tuple[list[int], list[int]]:
        if index > self._swept:
            # Once per window: forget callers with nothing in the last two windows, so a
            # stream of one-off callers (addresses, keys) does not grow the dict forever.
            self._swept = index
            idle = [k for k, w in self._windows.items() if max(w, default=0) < index - 1]
            for k in idle:
                del self._windows[k]
        windows = self._windows.setdefault(key, {})
        for old in [i for i in windows if i < index - 1]:  # older windows no longer count
            del windows[old]
        return windows.setdefault(index, [0, 0]), windows.get(index - 1, [0, 0])

    async def hit(
        self,
        key: str,
        now: float,
        requests_limit: int | None,
        tokens_limit: int | None,
        window_s: float = WINDOW_S,
    ) -> WindowCounts:
        """See :meth:`StateStore.hit`."""
        index, elapsed = window_index(now, window_s)
        cur, prev = self._buckets(key, index)
        req = estimate(prev[0], cur[0], elapsed, window_s)
        tok = estimate(prev[1], cur[1], elapsed, window_s)
        allowed = (requests_limit is None or req + 1 <= requests_limit) and (
            tokens_limit is None or tok < tokens_limit
        )
        if allowed:
            cur[0] += 1
        return WindowCounts(allowed, cur[0], cur[1], prev[0], prev[1])

    async def add_tokens(
        self, key: str, now: float, tokens: int, window_s: float = WINDOW_S
    ) -> None:
        """See :meth:`StateStore.add_tokens`."""
        index, _ = window_index(now, window_s)
        cur, _prev = self._buckets(key, index)
        cur[1] += tokens

    # --- leases ---

    def _held(self, name: str) -> _Lease | None:
        lease = self._leases.get(name)
        if lease is not None and lease.expires <= self._clock():
            del self._leases[name]
            return None
        return lease

    async def acquire(self, name: str, owner: str, ttl_s: float) -> int | None:
        """See :meth:`StateStore.acquire`."""
        lease = self._held(name)
        if lease is not None and lease.owner != owner:
            return None
        if lease is not None:
            lease.expires = self._clock() + ttl_s
            return lease.token
        token = self._fences.get(name, 0) + 1
        self._fences[name] = token
        self._leases[name] = _Lease(owner, token, self._clock() + ttl_s)
        return token

    def _holds(self, name: str, owner: str, token: int) -> _Lease | None:
        lease = self._held(name)
        return lease if lease is not None and (lease.owner, lease.token) == (owner, token) else None

    async def renew(self, name: str, owner: str, token: int, ttl_s: float) -> bool:
        """See :meth:`StateStore.renew`."""
        lease = self._holds(name, owner, token)
        if lease is None:
            return False
        lease.expires = self._clock() + ttl_s
        return True

    async def release(self, name: str, owner: str, token: int) -> bool:
        """See :meth:`StateStore.release`."""
        if self._holds(name, owner, token) is None:
            return False
        del self._leases[name]
        return True

    async def fenced_set(
        self, name: str, owner: str, token: int, table: str, field: str, value: bytes
    ) -> bool:
        """See :meth:`StateStore.fenced_set`."""
        if self._holds(name, owner, token) is None:
            return False
        self._tables.setdefault(table, {})[field] = value
        return True

    async def table(self, table: str) -> dict[str, bytes]:
        """See :meth:`StateStore.table`."""
        return dict(self._tables.get(table, {}))

    # --- log ---

    async def append(self, log: str, entry: Mapping[str, str], max_entries: int) -> str:
        """See :meth:`StateStore.append`."""
        entries = self._logs.get(log)
        if entries is None or entries.maxlen != max_entries:
            entries = self._logs[log] = deque(entries or (), maxlen=max_entries)
        # Ids sort like Redis stream ids: milliseconds, then a sequence number.
        entry_id = f"{int(time.time() * 1000)}-{next(self._seq)}"
        entries.append((entry_id, dict(entry)))
        return entry_id

    async def read(
        self, log: str, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """See :meth:`StateStore.read`."""
        entries = list(self._logs.get(log, ()))
        if after is not None:
            key = _id_key(after)
            entries = [e for e in entries if _id_key(e[0]) > key]
        return [(i, dict(f)) for i, f in entries[:count]]

    # --- lifecycle ---

    async def ping(self) -> None:
        """See :meth:`StateStore.ping`; always answers."""

    async def aclose(self) -> None:
        """Nothing to release."""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
