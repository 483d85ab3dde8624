"""Process tiering with a real vLLM CPU expert: cold (stopped) -> request -> started -> answered.

vLLM on CPU refuses sleep mode, so a launched expert is tiered by its process: the
tier scheduler stops it to make it cold and starts it when a request needs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, Gateway, group_alive, start_gateway, stop_gateway

pytestmark = pytest.mark.integration

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def tiered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one expert starts cold: the tier scheduler owns its process."""
    catalog = {
        "experts": [{
            "name": "general", "served_model_name": "smollm2-135m-instruct", "generalist": True,
            "memory_gb": 4.0, "tier": {"device": "cpu"},
            "launch": {"model": "smollm2-135m-instruct", "port": 0},
        }],
    }  # fmt: skip
    env = {
        "COE_TIERS__ENABLED": "true",
        "COE_TIERS__BUDGETS_GB": '{"cpu": 6}',
        "COE_TIERS__PREWARM": "false",
    }
    gw = start_gateway(tmp_path_factory.mktemp("tiered"), catalog, env)
    pids: list[int] = []
    gw.expert_pids = {}
    try:
        yield gw
    finally:
        pids = list(gw.expert_pids.values())
        stop_gateway(gw, pids)


def experts(gw: Gateway) -> dict[str, dict[str, object]]:
    resp = httpx.get(f"{gw.url}/admin/experts", headers=ADMIN, timeout=10)
    resp.raise_for_status()
    return {e["name"]: e for e in resp.json()["data"]}


def test_cold_expert_is_started_by_a_request_and_answers(tiered: Gateway) -> None:
    before = experts(tiered)["general"]
    assert before["tiering"]["tier"] == "cold"  # type: ignore[index]
    assert before["process"]["pid"] is None  # type: ignore[index]
    # Ready although cold: the next request wakes it.
    assert httpx.get(f"{tiered.url}/ready", timeout=10).status_code == 200

    resp = httpx.post(
        f"{tiered.url}/v1/chat/completions",
        json={"model": "coe", "max_tokens": 24, "temperature": 0,
              "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        timeout=600,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert "Paris" in resp.json()["choices"][0]["message"]["content"]

    after = experts(tiered)["general"]
    tiering = after["tiering"]
    assert tiering["tier"] == "hot"  # type: ignore[index]
    assert tiering["wakes"] == 1  # type: ignore[index]
    assert tiering["wake_s"]["cold"] > 1  # type: ignore[index]
    pid = after["process"]["pid"]  # type: ignore[index]
    assert isinstance(pid, int)
    tiered.expert_pids["general"] = pid

    metrics = httpx.get(f"{tiered.url}/metrics", timeout=10).text
    assert 'coe_tier_switches_total{expert="general"} 1.0' in metrics


def test_admin_sleep_stops_the_process(tiered: Gateway) -> None:
    pid = tiered.expert_pids["general"]
    resp = httpx.post(f"{tiered.url}/admin/experts/general/sleep", headers=ADMIN, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["tier"] == "cold"
    assert not group_alive(pid)
    assert experts(tiered)["general"]["process"]["state"] == "stopped"  # type: ignore[index]
