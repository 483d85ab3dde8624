"""Launched experts start the generalist first; the gateway answers as soon as it is up.

Each expert is played by a small Python server (given as ``python`` to the launcher, as
``COE_LOCAL__PYTHON`` does), started for real by the real gateway process: it answers
``/health`` once ``FAKE_DELAY_S`` (its catalog ``launch.env``) seconds have passed since it
started, like vLLM loading its weights, answers chat completions with its served model
name, and writes its start time next to itself, so the test sees the order the gateway
started them in.
"""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import GatewayProcess, launch_gateway

GENERAL_DELAY_S = 5.0  # long enough that the first request surely comes before it is up
#: Long enough that the code expert is still loading when the generalist first answers.
CODE_DELAY_S = 4.0

_SCRIPT = """
import http.server, json, os, sys, time
from pathlib import Path
DELAY = float(os.environ["FAKE_DELAY_S"])
argv = sys.argv
port = int(argv[argv.index("--port") + 1])
name = argv[argv.index("--served-model-name") + 1]
started = time.time()
Path(__file__).with_name(f"started-{name}").write_text(repr(started))
class H(http.server.BaseHTTPRequestHandler):
    def ready(self):
        return time.time() - started >= DELAY
    def do_GET(self):
        self.send_response(200 if self.ready() else 503)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi from " + name}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }).encode()
        self.send_response(200 if self.ready() else 503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _fake_python(tmp: Path) -> Path:
    fake = tmp / "fake-python"
    fake.write_text(f"#!{sys.executable}\n{_SCRIPT}")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def _catalog(tmp: Path) -> dict[str, Any]:
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    experts = []
    for name, delay, extra in [
        ("code", CODE_DELAY_S, {"categories": ["code"]}),  # listed first on purpose
        ("general", GENERAL_DELAY_S, {"generalist": True, "categories": ["general"]}),
    ]:
        launch = {"model": str(model), "env": {"FAKE_DELAY_S": str(delay)}}
        experts.append({"name": name, "served_model_name": f"fake-{name}", **extra,
                        "launch": launch})  # fmt: skip
    return {
        "experts": experts,
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": {"code": ["python"]},
    }


def _chat(gw: GatewayProcess, client: httpx.Client) -> httpx.Response:
    body = {"model": "coe", "messages": [{"role": "user", "content": "Write a python function"}]}
    return client.post(f"{gw.url}/v1/chat/completions", json=body)


def test_the_generalist_starts_alone_and_answers_while_the_others_load(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    env = {"COE_UPSTREAM__HEALTH_INTERVAL_S": "1", "COE_LOCAL__PROGRESS_INTERVAL_S": "1",
           "COE_LOCAL__PYTHON": str(_fake_python(tmp_path))}  # fmt: skip
    gw = launch_gateway(tmp_path / "gw", catalog, env=env, ready_path="/health", timeout_s=60)
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
            # Before the generalist is up nothing can answer: 503, saying it is starting.
            first = _chat(gw, client)
            assert first.status_code == 503, first.text
            assert first.json()["error"]["code"] == "expert_starting"
            deadline = time.monotonic() + 30
            while (resp := _chat(gw, client)).status_code != 200:
                assert time.monotonic() < deadline, resp.text
                time.sleep(0.1)
            answered = time.time()
            # Routed to code, which is still loading: the generalist answers, and says so.
            assert resp.headers["x-coe-fallback"] == "code->general"
            assert resp.json()["choices"][0]["message"]["content"] == "hi from fake-general"
            assert client.get(f"{gw.url}/ready").status_code == 503

            deadline = time.monotonic() + 30
            while client.get(f"{gw.url}/ready").status_code != 200:
                assert time.monotonic() < deadline, gw.log_tail()
                time.sleep(0.2)
            resp = _chat(gw, client)
            assert resp.status_code == 200
            assert "x-coe-fallback" not in resp.headers
            assert resp.json()["choices"][0]["message"]["content"] == "hi from fake-code"
    finally:
        gw.stop()
    general_at = float((tmp_path / "started-fake-general").read_text())
    code_at = float((tmp_path / "started-fake-code").read_text())
    # The code expert started only once the generalist was up, though listed first.
    assert code_at >= general_at + GENERAL_DELAY_S
    assert code_at <= answered + 5.0  # ... and right after, not at the end of something else
    log = (tmp_path / "gw" / "gateway.log").read_text()
    assert "queued: starts once 'general' is up" in log
