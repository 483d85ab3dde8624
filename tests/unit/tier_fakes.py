"""A controllable in-memory :class:`ResidencyDriver` for the tier scheduler's unit tests.

:class:`FakeDriver` behaves like a vLLM server with sleep mode as seen through
:class:`FakeGPU`: a wake claims the expert's memory when it *starts* and a sleep frees
it when it *ends* (the worst case the scheduler must budget for). A wake that is
cancelled midway (a timeout) leaves the memory claimed, as a real server that keeps
loading after the client hung up does. Latencies, failures and gates are per driver.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI

from coe_router.config import Settings, TierSettings
from coe_router.experts.tiering.eviction import EvictionPolicy, LRUPolicy
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.experts.tiering.tiers import ExpertResidency, Tier
from coe_router.gateway import create_app
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica


class Clock:
    """A settable clock for the scheduler's timestamps (asyncio's own timing stays real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class FakeDriver:
    """One expert's residency, with knobs."""

    name: str
    gpu: FakeGPU
    device: str
    memory_gb: float
    tier: Tier = field(default=Tier.COLD, kw_only=True)
    can_sleep: bool = field(default=True, kw_only=True)
    wake_s: float = field(default=0.0, kw_only=True)
    sleep_s: float = field(default=0.0, kw_only=True)
    #: Tiers woken from, and levels slept at, in order.
    wakes: list[Tier] = field(default_factory=list, init=False)
    sleeps: list[int] = field(default_factory=list, init=False)
    #: Raised by the next wakes (before any memory is claimed) / sleeps.
    fail_wakes: list[Exception] = field(default_factory=list, init=False)
    fail_sleep: Exception | None = field(default=None, init=False)
    #: The next this many wakes hang (after claiming memory) until cancelled.
    hang_wakes: int = field(default=0, init=False)
    #: When set, a wake waits for it after claiming memory.
    gate: asyncio.Event | None = field(default=None, init=False)
    #: Called at the start of every wake (for invariant checks).
    on_wake: Callable[[FakeDriver], None] | None = field(default=None, init=False)
    #: Whether its memory is claimed on the device now.
    on_gpu: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.tier == Tier.HOT:  # it starts loaded: its memory is in use already
            self.gpu.claim(self.device, self.memory_gb, self.name)
            self.on_gpu = True

    async def wake(self, from_tier: Tier) -> None:
        self.wakes.append(from_tier)
        if self.on_wake is not None:
            self.on_wake(self)
        if self.fail_wakes:
            raise self.fail_wakes.pop(0)
        if not self.on_gpu:
            self.gpu.claim(self.device, self.memory_gb, self.name)
            self.on_gpu = True
        if self.hang_wakes:
            self.hang_wakes -= 1
            await asyncio.sleep(3600)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.wake_s)
        self.tier = Tier.HOT

    async def sleep(self, level: int) -> Tier:
        self.sleeps.append(level)
        await asyncio.sleep(self.sleep_s)
        if self.fail_sleep is not None:
            raise self.fail_sleep
        if self.on_gpu:
            self.gpu.free(self.device, self.memory_gb)
            self.on_gpu = False
        self.tier = Tier.WARM if level == 1 and self.can_sleep else Tier.COLD
        return self.tier

    async def probe(self) -> Tier:
        return self.tier


def build(
    sizes: dict[str, float],
    budget_gb: float,
    *,
    hot: Iterable[str] = (),
    pinned: Iterable[str] = (),
    policy: EvictionPolicy | None = None,
    device: str = "gpu0",
    driver_kw: dict[str, Any] | None = None,
    **kw: Any,
) -> tuple[TierScheduler, dict[str, FakeDriver], FakeGPU]:
    """A scheduler over fake drivers on one device; ``hot`` experts start awake.

    Call ``await sched.start()`` before use (it learns the tiers from the drivers).
    """
    gpu = FakeGPU({device: budget_gb})
    hot, pinned = set(hot), set(pinned)
    drivers = {
        n: FakeDriver(n, gpu, device, gb, tier=Tier.HOT if n in hot else Tier.COLD,
                      **(driver_kw or {}))
        for n, gb in sizes.items()
    }  # fmt: skip
    residents = [
        ExpertResidency(name=n, memory_gb=gb, device=device, driver=drivers[n],
                        pinned=n in pinned)
        for n, gb in sizes.items()
    ]  # fmt: skip
    sched = TierScheduler(residents, {device: budget_gb}, policy or LRUPolicy(), **kw)
    return sched, drivers, gpu


async def settle(sched: TierScheduler, rounds: int = 50) -> None:
    """Let every transition the scheduler started finish (and those they start)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
        tasks = sched.transition_tasks
        if not tasks:
            await asyncio.sleep(0)
            if not sched.transition_tasks:
                return
            continue
        await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("the scheduler never settled")


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Poll ``predicate`` on the event loop until it holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event to wait on: poll the state
            await asyncio.sleep(0.001)


# --- a gateway over fake sleep-mode replicas ----------------------------------------------

ADMIN_KEY = "admin-secret"
_catalogs = itertools.count()
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    app: FastAPI
    fleet: FakeSleepFleet

    @property
    def scheduler(self) -> TierScheduler:
        tiers = self.app.state.coe.pool.scheduler
        assert tiers is not None
        return tiers  # type: ignore[no-any-return]

    def replica(self, name: str) -> SleepReplica:
        return self.fleet.replicas[name]


#: ``await make_gateway(replicas, ...)``: see :func:`start_gateway`.
Build = Callable[..., Any]


def rep(name: str, gb: float = 8, **kw: Any) -> SleepReplica:
    return SleepReplica(name, gb, **kw)


def chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def content_of(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text


def wake_ups(replica: SleepReplica) -> list[str]:
    return [c for c in replica.calls if c.startswith(("POST /wake_up", "POST /collective_rpc"))]


async def start_gateway(
    stack: AsyncExitStack,
    tmp_path: Path,
    replicas: list[SleepReplica],
    *,
    budget: float = 20.0,
    awake: tuple[str, ...] = (),
    tier: dict[str, dict[str, Any]] | None = None,
    transport: Callable[[FakeSleepFleet], httpx.AsyncBaseTransport] | None = None,
    keywords: dict[str, list[str]] | None = None,
    **tier_settings: Any,
) -> Gateway:
    """A tiered gateway (lifespan entered on ``stack``) over one fake replica per expert.

    Each expert is named after its replica, with the category of the same name and, by
    default, its name as the category's keyword; ``awake`` ones start awake, the others
    asleep at an unknown level (cold). Virtual model ``coe`` routes by keyword.
    """
    fleet = FakeSleepFleet(FakeGPU({"gpu0": budget}))
    experts = []
    for r in replicas:
        url = fleet.add(r, awake=r.name in awake)
        experts.append({
            "name": r.name, "served_model_name": f"{r.name}-model",
            "replicas": [url], "memory_gb": r.memory_gb, "categories": [r.name],
            "tier": {"sleep_mode": True, **(tier or {}).get(r.name, {})},
        })  # fmt: skip
    catalog = {
        "experts": experts,
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": keywords or {r.name: [r.name] for r in replicas},
    }
    path = tmp_path / f"catalog-{next(_catalogs)}.yaml"
    path.write_text(yaml.safe_dump(catalog))
    settings = Settings(
        catalog=path,
        tiers=TierSettings(**{"enabled": True, "budgets_gb": {"gpu0": budget},
                              "prewarm": False, **tier_settings}),
        auth={"admin_key": ADMIN_KEY},
    )  # fmt: skip
    app = create_app(
        settings, upstream_transport=transport(fleet) if transport else fleet.transport()
    )
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    )
    return Gateway(client, app, fleet)
