"""Several gateways, one truth: two tier schedulers share a store and one set of replicas.

Each scheduler stands for one gateway (its own drivers and HTTP clients, its own view);
they share the store's tier table and device leases, and the replicas and their
accelerator (``FakeGPU``). Whatever the interleaving, the fleet's awake set must fit
the budget, and an expert must not be woken twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import httpx

from coe_router.config import UpstreamSettings
from coe_router.experts.replica import Replica
from coe_router.experts.tiering.drivers import VLLMSleepDriver
from coe_router.experts.tiering.eviction import LRUPolicy
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from coe_router.metrics import Metrics
from coe_router.shared.tier_table import SharedTierTable
from coe_router.state import MemoryStore, StateGuard
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica

NAMES = ["a", "b", "c", "d"]
SIZE_GB = 10.0
BUDGET_GB = 20.0  # two of four experts awake at a time


def fleet_of_replicas() -> tuple[FakeSleepFleet, dict[str, str]]:
    gpu = FakeGPU({"gpu0": BUDGET_GB})
    fleet = FakeSleepFleet(gpu)
    urls = {
        n: fleet.add(
            SleepReplica(n, SIZE_GB, sleep_s={1: 0.01, 2: 0.01}, wake_s=0.01, reload_s=0.02),
            awake=False,
        )
        for n in NAMES
    }
    return fleet, urls


@contextlib.asynccontextmanager
async def gateway(
    fleet: FakeSleepFleet, urls: dict[str, str], store: MemoryStore
) -> AsyncIterator[TierScheduler]:
    """One gateway's scheduler over the shared replicas, coordinated through ``store``;
    started, and closed with its HTTP clients at the end."""
    metrics = Metrics()
    replicas = [Replica(n, urls[n], UpstreamSettings(), transport=fleet.transport()) for n in NAMES]
    residents = [
        ExpertResidency(name=r.expert, memory_gb=SIZE_GB, device="gpu0",
                        driver=VLLMSleepDriver(r.expert, [r]))
        for r in replicas
    ]  # fmt: skip
    coordinator = SharedTierTable(store, StateGuard(metrics), ttl_s=5.0, poll_s=0.005)
    scheduler = TierScheduler(
        residents, {"gpu0": BUDGET_GB}, LRUPolicy(), max_wait_s=0.05, queue_timeout_s=30,
        wake_timeout_s=10, metrics=metrics, coordinator=coordinator, sync_interval_s=0.01,
    )  # fmt: skip
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()
        for r in replicas:
            await r.aclose()


async def use(scheduler: TierScheduler, name: str, fleet: FakeSleepFleet) -> str:
    """One request: hold the expert, check it really is awake, 'generate'."""
    async with scheduler.hold(name):
        replica = fleet.replicas[name]
        awake = not replica.sleeping
        await asyncio.sleep(0.005)
        return f"{name}:{'ok' if awake else 'ASLEEP'}"


async def test_two_gateways_never_overrun_the_budget_together() -> None:
    fleet, urls = fleet_of_replicas()
    store = MemoryStore()
    async with gateway(fleet, urls, store) as one, gateway(fleet, urls, store) as two:
        rng = random.Random(7)
        jobs = [use(rng.choice([one, two]), rng.choice(NAMES), fleet) for _ in range(120)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), 60)
    assert fleet.gpu.violations == []
    assert fleet.gpu.peak_gb["gpu0"] <= BUDGET_GB
    assert all(r.endswith(":ok") for r in results), [r for r in results if "ASLEEP" in r]


async def test_an_expert_woken_by_one_gateway_is_not_woken_again_by_the_other() -> None:
    fleet, urls = fleet_of_replicas()
    store = MemoryStore()
    async with gateway(fleet, urls, store) as one, gateway(fleet, urls, store) as two:
        await asyncio.gather(use(one, "a", fleet), use(two, "a", fleet))
        # The second gateway found it hot under the lease (probe) and did not wake it again.
        wakes = [c for c in fleet.replicas["a"].calls if c.startswith("POST /wake_up")]
        assert len(wakes) == 2  # one level-2 wake: weights, then kv_cache
        table = await SharedTierTable(store, StateGuard(Metrics())).table()
        assert table["a"].tier is Tier.HOT
        assert table["a"].transition is None
        # The other gateway learns it from the table as well.
        await asyncio.sleep(0.05)
        assert two.experts["a"].tier is Tier.HOT
        assert one.experts["a"].tier is Tier.HOT


async def test_without_the_store_each_gateway_acts_alone() -> None:
    class DownStore(MemoryStore):
        async def acquire(self, name: str, owner: str, ttl_s: float) -> int | None:
            from coe_router.errors import StateUnavailable

            raise StateUnavailable("redis is down")

    fleet, urls = fleet_of_replicas()
    async with gateway(fleet, urls, DownStore()) as one:
        assert await use(one, "b", fleet) == "b:ok"


def test_fleet_transport_is_shared() -> None:
    # Guard for the test bed itself: both gateways talk to the same fake replicas.
    fleet, urls = fleet_of_replicas()
    assert isinstance(fleet.transport(), httpx.MockTransport)
    assert set(urls) == set(NAMES)
