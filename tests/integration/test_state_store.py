"""The shared store behaviour suite (``tests/store_suite.py``) on a real redis-server.

Each test runs under its own key prefix on the session's server. The same suite runs on
the in-process store in ``tests/unit/test_state_store_memory.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from coe_router.config import StateSettings
from coe_router.state import StateStore, connect_redis
from tests.store_suite import StoreBehaviour
from tests.support import RedisServer


class TestRedisStore(StoreBehaviour):
    @pytest.fixture
    async def store(self, redis_server: RedisServer) -> AsyncIterator[StateStore]:
        """A Redis store under a fresh key prefix on the shared server."""
        s = connect_redis(redis_server.url, StateSettings(prefix=f"test-{uuid.uuid4().hex[:8]}:"))
        try:
            await s.ping()
            yield s
        finally:
            await s.aclose()
