"""Integration fixtures: the real gateway process with its real vLLM CPU experts.

The gateway is started exactly as `make run` starts it (``python -m coe_router serve``
with the embedded catalog), on free ports, once per session. It launches both
experts; the fixture waits for ``/ready`` and fails with the experts' log tails if
they do not come up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "integration-admin-key"
#: vLLM on two CPU cores needs 60-110 s per expert; both load at once.
READY_TIMEOUT_S = float(os.environ.get("COE_TEST_READY_TIMEOUT_S", "600"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def models_dir() -> Path:
    """Where `make models` put the checkpoints."""
    return Path(os.environ.get("COE_LOCAL__MODELS_DIR", ROOT / ".models"))


@dataclass
class Gateway:
    """A running gateway process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    run_dir: Path
    expert_pids: dict[str, int] = field(default_factory=dict)

    def admin(self) -> dict[str, dict[str, object]]:
        """``GET /admin/experts`` keyed by expert name."""
        resp = httpx.get(
            f"{self.url}/admin/experts",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        resp.raise_for_status()
        return {e["name"]: e for e in resp.json()["data"]}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the gateway's log and of each expert's log."""
        out = [f"--- gateway log {self.log_path}"]
        out += self.log_path.read_text(errors="replace").splitlines()[-lines:]
        for log in sorted(self.run_dir.glob("*.log")):
            out.append(f"--- {log}")
            out += log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


def _stop(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``.

    Launched experts lead their own group, so this also sees vLLM's engine-core child.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start_gateway(
    tmp: Path,
    catalog: dict[str, Any],
    extra_env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Gateway:
    """Start ``python -m coe_router serve`` on ``catalog`` (launched experts get free ports)."""
    for expert in catalog["experts"]:
        if "launch" in expert:
            expert["launch"]["port"] = free_port()
            model = expert["launch"]["model"]
            if not (models_dir() / model / "config.json").exists():
                pytest.fail(f"{models_dir() / model} is missing: run `make models` first")
    catalog_path = tmp / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog))
    port = free_port()
    run_dir = tmp / "run"
    log_path = tmp / "gateway.log"
    env = {
        **os.environ,
        "COE_CATALOG": str(catalog_path),
        "COE_LOCAL__MODELS_DIR": str(models_dir()),
        "COE_LOCAL__RUN_DIR": str(run_dir),
        "COE_LOCAL__PROGRESS_INTERVAL_S": "15",
        "COE_AUTH__ADMIN_KEY": ADMIN_KEY,
        "COE_UPSTREAM__HEALTH_INTERVAL_S": "1",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "coe_router", "serve", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    gw = Gateway(f"http://127.0.0.1:{port}", process, log_path, run_dir)
    deadline = time.monotonic() + READY_TIMEOUT_S
    path = "/ready" if wait_ready else "/health"
    while True:
        if process.poll() is not None:
            pytest.fail(f"gateway exited with {process.returncode}\n{gw.log_tail()}")
        try:
            if httpx.get(f"{gw.url}{path}", timeout=5).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"gateway not ready after {READY_TIMEOUT_S:.0f} s\n{gw.log_tail()}")
        time.sleep(1)


def stop_gateway(gw: Gateway, pids: Iterable[int]) -> None:
    """Stop the gateway; check it shut down cleanly and took ``pids`` (expert groups) along."""
    _stop(gw.process)
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


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The embedded default (deploy/local.yaml) with both local experts up."""
    catalog = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), catalog)
    try:
        gw.expert_pids = {
            name: int(e["process"]["pid"])  # type: ignore[index, call-overload]
            for name, e in gw.admin().items()
        }
        yield gw
    finally:
        stop_gateway(gw, gw.expert_pids.values())


# --- Redis for the shared-state tests ---------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` on a free loopback port, without persistence, in its own directory.

    ``stop()`` and ``start()`` again keep the port, so clients can reconnect to it.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start it and wait until it accepts connections."""
        import shutil  # here, not at the top: this block is appended to a shared file

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the shared-state tests need it "
                "(`make system-deps`, or `apt-get install redis-server`)"
            )
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer on port {self.port} in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (its data is gone: no persistence)."""
        if self.process is not None:
            _stop(self.process, timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
