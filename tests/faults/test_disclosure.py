"""Nothing behind the gateway leaks to whoever asks (row 7 of the fault table): replica
URLs and per-replica detail only with the admin key, no API schema unless enabled, no
upstream error text or exception text in error bodies (a request id instead, which finds
the detail in the log), no URLs in /metrics, and launched experts never see the gateway's
secrets. Real gateway process."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.canned import StartGateway, log_of
from tests.support import GatewayProcess, free_port, launch_gateway

ADMIN = {"authorization": "Bearer sk-admin-secret"}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gw(module_gateway: StartGateway, dead_url: str) -> GatewayProcess:
    return module_gateway(
        [("general", "general"), ("gone", "gone", dead_url)],
        env={"COE_AUTH__ADMIN_KEY": "sk-admin-secret", "COE_UPSTREAM__HEALTH_INTERVAL_S": "0.2"},
    )  # fmt: skip


def leaks(text: str, *urls: str) -> list[str]:
    """The URLs (or their host:port) found in ``text``."""
    return [u for u in urls if u in text or u.removeprefix("http://") in text]


def test_ready_says_only_ready_or_not_without_the_admin_key(
    gw: GatewayProcess, canned_url: str, dead_url: str
) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = client.get("/ready")
        assert resp.status_code == 503  # "gone" is required and down
        assert resp.json()["experts"] == {"general": "ready", "gone": "not ready"}
        assert not leaks(resp.text, canned_url, dead_url)
        detail = client.get("/ready", headers=ADMIN).json()["experts"]
        assert [r["url"] for r in detail["gone"]["replicas"]] == [dead_url]
        for path in ("/metrics", "/v1/models", "/health"):
            assert not leaks(client.get(path).text, canned_url, dead_url), path


def test_no_api_schema_unless_enabled(gw: GatewayProcess) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for path in ("/docs", "/openapi.json", "/redoc"):
            resp = client.get(path)
            assert resp.status_code == 404
            assert resp.json()["error"]["code"] == "not_found"


def test_upstream_failures_say_a_request_id_not_the_upstream(
    gw: GatewayProcess, dead_url: str
) -> None:
    body = {"model": "gone", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for stream in (False, True):
            resp = client.post(CHAT, json={**body, "stream": stream})
            assert resp.status_code == 503, resp.text
            rid = resp.headers["x-request-id"]
            error = resp.json()["error"]
            assert error["code"] == "expert_unavailable"
            assert error["message"].endswith(f"(request id {rid})")
            assert not leaks(resp.text, dead_url)
            # The operator finds the detail by the id.
            deadline = time.monotonic() + 5
            while not any(rid in line and dead_url in line for line in log_of(gw).splitlines()):
                assert time.monotonic() < deadline, f"request {rid} not in the log"
                time.sleep(0.05)


def test_anthropic_shaped_errors_say_no_more(gw: GatewayProcess, dead_url: str) -> None:
    body = {"model": "gone", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 503, resp.text
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["message"].endswith(f"(request id {resp.headers['x-request-id']})")
    assert not leaks(resp.text, dead_url)


FAKE_VLLM = """#!{python}
import json, os, sys, time
with open(os.environ["DUMP_ENV_TO"], "w") as f:
    json.dump(dict(os.environ), f)
time.sleep(60)
"""


def test_launched_experts_get_a_minimal_environment(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    dump = tmp_path / "env.json"
    catalog = {
        "experts": [{"name": "local", "served_model_name": "local", "generalist": True,
                     "categories": ["general"], "required": False,
                     "launch": {"model": str(model), "port": free_port(),
                                "env": {"DUMP_ENV_TO": str(dump)}}}],
        "virtual_models": [{"name": "coe", "router": "keyword"}],
    }  # fmt: skip
    secrets = {
        "COE_AUTH__ADMIN_KEY": "sk-admin-secret", "COE_AUTH__API_KEYS": '["sk-user-secret"]',
        "COE_REDIS_URL": "redis://:pw-secret@127.0.0.1:1/0", "OTHER_TOKEN": "tok-secret",
    }  # fmt: skip
    allowed = {"VLLM_CPU_OMP_THREADS_BIND": "all", "HF_HOME": str(tmp_path / "hf"),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
    gw = launch_gateway(
        tmp_path / "gw", catalog, env={**secrets, **allowed, "COE_LOCAL__PYTHON": str(fake)},
        ready_path="/health", timeout_s=60,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not dump.exists() or not dump.read_text():
            assert time.monotonic() < deadline, gw.log_tail()
            time.sleep(0.1)
        time.sleep(0.1)
        env = json.loads(dump.read_text())
    finally:
        gw.stop(30)
    assert not [k for k in env if k.startswith("COE_")]
    assert not [v for v in env.values() if "secret" in v]
    assert "OTHER_TOKEN" not in env
    for key, value in allowed.items():
        assert env[key] == value
    assert env["PATH"] == os.environ["PATH"]
    assert env["DUMP_ENV_TO"] == str(dump)  # the catalog's launch.env still applies
