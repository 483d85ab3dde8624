"""Fault fixtures: the real gateway process (``python -m coe_router serve``) under uvicorn,
in front of the canned upstream (``canned_upstream.py``), as a client would meet it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    HOST,
    ROOT,
    GatewayProcess,
    LaunchError,
    child_env,
    launch_gateway,
    stop_process,
    tail,
)

#: An expert of a test catalog: (name, the served model name that picks the canned
#: behaviour), and optionally its replica's URL (default: the canned upstream).
Expert = tuple[str, str] | tuple[str, str, str]
StartGateway = Callable[..., GatewayProcess]


@pytest.fixture(scope="module")
def canned_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running canned upstream (see ``canned_upstream.py``)."""
    log_path = tmp_path_factory.mktemp("canned") / "canned.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("canned_upstream.py"))],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=child_env(keep_coe=False),
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("canned listening on "):
        stop_process(proc, 5)
        raise LaunchError(f"the canned upstream did not start: {line!r}\n{tail(log_path)}")
    try:
        yield line.removeprefix("canned listening on ")
    finally:
        proc.stdout.close()
        stop_process(proc, 5)


def catalog(upstream: str, experts: Sequence[Expert]) -> dict[str, Any]:
    """A catalog of ``experts`` on ``upstream``; the first is the generalist."""
    return {
        "experts": [
            {"name": e[0], "served_model_name": e[1], "generalist": i == 0,
             "categories": ["general"] if i == 0 else [e[0]],
             "replicas": [e[2] if len(e) > 2 else upstream]}
            for i, e in enumerate(experts)
        ],
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": {e[0]: [e[0]] for e in experts[1:]},
    }  # fmt: skip


class Launcher:
    """Starts gateways over the canned upstream in ``workdir``; stops them all at the end."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.workdir, self.upstream = workdir, upstream
        self.started: list[GatewayProcess] = []

    def __call__(
        self,
        experts: Sequence[Expert] = (("general", "general"),),
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        """A gateway with ``experts`` and the ``COE_*`` settings in ``env``."""
        gw = launch_gateway(
            self.workdir / f"gateway-{len(self.started)}", catalog(self.upstream, experts),
            env=dict(env or {}), args=["--no-launch"], ready_path="/health", timeout_s=60,
            keep_coe_env=False,
        )  # fmt: skip
        self.started.append(gw)
        return gw

    def stop_all(self) -> None:
        for gw in self.started:
            gw.stop(10)


@pytest.fixture
def start_gateway(tmp_path: Path, canned_url: str) -> Iterator[StartGateway]:
    """Start a gateway for one test: ``start_gateway(experts, env={...})``."""
    launcher = Launcher(tmp_path, canned_url)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory, canned_url: str
) -> Iterator[StartGateway]:
    """Start a gateway shared by a module's tests (same call as ``start_gateway``)."""
    launcher = Launcher(tmp_path_factory.mktemp("gateways"), canned_url)
    yield launcher
    launcher.stop_all()


def log_of(gw: GatewayProcess) -> str:
    """The gateway's whole log so far."""
    return gw.log_path.read_text(errors="replace")


__all__ = ["HOST", "Expert", "StartGateway", "catalog", "log_of"]
