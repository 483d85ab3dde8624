"""A launched expert's progress line predicts the time left from its last start.

The expert is played by a small Python server (given as ``python`` to the launcher, as
``COE_LOCAL__PYTHON`` does), started for real as a process: it answers ``/health`` after a
delay, like vLLM loading its weights.
"""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import httpx

from coe_router.catalog import LaunchSpec
from coe_router.config import LocalSettings
from coe_router.experts.process import LocalProcess
from tests.support import free_port

#: Serves 200 on every GET once ``DELAY`` seconds have passed since it started.
_SCRIPT = """
import http.server, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
started = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = time.monotonic() - started >= DELAY
        self.send_response(200 if ready else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _process(tmp_path: Path, delay_s: float, args: list[str]) -> LocalProcess:
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!{sys.executable}\nDELAY = {delay_s}\n{_SCRIPT}")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    spec = LaunchSpec(model=str(model), port=free_port(), args=args)
    settings = LocalSettings(python=str(fake), run_dir=tmp_path / "run")
    return LocalProcess("local", spec, "local", settings)


async def _start_until_ready(process: LocalProcess) -> list[str]:
    """Start ``process``; poll its health like the pool does; the progress lines seen."""
    lines = []
    await process.start()
    url = f"{process.spec.base_url}/health"
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
            for _ in range(200):
                lines.append(process.progress())
                try:
                    if (await client.get(url)).status_code == 200:
                        process.mark_ready()
                        return lines
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"never ready: {process.detail}")
    finally:
        await process.stop()


async def test_the_second_start_estimates_the_time_left_from_the_first(tmp_path: Path) -> None:
    first = _process(tmp_path, 1.0, ["--enforce-eager"])
    assert first.expected_s is None
    lines = await _start_until_ready(first)
    assert all("no estimate yet" in line for line in lines)
    assert first.ready_after_s is not None
    assert first.ready_after_s >= 1.0

    second = _process(tmp_path, 1.0, ["--enforce-eager"])
    assert second.expected_s == round(first.ready_after_s, 1)
    lines = await _start_until_ready(second)
    assert "s left (last start:" in lines[0]

    # Other flags (another model, or compilation on): the old time predicts nothing.
    other = _process(tmp_path, 1.0, [])
    assert other.expected_s is None
