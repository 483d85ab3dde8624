"""SIGTERM drains (row 5 of the fault table): requests in flight finish within
``COE_SERVER__DRAIN_S``; what outlives it ends cleanly (a stream: an error event, then
``[DONE]``; an answer not yet started: a JSON 503). Signals sent for real to the real
gateway process, in front of a slow canned upstream."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
import time
from pathlib import Path

import httpx

from tests.faults.canned import StartGateway, catalog, log_of
from tests.support import free_port, launch_gateway

CHAT = "/v1/chat/completions"
DRAIN_S = 2.0


def body(model: str, stream: bool) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def read_stream(client: httpx.AsyncClient, model: str, started: asyncio.Event) -> str:
    async with client.stream("POST", CHAT, json=body(model, True)) as resp:
        assert resp.status_code == 200
        text = ""
        async for chunk in resp.aiter_text():
            text += chunk
            started.set()
        return text


def payloads(text: str) -> list[object]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_sigterm_lets_requests_finish_then_ends_the_rest_in_band(
    start_gateway: StartGateway,
) -> None:
    gw = start_gateway(
        [("general", "general"), ("slow", "slow-stream"), ("short", "short-stream"),
         ("slowjson", "slow-json")],
        env={"COE_SERVER__DRAIN_S": str(DRAIN_S)},
    )  # fmt: skip
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=gw.url, timeout=timeout) as client:
        flags = [asyncio.Event(), asyncio.Event()]
        slow = asyncio.create_task(read_stream(client, "slow", flags[0]))
        short = asyncio.create_task(read_stream(client, "short", flags[1]))
        waiting = asyncio.create_task(client.post(CHAT, json=body("slowjson", False)))
        for flag in flags:
            await asyncio.wait_for(flag.wait(), 10)
        await asyncio.sleep(0.2)  # the non-streamed request is in flight by now
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)

        # A stream that ends within the drain time ends as it would have: complete.
        done = payloads(await short)
        assert done[-1] == "[DONE]"
        assert not any(isinstance(p, dict) and "error" in p for p in done)
        assert done[-2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]

        # A stream that outlives it: its events so far, an error event, [DONE]; not cut.
        cut = payloads(await slow)
        ended = time.monotonic() - signalled
        assert DRAIN_S - 0.5 <= ended <= DRAIN_S + 3, ended
        assert cut[-1] == "[DONE]"
        error = cut[-2]["error"]  # type: ignore[index]
        assert (error["type"], error["code"]) == ("service_unavailable", "shutting_down")
        assert len(cut) > 3  # content kept flowing while it drained

        # A non-streamed answer that never came: a JSON 503, not a plain-text 500.
        resp = await waiting
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "shutting_down"
        assert resp.headers["retry-after"]

        # New connections are refused once the drain began.
        try:
            refused = await client.get("/health")
        except httpx.TransportError:
            pass
        else:
            raise AssertionError(f"served after SIGTERM: {refused.status_code}")

    # uvicorn re-raises the signal once it has shut down: the conventional "ended by SIGTERM".
    assert gw.process.wait(10) in (0, -signal.SIGTERM)
    log = log_of(gw)
    assert "Traceback" not in log
    assert "Cancel" not in log  # uvicorn's own backstop never had to cut anything


FAKE_EXPERT = """#!{python}
import os, signal, sys, time
def stop(*_):
    with open(os.environ["STOPPED_AT"], "w") as f:
        f.write(repr(time.monotonic()))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(os.environ["STOPPED_AT"] + ".started", "w").close()
while True:
    time.sleep(1)
"""


async def test_launched_experts_stop_only_after_the_drain(tmp_path: Path, canned_url: str) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_EXPERT.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    stopped_at = tmp_path / "stopped-at"
    experts = catalog(canned_url, [("general", "general"), ("slow", "slow-stream")])
    experts["experts"].append({
        "name": "local", "served_model_name": "local", "categories": ["local"],
        "required": False, "launch": {"model": str(model), "port": free_port(),
                                      "env": {"STOPPED_AT": str(stopped_at)}},
    })  # fmt: skip
    gw = launch_gateway(
        tmp_path / "gw", experts, env={"COE_SERVER__DRAIN_S": str(DRAIN_S),
                                       "COE_LOCAL__PYTHON": str(fake)},
        ready_path="/health", timeout_s=60, keep_coe_env=False,
    )  # fmt: skip
    try:
        started = Path(str(stopped_at) + ".started")
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(started.exists):
            assert time.monotonic() < deadline, gw.log_tail()
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            flag = asyncio.Event()
            slow = asyncio.create_task(read_stream(client, "slow", flag))
            await asyncio.wait_for(flag.wait(), 10)
            gw.process.send_signal(signal.SIGTERM)
            await slow
            stream_ended = time.monotonic()
        gw.process.wait(15)
    finally:
        gw.stop(10)
    # The expert got its SIGTERM after the stream it might have served had ended.
    assert float(stopped_at.read_text()) >= stream_ended - 0.2
