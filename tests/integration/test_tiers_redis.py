"""Two gateways, one Redis, one set of sleep-mode experts: the tier table is one truth.

The gateways are real ``create_app()`` apps with the tiered pool on and ``COE_REDIS_URL``
set; the experts are fake vLLM replicas with sleep mode (``tests/fake_sleep.py``) on one
shared accelerator whose budget holds two of the four.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import yaml

from coe_router.config import Settings
from coe_router.gateway import create_app
from tests.fake_sleep import FakeGPU, FakeSleepFleet, SleepReplica
from tests.support import RedisServer, in_process_client

NAMES = ["a", "b", "c", "d"]


async def test_two_gateways_share_the_tier_table_and_the_budget(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    gpu = FakeGPU({"gpu0": 20.0})
    fleet = FakeSleepFleet(gpu)
    experts = []
    for name in NAMES:
        url = fleet.add(
            SleepReplica(name, 10.0, sleep_s={1: 0.01, 2: 0.01}, wake_s=0.02, reload_s=0.03),
            awake=False,
        )
        experts.append({
            "name": name, "served_model_name": name, "replicas": [url], "memory_gb": 10.0,
            "categories": [name], "tier": {"sleep_mode": True},
        })  # fmt: skip
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"experts": experts}))
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    tiers = {"enabled": True, "budgets_gb": {"gpu0": 20.0}, "prewarm": False,
             "max_wait_s": 0.2, "sync_interval_s": 0.05}  # fmt: skip
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            settings = Settings(catalog=catalog, redis_url=redis_server.url,
                                state={"prefix": prefix}, tiers=tiers)  # fmt: skip
            app = create_app(settings, upstream_transport=fleet.transport())
            clients.append(await stack.enter_async_context(in_process_client(app, timeout=60)))

        rng = random.Random(3)

        async def ask(client: httpx.AsyncClient, model: str) -> httpx.Response:
            return await client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip

        responses = await asyncio.gather(
            *(ask(rng.choice(clients), rng.choice(NAMES)) for _ in range(60))
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == len(responses), [
            r.text for r in responses if r.status_code != 200
        ]
        for r in responses:
            model = r.json()["model"]
            assert r.json()["choices"][0]["message"]["content"] == f"{model} says hi"
        assert gpu.violations == []
        assert gpu.peak_gb["gpu0"] <= 20.0

        # The shared table (in Redis) says what the replicas say.
        raw = aioredis.from_url(redis_server.url)
        table = {k.decode(): json.loads(v) for k, v in
                 (await raw.hgetall(f"{prefix}table:tiers")).items()}  # fmt: skip
        await raw.aclose()
        for name, entry in table.items():
            assert entry["transition"] is None
            awake = not fleet.replicas[name].sleeping
            assert (entry["tier"] == "hot") == awake, (name, entry)
        assert sum(1 for e in table.values() if e["tier"] == "hot") <= 2
