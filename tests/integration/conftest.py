"""Integration fixtures: the real gateway process with its real vLLM CPU experts, and Redis.

The gateway is started exactly as ``make run`` starts it (``python -m coe_router serve``
with the embedded catalog), on free ports, once per session. It launches both experts;
the fixture waits for ``/ready`` and fails with the experts' log tails if they do not
come up. The launchers themselves live in ``tests/support.py``, shared with ``bench/``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import ROOT, GatewayProcess, RedisServer, group_alive, launch_gateway, models_dir

ADMIN_KEY = "integration-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
#: vLLM on two CPU cores needs 60-110 s per expert; the generalist loads first, then the others.
READY_TIMEOUT_S = float(os.environ.get("COE_TEST_READY_TIMEOUT_S", "600"))


def admin(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    """``GET /admin/experts`` keyed by expert name."""
    resp = httpx.get(f"{gw.url}/admin/experts", headers=ADMIN, timeout=10)
    resp.raise_for_status()
    return {e["name"]: e for e in resp.json()["data"]}


def start_gateway(
    tmp: Path, catalog: dict[str, Any], extra_env: dict[str, str] | None = None
) -> GatewayProcess:
    """Start ``python -m coe_router serve`` on ``catalog``; its launched experts get free ports."""
    for expert in catalog["experts"]:
        model = expert.get("launch", {}).get("model")
        if model and not (models_dir() / model / "config.json").exists():
            pytest.fail(f"{models_dir() / model} is missing: run `make models` first")
    env = {
        "COE_LOCAL__PROGRESS_INTERVAL_S": "15",
        "COE_AUTH__ADMIN_KEY": ADMIN_KEY,
        "COE_UPSTREAM__HEALTH_INTERVAL_S": "1",
        **(extra_env or {}),
    }
    return launch_gateway(tmp, catalog, env=env, timeout_s=READY_TIMEOUT_S)


def stop_gateway(gw: GatewayProcess, pids: Iterable[int]) -> None:
    """Stop the gateway; check it shut down cleanly and took ``pids`` (expert groups) along."""
    gw.stop()
    # A clean stop takes the launched experts (and their engine cores) down too.
    pids = list(pids)
    deadline = time.monotonic() + 30
    while any(group_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [p for p in pids if group_alive(p)]
    assert not alive, f"expert processes outlived the gateway: {alive}"
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown.
    assert gw.process.returncode in (0, -signal.SIGTERM), gw.log_tail()
    assert "Application shutdown complete" in gw.log_path.read_text(errors="replace")


def running_gateway(tmp: Path, catalog: dict[str, Any]) -> Iterator[GatewayProcess]:
    """Start a gateway, note its launched experts' pids, and stop it cleanly at the end."""
    gw = start_gateway(tmp, catalog)
    try:
        gw.expert_pids = {
            name: int(e["process"]["pid"])
            for name, e in admin(gw).items()
            if e.get("process", {}).get("pid") is not None
        }
        yield gw
    finally:
        stop_gateway(gw, gw.expert_pids.values())


def local_catalog() -> dict[str, Any]:
    """The embedded default, ``deploy/local.yaml``: both local vLLM CPU experts."""
    catalog: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())
    return catalog


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The embedded default (deploy/local.yaml) with both local experts up.

    Shared by the whole session, so no test may break it: one that kills an expert
    starts a gateway of its own.
    """
    yield from running_gateway(tmp_path_factory.mktemp("gateway"), local_catalog())


# --- Redis for the shared-state tests ---------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests keep apart by key prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    with RedisServer(tmp_path) as server:
        yield server
