"""The tiered pool when part of it fails: one replica of a sleeping expert down, and a
shared store that misses a lease renewal during a long wake."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe_router.config import AuthSettings, Settings, TierSettings
from coe_router.errors import StateUnavailable
from coe_router.experts.tiering.tiers import SharedTier, Tier
from coe_router.gateway import create_app
from coe_router.metrics import Metrics
from coe_router.shared.tier_table import SharedTierTable
from coe_router.state import MemoryStore, StateGuard
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica

CHAT = "/v1/chat/completions"


def chat(model: str, content: str = "hi") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


@pytest.fixture
async def two_replica_gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, set[str]]]:
    """Expert ``a`` (sleep mode) on replicas ``a1`` and ``a2``, both asleep at start, plus an
    always-awake generalist; hosts in the returned set refuse every connection."""
    fleet = FakeSleepFleet(FakeGPU({"gpu0": 40.0}))
    urls = [fleet.add(SleepReplica(n, 8, wake_s=0.01, reload_s=0.01), awake=False)
            for n in ("a1", "a2")]  # fmt: skip
    general = fleet.add(SleepReplica("g", 8))
    refused: set[str] = set()
    inner = fleet.transport()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host in refused:
            raise httpx.ConnectError("connection refused", request=request)
        return await inner.handle_async_request(request)

    catalog = {
        "experts": [
            {"name": "g", "served_model_name": "g-model", "generalist": True,
             "replicas": [general]},
            {"name": "a", "served_model_name": "a-model", "replicas": urls, "memory_gb": 8,
             "categories": ["a"], "tier": {"sleep_mode": True}},
        ],
        "keywords": {"a": ["alpha"]},
    }  # fmt: skip
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    settings = Settings(
        catalog=path,
        tiers=TierSettings(enabled=True, budgets_gb={"gpu0": 40.0}, prewarm=False),
        auth=AuthSettings(admin_key="sk-admin"),  # /ready shows replica detail to it only
    )
    refused.add("a2")
    app = create_app(settings, upstream_transport=httpx.MockTransport(handle))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"authorization": "Bearer sk-admin"},
        ) as c,
    ):
        yield c, refused


async def test_a_wake_with_one_replica_down_wakes_the_other(
    two_replica_gateway: tuple[httpx.AsyncClient, set[str]],
) -> None:
    client, _ = two_replica_gateway
    assert (await client.get("/ready")).json()["experts"]["a"]["tier"] == "cold"
    resp = await client.post(CHAT, json=chat("a"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "a1 says hi"
    ready = (await client.get("/ready")).json()["experts"]["a"]
    assert ready["tier"] == "hot"
    assert ready["live"] is True
    assert [r["state"] for r in ready["replicas"]] == ["up", "down"]


async def test_a_wake_fails_only_when_no_replica_wakes(
    two_replica_gateway: tuple[httpx.AsyncClient, set[str]],
) -> None:
    client, refused = two_replica_gateway
    refused.add("a1")
    resp = await client.post(CHAT, json=chat("a"))
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "expert_unavailable"


class FlakyRenewals(MemoryStore):
    """A store whose first ``failures`` lease renewals fail as a Redis blip would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.renewals = 0
        self.by_owner: Counter[str] = Counter()

    async def renew(self, name: str, owner: str, token: int, ttl_s: float) -> bool:
        self.renewals += 1
        self.by_owner[owner] += 1
        if self.failures > 0:
            self.failures -= 1
            raise StateUnavailable("redis timed out")
        return await super().renew(name, owner, token, ttl_s)


def table(store: MemoryStore) -> SharedTierTable:
    return SharedTierTable(store, StateGuard(Metrics(), retry_interval_s=0.0), ttl_s=0.3,
                           poll_s=0.01)  # fmt: skip


async def test_a_missed_renewal_does_not_lose_the_lease_during_a_long_wake() -> None:
    store = FlakyRenewals(failures=1)
    mine, theirs = table(store), table(store)
    token = await mine.lock("gpu0", 1.0)
    assert token is not None
    await asyncio.sleep(1.0)  # more than three TTLs: only renewals can have kept it
    assert store.renewals >= 4
    with pytest.raises(TimeoutError):
        await theirs.lock("gpu0", 0.05)
    assert await mine.publish("gpu0", token, "a", SharedTier(Tier.HOT, None))
    await mine.unlock("gpu0", token)
    other = await theirs.lock("gpu0", 0.5)
    assert other is not None
    await theirs.unlock("gpu0", other)


async def test_renewing_stops_once_the_lease_has_really_lapsed() -> None:
    store = FlakyRenewals(failures=1000)
    mine, theirs = table(store), table(store)
    token = await mine.lock("gpu0", 1.0)
    assert token is not None
    await asyncio.sleep(0.6)  # two TTLs without one renewal: the lease is gone
    tried = store.by_owner[mine.owner]
    assert tried >= 2  # retried after the first miss
    other = await theirs.lock("gpu0", 0.5)  # the successor gets it
    assert other is not None
    await asyncio.sleep(0.3)
    assert store.by_owner[mine.owner] == tried  # and the old holder stopped trying
    assert not await mine.publish("gpu0", token, "a", SharedTier(Tier.HOT, None))
    await mine.unlock("gpu0", token)
    await theirs.unlock("gpu0", other)


async def test_a_sleeping_expert_is_woken_not_fallen_back(
    two_replica_gateway: tuple[httpx.AsyncClient, set[str]],
) -> None:
    client, _ = two_replica_gateway
    route = (await client.post("/v1/route", json=chat("coe", "alpha"))).json()
    assert (route["expert"], route.get("fallback")) == ("a", None)  # asleep, yet live
    resp = await client.post(CHAT, json=chat("coe", "alpha"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-expert"] == "a"
    assert "x-coe-fallback" not in resp.headers


async def test_a_failed_wake_falls_back_and_the_expert_is_skipped_in_its_back_off(
    two_replica_gateway: tuple[httpx.AsyncClient, set[str]],
) -> None:
    client, refused = two_replica_gateway
    refused.add("a1")
    resp = await client.post(CHAT, json=chat("coe", "alpha"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-fallback"] == "a->g"
    assert resp.json()["coe"]["fallback"] == {"from": "a", "reason": "unavailable"}
    again = await client.post(CHAT, json=chat("coe", "alpha"))
    assert again.json()["coe"]["fallback"] == {"from": "a", "reason": "no_live_replica"}
    route = (await client.post("/v1/route", json=chat("coe", "alpha"))).json()
    assert route["expert"] == "g"
