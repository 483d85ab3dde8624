"""Fault fixtures: the real gateway process (``python -m coe_router serve`` under uvicorn)
in front of the canned upstream (client-side faults, :mod:`tests.faults.canned`) or of fake
upstream processes that misbehave on purpose (:mod:`tests.faults.upstreams`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.canned import Launcher, StartGateway
from tests.faults.upstreams import FakeUpstream, gateway, running, start_fake
from tests.support import GatewayProcess, start_upstream_process, stop_process


@pytest.fixture(scope="module")
def canned_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running canned upstream (see ``canned_upstream.py``)."""
    proc, url = start_upstream_process(
        Path(__file__).with_name("canned_upstream.py"), "canned listening on",
        tmp_path_factory.mktemp("canned") / "canned.log",
    )  # fmt: skip
    try:
        yield url
    finally:
        stop_process(proc, 5)


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


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], FakeUpstream]]:
    """Start fake upstreams on demand; all are stopped when the module ends."""
    started: list[FakeUpstream] = []
    workdir = tmp_path_factory.mktemp("fakes")

    def start() -> FakeUpstream:
        fake = start_fake(workdir)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        stop_process(fake.process, 5)


@pytest.fixture(scope="module")
def fake_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start a module's gateway over fake upstreams: ``fake_gateway(catalog, env)`` (see
    :func:`tests.faults.upstreams.gateway`); it stops when the module ends."""
    with contextlib.ExitStack() as stack:

        def start(cat: Mapping[str, Any], env: Mapping[str, str] | None = None) -> GatewayProcess:
            gw = gateway(tmp_path_factory.mktemp("gw"), cat, env)
            return stack.enter_context(running(gw))

        yield start


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[httpx.Client]:
    """A client of the module's ``gw``."""
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        yield c
