"""Helpers for the upstream fault tests: fake upstream server processes
(:mod:`tests.faults.fake_upstream`) and the real gateway process in front of them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    HOST,
    ROOT,
    GatewayProcess,
    LaunchError,
    child_env,
    free_port,
    launch_gateway,
    stop_process,
    tail,
)

FAKE = Path(__file__).with_name("fake_upstream.py")
#: The gateways' admin key: ``/ready`` shows per-replica detail to it only.
ADMIN_KEY = "faults-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "/v1/chat/completions"


@dataclass
class FakeUpstream:
    """One fake upstream process."""

    url: str
    process: subprocess.Popen[bytes]

    def control(self, **settings: Any) -> None:
        """``POST /control``: ``default=``, ``mix=``, ``seed=``, ``health=``, ``reset=``."""
        httpx.post(self.url + "/control", json=settings, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: ``counts`` (chat requests, per fault, ``aborted``) and
        ``open_connections``."""
        body: dict[str, Any] = httpx.get(self.url + "/stats", timeout=5).json()
        return body

    def count(self, name: str = "chat") -> int:
        """One counter of :meth:`stats`."""
        return int(self.stats()["counts"].get(name, 0))


def start_fake(workdir: Path) -> FakeUpstream:
    """A fake upstream on a free port (it prints its URL once it listens)."""
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / f"fake-{time.monotonic_ns()}.log"
    with logfile.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(FAKE), "--host", HOST, "--port", "0"],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=child_env(keep_coe=False),
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()  # the listening line is all it ever prints
    if not line.startswith("fake upstream listening on "):
        stop_process(proc, 5)
        raise LaunchError(f"the fake upstream did not start: {line!r}\n{tail(logfile)}")
    return FakeUpstream(line.removeprefix("fake upstream listening on "), proc)


def closed_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://{HOST}:{free_port()}"


def catalog(
    general: Sequence[str], code: Sequence[str], *, extra: Sequence[dict[str, Any]] = (),
    **virtual_model: Any,
) -> dict[str, Any]:  # fmt: skip
    """``general`` (the generalist) and ``code`` over the given replica URLs; virtual model
    ``coe`` routes by keyword ("python" -> code)."""
    return {
        "experts": [
            {"name": "general", "served_model_name": "fake-general", "generalist": True,
             "categories": ["general"], "replicas": list(general)},
            {"name": "code", "served_model_name": "fake-coder", "categories": ["code"],
             "replicas": list(code), "required": False},
            *extra,
        ],
        "virtual_models": [{"name": "coe", "router": "keyword", **virtual_model}],
        "keywords": {"code": ["python", "function"], "math": ["equation"]},
    }  # fmt: skip


def gateway(
    workdir: Path, catalog_: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> GatewayProcess:
    """The real gateway process in front of ``catalog_``, started and ready; quiet logs."""
    settings = {"COE_SERVER__LOG_LEVEL": "warning", "COE_AUTH__ADMIN_KEY": ADMIN_KEY, **(env or {})}
    return launch_gateway(
        workdir, catalog_, env=settings, args=["--no-launch"], timeout_s=60, keep_coe_env=False
    )


@contextlib.contextmanager
def running(gw: GatewayProcess) -> Iterator[GatewayProcess]:
    """Stop the gateway at the end; show its log when the block failed."""
    try:
        yield gw
    except BaseException:
        print(gw.log_tail(80), file=sys.stderr)
        raise
    finally:
        gw.stop(15)


def chat(content: str, model: str = "coe", **extra: Any) -> dict[str, Any]:
    """A chat request body."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    """Check an OpenAI-shaped JSON error with ``status``; return its ``error`` object."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert list(error) == ["message", "type", "param", "code"], error
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


def sse(resp: httpx.Response) -> list[Any]:
    """The JSON of every event of a complete stream; the last item is ``"[DONE]"``.

    Fails unless every event is ``data: {json}`` and the stream ends with ``[DONE]``.
    """
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/event-stream")
    text = resp.text
    assert text.endswith("data: [DONE]\n\n"), text[-300:]
    events = text.removesuffix("\n\n").split("\n\n")
    out: list[Any] = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events)
    return [*out, "[DONE]"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_sockets(pid: int) -> int:
    """Sockets process ``pid`` holds open (its file descriptors that are sockets)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count
