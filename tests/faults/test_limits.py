"""A client cannot dodge its limits or fill the gateway (rows 3 and 8 of the fault table):
with no API keys the rate limit follows the client's address (forwarded headers only from
trusted proxies), a synthesis counts every expert call, and past
``COE_SERVER__MAX_CONCURRENCY`` requests get a clean 503 while probes still answer."""

from __future__ import annotations

import asyncio
import secrets

import httpx

from tests.faults.canned import StartGateway

CHAT = "/v1/chat/completions"
BODY = {"model": "coe", "messages": [{"role": "user", "content": "hi"}]}


def test_a_fresh_random_bearer_per_request_is_not_a_fresh_budget(
    start_gateway: StartGateway,
) -> None:
    gw = start_gateway(env={"COE_RATE_LIMITS__REQUESTS_PER_MIN": "2"})
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        statuses = [
            client.post(CHAT, json=BODY,
                        headers={"authorization": f"Bearer sk-{secrets.token_hex(8)}"}).status_code
            for _ in range(10)
        ]  # fmt: skip
        assert statuses == [200, 200] + [429] * 8
        # X-Forwarded-For from an untrusted peer is the client's word: ignored.
        spoofed = client.post(CHAT, json=BODY, headers={"x-forwarded-for": "203.0.113.9"})
        assert spoofed.status_code == 429
        assert spoofed.json()["error"]["code"] == "rate_limit_exceeded"
        assert spoofed.headers["retry-after"]


def test_trusted_proxies_name_the_client(start_gateway: StartGateway) -> None:
    gw = start_gateway(env={"COE_RATE_LIMITS__REQUESTS_PER_MIN": "1",
                            "COE_SERVER__TRUSTED_PROXIES": '["127.0.0.0/8"]'})  # fmt: skip
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        def post(**headers: str) -> int:
            return client.post(CHAT, json=BODY, headers=headers).status_code

        # Each client behind the proxy has its own budget...
        assert post(**{"x-forwarded-for": "198.51.100.1"}) == 200
        assert post(**{"x-forwarded-for": "198.51.100.2"}) == 200
        assert post(**{"x-forwarded-for": "198.51.100.1"}) == 429
        # ...the right-most untrusted hop counts, not what the client prepended itself...
        assert post(**{"x-forwarded-for": "1.2.3.4, 198.51.100.2"}) == 429
        # ...and RFC 7239 Forwarded is read the same way.
        assert post(forwarded='for="[2001:db8::7]:4711";proto=https') == 200
        assert post(forwarded="for=1.1.1.1, for=2001:db8::7") == 429


async def test_a_synthesis_counts_each_expert_call(start_gateway: StartGateway) -> None:
    # k = 2 panel members and an aggregator: three calls, three requests of the budget.
    gw = start_gateway([("general", "general"), ("other", "general")],
                       env={"COE_RATE_LIMITS__REQUESTS_PER_MIN": "4"})  # fmt: skip
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        synth = {**BODY, "coe": {"synthesis": True, "k": 2, "strategy": "synthesize"}}
        first = await client.post(CHAT, json=synth)
        assert first.status_code == 200, first.text
        await asyncio.sleep(0.3)  # the extra calls are counted in the background
        assert (await client.post(CHAT, json=BODY)).status_code == 200  # the 4th
        assert (await client.post(CHAT, json=BODY)).status_code == 429


async def test_past_max_concurrency_a_503_with_retry_after(start_gateway: StartGateway) -> None:
    gw = start_gateway([("general", "general"), ("slow", "slow-stream")],
                       env={"COE_SERVER__MAX_CONCURRENCY": "2"})  # fmt: skip
    slow = {"model": "slow", "messages": BODY["messages"], "stream": True}
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        streams = [client.stream("POST", CHAT, json=slow) for _ in range(2)]
        opened = [await s.__aenter__() for s in streams]
        try:
            assert [r.status_code for r in opened] == [200, 200]
            full = await client.post(CHAT, json=BODY)
            assert full.status_code == 503
            assert full.json()["error"]["code"] == "overloaded"
            assert full.headers["retry-after"] == "1"
            for probe in ("/health", "/ready", "/metrics"):  # never refused
                assert (await client.get(probe)).status_code == 200
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)
        await asyncio.sleep(0.3)  # the closed streams leave
        assert (await client.post(CHAT, json=BODY)).status_code == 200
