"""Affinity writes: once per conversation and expert, then only when the TTL needs it."""

from __future__ import annotations

from coe_router.config import AffinitySettings
from coe_router.metrics import Metrics
from coe_router.shared.affinity import Affinity
from coe_router.state import Background, MemoryStore, StateGuard, StoreAccess


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.sets += 1
        await super().set(key, value, ttl_s)


async def test_a_sticky_conversation_is_refreshed_only_after_a_tenth_of_its_ttl() -> None:
    now = [100.0]
    store = CountingStore()
    metrics = Metrics()
    guard = StateGuard(metrics)
    background = Background(guard, metrics, max_pending=100, workers=1)
    background.start()
    access = StoreAccess(store, guard, background)
    affinity = Affinity(AffinitySettings(ttl_s=600), access, ["a", "b"], clock=lambda: now[0])
    try:
        for _ in range(5):  # the same expert, turn after turn
            affinity.remember("conv", "a")
        await background.drain()
        assert store.sets == 1
        assert await store.get("affinity:conv") == b"a"

        affinity.remember("conv", "b")  # moved: written at once
        await background.drain()
        assert store.sets == 2
        assert await store.get("affinity:conv") == b"b"

        now[0] += 61  # past a tenth of the TTL: refreshed
        affinity.remember("conv", "b")
        await background.drain()
        assert store.sets == 3
    finally:
        await background.aclose()
