"""One request lifecycle on every path: synthesis is charged and measured like any request.

Before the lifecycle existed, synthesis requests skipped token limits, the in-flight gauge
and time to first token. These tests hold both paths to the same bookkeeping, through the
HTTP API and the Prometheus exposition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coe_router.gateway.context import AppContext
from tests.unit.conftest import openai_error
from tests.unit.test_synthesis import chat, synth, three_experts

pytestmark = pytest.mark.unit

URL = "/v1/chat/completions"


def context(client: httpx.AsyncClient) -> AppContext:
    ctx: AppContext = client.app.state.coe  # type: ignore[attr-defined]
    return ctx


def samples(client: httpx.AsyncClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in ``/metrics``, keyed by its sorted labels."""
    text = context(client).metrics.render().decode()
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(v for k, v in samples(client, name).items() if set(labels.items()) <= set(k))


async def settle(client: httpx.AsyncClient) -> None:
    await context(client).shared.background.drain()


@pytest.mark.parametrize("stream", [False, True])
async def test_synthesis_usage_counts_against_the_token_limit(
    make_client: Callable[..., Any], stream: bool
) -> None:
    # Each fake call reports 6 tokens: a panel of 3 is 18 tokens per request.
    client = await make_client(catalog=three_experts(), rate_limits={"tokens_per_min": 30})
    body = synth("what is the sum?", k=3, strategy="vote", stream=stream)
    first = await client.post(URL, json=body)
    assert first.status_code == 200, first.text
    await settle(client)
    second = await client.post(URL, json=body)  # 18 < 30: still allowed
    assert second.status_code == 200
    await settle(client)
    refused = await client.post(URL, json=body)  # 36 >= 30
    err = openai_error(refused, 429)
    assert "tokens per min" in err["message"]


async def test_a_synthesis_request_is_counted_like_a_single_one(
    make_client: Callable[..., Any],
) -> None:
    client = await make_client(catalog=three_experts())
    single = await client.post(URL, json=chat("what is the sum?"))
    assert single.status_code == 200
    merged = await client.post(URL, json=synth("what is the sum?", k=3, strategy="vote"))
    assert merged.status_code == 200
    expert = merged.headers["x-coe-expert"]
    assert total(client, "coe_requests_total", strategy="synthesis-vote", status="200") == 1
    assert total(client, "coe_requests_total", strategy="keyword", status="200") == 1
    assert total(client, "coe_request_latency_seconds_count", expert=expert) >= 1
    # Both are done: nothing is left in flight on any expert.
    assert all(v == 0 for v in samples(client, "coe_in_flight_requests").values())


async def test_a_synthesis_stream_reports_time_to_first_token(
    make_client: Callable[..., Any],
) -> None:
    client = await make_client(catalog=three_experts())
    before = total(client, "coe_time_to_first_token_seconds_count")
    resp = await client.post(URL, json=synth("what is the sum?", k=3, stream=True))
    assert resp.status_code == 200
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert total(client, "coe_time_to_first_token_seconds_count") == before + 1
    assert total(client, "coe_requests_total", strategy="synthesis-synthesize", status="200") == 1
    assert all(v == 0 for v in samples(client, "coe_in_flight_requests").values())


async def test_a_failed_synthesis_is_counted_with_its_status(
    make_client: Callable[..., Any], fake: Any
) -> None:
    client = await make_client(catalog=three_experts())
    for url in ["http://general-a:8000", "http://general-b:8000", "http://code-a:8000",
                "http://math-a:8000"]:  # fmt: skip
        fake.of(url).mode = "status"
    resp = await client.post(URL, json=synth("what is the sum?", k=3, strategy="vote"))
    assert resp.status_code >= 500
    status = str(resp.status_code)
    assert total(client, "coe_requests_total", strategy="synthesis-vote", status=status) == 1
    assert all(v == 0 for v in samples(client, "coe_in_flight_requests").values())
