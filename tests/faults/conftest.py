"""Fault fixtures: the real gateway process (``python -m coe_router serve`` under uvicorn)
in front of the canned upstream (client-side faults, :mod:`tests.faults.canned`) or of fake
upstream processes that misbehave on purpose (:mod:`tests.faults.upstreams`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.canned import Launcher, StartGateway
from tests.faults.upstreams import FakeUpstream, start_fake
from tests.support import ROOT, LaunchError, child_env, stop_process, tail


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


