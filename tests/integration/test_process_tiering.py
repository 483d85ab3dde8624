"""Process tiering with a real vLLM CPU expert: cold (stopped) -> request -> started -> answered.

vLLM on CPU refuses sleep mode, so a launched expert is tiered by its process: the
tier scheduler stops it to make it cold and starts it when a request needs it. Each test
brings the expert to the tier it starts from, so they run in any order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN, admin, start_gateway, stop_gateway
from tests.support import GatewayProcess, group_alive


@pytest.fixture(scope="module")
def tiered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose one expert starts cold: the tier scheduler owns its process."""
    catalog = {
        "experts": [{
            "name": "general", "served_model_name": "smollm2-135m-instruct", "generalist": True,
            "memory_gb": 4.0, "tier": {"device": "cpu"},
            "launch": {"model": "smollm2-135m-instruct", "port": 0, "args": ["--enforce-eager"]},
        }],
    }  # fmt: skip
    env = {
        "COE_TIERS__ENABLED": "true",
        "COE_TIERS__BUDGETS_GB": '{"cpu": 6}',
        "COE_TIERS__PREWARM": "false",
    }
    gw = start_gateway(tmp_path_factory.mktemp("tiered"), catalog, env)
    try:
        yield gw
    finally:  # every process the scheduler started (see note_pid) must be gone
        stop_gateway(gw, gw.expert_pids.values())


def tier_action(gw: GatewayProcess, action: str) -> dict[str, Any]:
    """``POST /admin/experts/general/{action}``; waits until a wake or sleep is done."""
    resp = httpx.post(f"{gw.url}/admin/experts/general/{action}", headers=ADMIN, timeout=600)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def note_pid(gw: GatewayProcess) -> int:
    """The expert's process now (it is hot), remembered for the clean-stop check."""
    pid = admin(gw)["general"]["process"]["pid"]
    assert isinstance(pid, int)
    gw.expert_pids[f"general-{pid}"] = pid
    return pid


def test_cold_expert_is_started_by_a_request_and_answers(tiered: GatewayProcess) -> None:
    wakes = admin(tiered)["general"]["tiering"]["wakes"]
    if admin(tiered)["general"]["tiering"]["tier"] != "cold":
        assert tier_action(tiered, "sleep")["tier"] == "cold"
    before = admin(tiered)["general"]
    assert before["tiering"]["tier"] == "cold"
    assert before["process"]["pid"] is None
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

    tiering = admin(tiered)["general"]["tiering"]
    assert tiering["tier"] == "hot"
    assert tiering["wakes"] == wakes + 1
    assert tiering["wake_s"]["cold"] > 1
    note_pid(tiered)

    metrics = httpx.get(f"{tiered.url}/metrics", timeout=10).text
    assert f'coe_tier_switches_total{{expert="general"}} {wakes + 1}.0' in metrics


def test_admin_sleep_stops_the_process(tiered: GatewayProcess) -> None:
    assert tier_action(tiered, "wake")["tier"] == "hot"  # a no-op when a request woke it
    pid = note_pid(tiered)
    assert group_alive(pid)
    assert tier_action(tiered, "sleep")["tier"] == "cold"
    assert not group_alive(pid)
    assert admin(tiered)["general"]["process"]["state"] == "stopped"
