"""The Redis store: state shared by a fleet of gateways. The only module that imports redis.

Every operation is one atomic step on the server (a single command, a Lua script, or a
MULTI/EXEC transaction), so a gateway that dies mid-request never leaves half a write.
Every operation is bounded in time: socket timeouts from the settings, plus an overall
deadline around each call (connecting, one reconnect and the reply). Any redis or
socket failure leaves here as :class:`~coe_router.errors.StateUnavailable`; after a
failure redis-py reconnects by itself on the next call.

Keys (``prefix`` defaults to ``coe:``)::

    {prefix}kv:{key}                 string, PX ttl        cache entries, affinity
    {prefix}rl:{{key}}:{window}      hash r, t             rate-limit windows (hash tag: one slot)
    {prefix}lease:{name}             "token:owner", PX ttl a lease and its holder
    {prefix}fence:{name}             integer, no TTL       last fencing token issued for name
    {prefix}table:{table}            hash                  fenced tables (the tier table)
    {prefix}log:{log}                stream, MAXLEN ~      the routing-decision log
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from coe_router.errors import StateUnavailable
from coe_router.state.base import WINDOW_S, WindowCounts, window_index

# KEYS: current window, previous window. ARGV: weight of the previous window,
# requests limit (-1: none), tokens limit (-1: none), expiry of the current window (ms).
_HIT = """
local cur = redis.call('HMGET', KEYS[1], 'r', 't')
local prev = redis.call('HMGET', KEYS[2], 'r', 't')
local cr, ct = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
local pr, pt = tonumber(prev[1]) or 0, tonumber(prev[2]) or 0
local w = tonumber(ARGV[1])
local rl, tl = tonumber(ARGV[2]), tonumber(ARGV[3])
local allowed = 1
if rl >= 0 and pr * w + cr + 1 > rl then allowed = 0 end
if tl >= 0 and pt * w + ct >= tl then allowed = 0 end
if allowed == 1 then
  cr = redis.call('HINCRBY', KEYS[1], 'r', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {allowed, cr, ct, pr, pt}
"""

# KEYS: lease, fence counter. ARGV: owner, ttl (ms). Returns the token or nil.
# The counter is seeded from the server clock (ms) the first time, so tokens keep
# growing even after a Redis restart without persistence forgot the counter.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ':', 1, true)
  if string.sub(held, sep + 1) ~= ARGV[1] then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(held, 1, sep - 1))
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000)))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', token) .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: "token:owner", ttl (ms).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: "token:owner".
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, table. ARGV: "token:owner", field, value.
_FENCED_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore:
    """:class:`~coe_router.state.base.StateStore` on one Redis (not Redis Cluster: the
    lease scripts touch keys in different slots)."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "coe:",
        socket_timeout_s: float = 0.25,
        connect_timeout_s: float = 0.25,
        max_connections: int = 64,
    ) -> None:
        self._prefix = prefix
        # One retry, on connection errors only: the first command after a Redis restart
        # meets a dead pooled connection and succeeds on a fresh one. Timeouts are not
        # retried, so a slow Redis costs one socket timeout, not several.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout_s,  # longest wait for a free connection
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False,
        )
        # from_pool: the client owns the pool, so aclose() closes its connections too.
        self._redis = aioredis.Redis.from_pool(pool)
        #: Overall bound of one operation: pool wait, connect, one reconnect, the reply.
        self.deadline_s = 2 * (connect_timeout_s + socket_timeout_s) + socket_timeout_s
        r = self._redis
        self._hit = r.register_script(_HIT)
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._fenced_set = r.register_script(_FENCED_SET)

    @asynccontextmanager
    async def _op(self, what: str) -> AsyncIterator[None]:
        """The redis boundary: bound the call in time and translate its failures, once.

        A cancel of the calling task is never lost here: redis-py writes under Python
        3.11's ``asyncio.wait_for``, which swallows a cancel that lands as the write ends,
        and the gateway stops its loops (tier sync, lease renewal) by cancelling them.
        """
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.deadline_s):
                yield
        except TimeoutError as exc:
            raise StateUnavailable(f"redis {what} timed out after {self.deadline_s:g} s") from exc
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis {what} failed: {exc or type(exc).__name__}") from exc
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError(f"redis {what}: cancelled during the call")

    # --- key/value ---

    async def get(self, key: str) -> bytes | None:
        """See :meth:`StateStore.get`."""
        async with self._op("GET"):
            value: Any = await self._redis.get(f"{self._prefix}kv:{key}")
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """See :meth:`StateStore.set`."""
        async with self._op("SET"):
            await self._redis.set(f"{self._prefix}kv:{key}", value, px=_ms(ttl_s))

    # --- rate limits ---

    def _window_keys(self, key: str, index: int) -> tuple[str, str]:
        base = f"{self._prefix}rl:{{{key}}}"
        return f"{base}:{index}", f"{base}:{index - 1}"

    async def hit(
        self,
        key: str,
        now: float,
        requests_limit: int | None,
        tokens_limit: int | None,
        window_s: float = WINDOW_S,
    ) -> WindowCounts:
        """See :meth:`StateStore.hit`; one Lua script reads, decides and counts."""
        index, elapsed = window_index(now, window_s)
        args: list[str | int] = [
            repr(1.0 - elapsed / window_s),
            -1 if requests_limit is None else requests_limit,
            -1 if tokens_limit is None else tokens_limit,
            _ms(2 * window_s),  # the window is still read as "previous" one window later
        ]
        async with self._op("rate limit"):
            raw: Any = await self._hit(keys=list(self._window_keys(key, index)), args=args)
        allowed, cr, ct, pr, pt = (int(x) for x in raw)
        return WindowCounts(bool(allowed), cr, ct, pr, pt)

    async def add_tokens(
        self, key: str, now: float, tokens: int, window_s: float = WINDOW_S
    ) -> None:
        """See :meth:`StateStore.add_tokens`; count and expiry in one MULTI."""
        index, _ = window_index(now, window_s)
        cur, _prev = self._window_keys(key, index)
        async with self._op("add tokens"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(cur, "t", tokens)
            pipe.pexpire(cur, _ms(2 * window_s))
            await pipe.execute()

    # --- leases ---

    def _lease_keys(self, name: str) -> tuple[str, str]:
        return f"{self._prefix}lease:{name}", f"{self._prefix}fence:{name}"

    async def acquire(self, name: str, owner: str, ttl_s: float) -> int | None:
        """See :meth:`StateStore.acquire`."""
        async with self._op("acquire lease"):
            token: Any = await self._acquire(
                keys=list(self._lease_keys(name)), args=[owner, _ms(ttl_s)]
            )
        return None if token is None else int(token)

    async def renew(self, name: str, owner: str, token: int, ttl_s: float) -> bool:
        """See :meth:`StateStore.renew`."""
        lease, _ = self._lease_keys(name)
        async with self._op("renew lease"):
            done: Any = await self._renew(keys=[lease], args=[f"{token}:{owner}", _ms(ttl_s)])
        return bool(done)

    async def release(self, name: str, owner: str, token: int) -> bool:
        """See :meth:`StateStore.release`."""
        lease, _ = self._lease_keys(name)
        async with self._op("release lease"):
            done: Any = await self._release(keys=[lease], args=[f"{token}:{owner}"])
        return bool(done)

    async def fenced_set(
        self, name: str, owner: str, token: int, table: str, field: str, value: bytes
    ) -> bool:
        """See :meth:`StateStore.fenced_set`; the check and the write are one script."""
        lease, _ = self._lease_keys(name)
        async with self._op("fenced write"):
            done: Any = await self._fenced_set(
                keys=[lease, f"{self._prefix}table:{table}"],
                args=[f"{token}:{owner}", field, value],
            )
        return bool(done)

    async def table(self, table: str) -> dict[str, bytes]:
        """See :meth:`StateStore.table`."""
        async with self._op("HGETALL"):
            raw: Any = await self._redis.hgetall(f"{self._prefix}table:{table}")
        return {k.decode(): bytes(v) for k, v in raw.items()}

    # --- log ---

    async def append(self, log: str, entry: Mapping[str, str], max_entries: int) -> str:
        """See :meth:`StateStore.append`: ``XADD ... MAXLEN ~ max_entries``."""
        async with self._op("XADD"):
            fields: dict[Any, Any] = dict(entry)
            entry_id: Any = await self._redis.xadd(
                f"{self._prefix}log:{log}", fields, maxlen=max_entries, approximate=True
            )
        return bytes(entry_id).decode()

    async def read(
        self, log: str, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """See :meth:`StateStore.read`: ``XRANGE`` from just after ``after``."""
        start = "-" if after is None else f"({after}"
        async with self._op("XRANGE"):
            raw: Any = await self._redis.xrange(
                f"{self._prefix}log:{log}", min=start, max="+", count=count
            )
        return [
            (i.decode(), {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()})
            for i, f in raw
        ]

    # --- lifecycle ---

    async def ping(self) -> None:
        """See :meth:`StateStore.ping`."""
        async with self._op("PING"):
            await self._redis.ping()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
