"""State shared by a fleet of gateways: a :class:`StateStore` protocol, two implementations.

* :class:`MemoryStore`: in-process, the embedded default (one gateway needs nothing else);
* :class:`RedisStore`: Redis (``COE_REDIS_URL``), for several gateways behind one balancer.

:func:`open_store` picks one from the settings. Uses (rate limits, affinity, the
response cache, the decision log, tier leases) talk to the protocol only, through a
:class:`StateGuard` that turns failures into a metric, a rare log line and a skipped step.
Only this package imports redis.
"""

from __future__ import annotations

from coe_router.config import Settings, StateSettings
from coe_router.state.base import (
    WINDOW_S,
    Admission,
    StateStore,
    WindowCounts,
    admission,
    window_index,
)
from coe_router.state.guard import Background, StateGuard, StoreAccess
from coe_router.state.memory import MemoryStore

__all__ = [
    "WINDOW_S",
    "Admission",
    "Background",
    "MemoryStore",
    "StateGuard",
    "StateStore",
    "StoreAccess",
    "WindowCounts",
    "admission",
    "connect_redis",
    "open_store",
    "window_index",
]


def connect_redis(url: str, state: StateSettings | None = None) -> StateStore:
    """A Redis store for ``url`` with the timeouts and prefix of ``state`` (or the defaults)."""
    # Imported here so that a gateway without Redis never loads the client.
    from coe_router.state.redis_store import RedisStore

    s = state or StateSettings()
    return RedisStore(
        url,
        prefix=s.prefix,
        socket_timeout_s=s.socket_timeout_s,
        connect_timeout_s=s.connect_timeout_s,
        max_connections=s.max_connections,
    )


def open_store(settings: Settings) -> StateStore:
    """Redis when ``settings.redis_url`` is set, else the in-process store."""
    if settings.redis_url is not None:
        return connect_redis(settings.redis_url.get_secret_value(), settings.state)
    return MemoryStore(max_keys=settings.state.memory_max_keys)
