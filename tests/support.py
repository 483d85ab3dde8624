"""What the integration tests and the benchmarks both need, written once.

* :func:`log`: progress on stderr (a benchmark's stdout holds only its table and JSON line);
* :func:`free_port`, :func:`percentile`;
* processes: :func:`stop_process`, :func:`wait_http`, :func:`group_alive`, :func:`tail`;
* :func:`launch_gateway`: ``python -m coe_router serve`` as a subprocess, waited for until
  ``/ready`` (or ``/health``) answers 200; a :class:`GatewayProcess` stops it again;
* :func:`start_stub`: ``bench/stub_upstream.py`` on a free port;
* :class:`RedisServer`: a throwaway ``redis-server`` on a free loopback port;
* :func:`in_process_client`: a ``create_app()`` app with its lifespan entered and an httpx
  client bound to it through ``httpx.ASGITransport`` (no socket).

Failures raise :class:`LaunchError` with the process's log tail: a benchmark stops with it,
pytest reports it as the fixture's error. Only the standard library, httpx and PyYAML are
imported here, so a benchmark pays nothing for what it does not use.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

#: The repository root (``python bench/x.py`` and pytest both run from it).
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


class LaunchError(RuntimeError):
    """A process did not start, or did not answer in time; the message has its log tail."""


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only a benchmark's table and JSON line."""
    print(msg, file=sys.stderr, flush=True)


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, in any order; NaN when empty.

    Linear interpolation between the two nearest ranks, as numpy's default
    (``method="linear"``, Hyndman and Fan type 7): the median of an even count is the mean
    of the middle two, ``q=0`` and ``q=100`` are the minimum and maximum, and the result
    moves smoothly with ``q`` instead of jumping from one sample to the next.
    """
    if not values:
        return math.nan
    xs = sorted(values)  # already sorted input costs one linear pass
    pos = (len(xs) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- processes --------------------------------------------------------------------------------


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 60.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; then close our ends of its pipes."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()  # else a ResourceWarning when the Popen is collected


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, logs: Callable[[], str]
) -> None:
    """Poll ``url`` until it answers 200; raise early if ``proc`` exits, or at the deadline.

    ``logs`` gives the text to show when it fails (called only then).
    """
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
        while True:
            if proc.poll() is not None:
                raise LaunchError(f"{url}: the process exited with {proc.returncode}\n{logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise LaunchError(f"{url} did not answer 200 in {timeout_s:.0f} s\n{logs()}")
            time.sleep(interval)
            interval = min(1.0, interval * 2)  # quick for a stub, gentle for vLLM


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid`` (Linux ``/proc``).

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


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None: the OS places it)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def child_env(extra: Mapping[str, str] | None = None, *, keep_coe: bool = True) -> dict[str, str]:
    """This process's environment for a child, with the repository importable.

    ``keep_coe=False`` drops the caller's ``COE_*`` settings, so that they cannot change
    what a benchmark measures.
    """
    env = {k: v for k, v in os.environ.items() if keep_coe or not k.startswith("COE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | dict(extra or {})


# --- the gateway ------------------------------------------------------------------------------


def models_dir() -> Path:
    """Where ``make models`` puts the checkpoints (``COE_LOCAL__MODELS_DIR`` overrides)."""
    return Path(os.environ.get("COE_LOCAL__MODELS_DIR", ROOT / ".models"))


@dataclass
class GatewayProcess:
    """A gateway started by :func:`launch_gateway`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    run_dir: Path
    #: Launched experts' process groups, when a test wants to see them go.
    expert_pids: dict[str, int] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the gateway's log and of each launched expert's log."""
        out = [f"--- gateway log {self.log_path}", tail(self.log_path, lines)]
        for path in sorted(self.run_dir.glob("*.log")):
            out += [f"--- {path}", tail(path, lines)]
        return "\n".join(out)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the gateway stops the experts it launched), then SIGKILL if it hangs."""
        stop_process(self.process, timeout_s)


def write_catalog(path: Path, catalog: Mapping[str, Any]) -> Path:
    """Write ``catalog`` as YAML, each launched expert on a free port (the dict is updated)."""
    for expert in catalog.get("experts", []):
        if "launch" in expert:
            expert["launch"]["port"] = free_port()
    path.write_text(yaml.safe_dump(dict(catalog), sort_keys=False))
    return path


def launch_gateway(
    workdir: Path,
    catalog: Mapping[str, Any] | Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    ready_path: str = "/ready",
    timeout_s: float = 600.0,
    keep_coe_env: bool = True,
    cpus: set[int] | None = None,
) -> GatewayProcess:
    """Start ``python -m coe_router serve`` on a free port and wait for ``ready_path``.

    ``catalog`` is a path, or a dict written to ``workdir/catalog.yaml`` with free ports
    for its launched experts. The log is ``workdir/gateway.log``; launched experts run in
    ``workdir/run``. ``env`` comes last, over the defaults set here.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if not isinstance(catalog, Path):
        catalog = write_catalog(workdir / "catalog.yaml", catalog)
    port = free_port()
    run_dir = workdir / "run"
    log_path = workdir / "gateway.log"
    defaults = {
        "COE_CATALOG": str(catalog),
        "COE_LOCAL__MODELS_DIR": str(models_dir()),
        "COE_LOCAL__RUN_DIR": str(run_dir),
    }
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "coe_router", "serve", "--host", HOST, "--port", str(port),
             *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=pinned(cpus),
            env=child_env({**defaults, **(env or {})}, keep_coe=keep_coe_env),
        )  # fmt: skip
    gw = GatewayProcess(f"http://{HOST}:{port}", process, log_path, run_dir)
    try:
        wait_http(gw.url + ready_path, process, timeout_s, gw.log_tail)
    except BaseException:
        gw.stop()
        raise
    return gw


def start_stub(
    logfile: Path, *, cpus: set[int] | None = None, args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """``bench/stub_upstream.py`` on a free port; returns the process and its base URL.

    The stub prints its URL as its first line once it listens, so no polling is needed.
    """
    with logfile.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--host", HOST,
             "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=child_env(keep_coe=False),
            preexec_fn=pinned(cpus),
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("stub listening on "):
        stop_process(proc, 5)
        raise LaunchError(f"the stub did not start: {line!r}\n{tail(logfile)}")
    return proc, line.removeprefix("stub listening on ")


# --- Redis ------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` on a free loopback port, without persistence, in its own directory.

    ``stop()`` and ``start()`` again keep the port, so clients can reconnect to it. Also a
    context manager: ``with RedisServer(tmp) as redis: ... redis.url``.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @staticmethod
    def binary() -> str:
        """The ``redis-server`` executable, or a :class:`LaunchError` saying how to get it."""
        found = shutil.which("redis-server")
        if found is None:
            raise LaunchError(
                "redis-server is not installed: the shared-state tests and bench/state.py "
                "need it (`make system-deps`, or `apt-get install redis-server`)"
            )
        return found

    @classmethod
    def version(cls) -> str:
        """The installed server's version ("?" when it does not say)."""
        out = subprocess.run([cls.binary(), "--version"], capture_output=True, text=True).stdout
        return next((v[2:] for v in out.split() if v.startswith("v=")), "?")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and wait until it answers ``PING``."""
        log_path = self.workdir / "redis.log"
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary(), "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self._pong():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                raise LaunchError(
                    f"redis-server on port {self.port} did not answer in {timeout_s} s "
                    f"(exit code {code})\n{tail(log_path)}"
                )
            time.sleep(0.05)

    def _pong(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (its data is gone: no persistence)."""
        stop_process(self.process, timeout_s=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- in-process gateways ----------------------------------------------------------------------

#: The replicas of :func:`keyword_catalog`: names for a fake upstream, never dialled.
GENERAL = ["http://general-a:8000", "http://general-b:8000"]
CODE = ["http://code-a:8000"]


def keyword_catalog(**virtual_model: Any) -> dict[str, Any]:
    """Two experts over fake replicas, a generalist with two replicas and a coder, and the
    virtual model ``coe`` routed by keyword (``virtual_model`` adds to its entry, e.g.
    ``cache_ttl_s=60``)."""
    return {
        "experts": [
            {"name": "general", "served_model_name": "small-general", "generalist": True,
             "categories": ["general", "writing"], "replicas": list(GENERAL), "memory_gb": 1},
            {"name": "code", "served_model_name": "small-coder", "categories": ["code"],
             "cost": 3, "replicas": list(CODE)},
        ],
        "virtual_models": [{"name": "coe", "router": "keyword", **virtual_model}],
        "keywords": {"code": ["python", "function", "bug"], "writing": ["poem", "essay"]},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def in_process_client(app: Any, **client_args: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``app``'s lifespan entered and an ``httpx.AsyncClient`` bound to it (no socket).

    The client carries the app as ``client.app``, for tests that look at its state.
    """
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway", **client_args) as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client
