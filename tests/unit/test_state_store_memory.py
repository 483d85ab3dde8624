"""The shared store behaviour suite (``tests/store_suite.py``) on the in-process store.

The same suite runs on Redis in ``tests/integration/test_state_store.py``.
"""

from __future__ import annotations

import pytest

from coe_router.state import MemoryStore, StateStore
from tests.store_suite import StoreBehaviour


class TestMemoryStore(StoreBehaviour):
    @pytest.fixture
    def store(self) -> StateStore:
        """An empty in-process store."""
        return MemoryStore()
