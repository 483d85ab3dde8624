"""End to end: the official ``openai`` client, the gateway, and real vLLM CPU experts.

Every test but the last talks to the session's ``gateway`` and leaves it as it found it.
The last kills an expert, so it starts a gateway of its own (one small launched expert,
the other served by ``bench/stub_upstream.py``): the tests run in any order.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.integration.conftest import ADMIN, admin, local_catalog, running_gateway
from tests.support import GatewayProcess, group_alive, start_stub, stop_process

# Greedy and short: CPU generation is slow and answers must be reproducible.
GEN: dict[str, Any] = {"temperature": 0.0, "max_tokens": 48}


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=120)


def ask(
    client: openai.OpenAI, content: str, model: str = "coe", **gen: Any
) -> tuple[Mapping[str, str], ChatCompletion]:
    """One non-streamed chat request; the response's headers and its parsed completion."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **(gen or GEN)
    )
    completion: ChatCompletion = raw.parse()
    return raw.headers, completion


QUESTION = "What is the capital of France?"


def test_models_lists_virtual_model_and_experts(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"coe", "general", "code"} <= ids


def test_routed_general_question_gets_a_real_answer(client: openai.OpenAI) -> None:
    # The category -> expert map comes from the measured profiles, so which expert takes
    # a trivia question is the router's call: the dry run says which, the answer must agree.
    planned = httpx.post(
        f"{client.base_url}route",
        json={"model": "coe", "messages": [{"role": "user", "content": QUESTION}]},
        timeout=30,
    ).json()
    headers, completion = ask(client, QUESTION)
    assert headers["x-coe-expert"] == planned["expert"]
    assert headers["x-coe-category"] == planned["category"]
    assert headers["x-coe-strategy"] == "category"
    assert "x-coe-confidence" in headers
    assert "x-coe-category" in headers
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    coe = completion.model_extra["coe"] if completion.model_extra else {}
    assert coe["expert"] == planned["expert"]


def test_coding_prompt_lands_on_the_code_expert(client: openai.OpenAI) -> None:
    headers, completion = ask(client, "Write a Python function that reverses a string.")
    assert headers["x-coe-expert"] == "code"
    assert headers["x-coe-category"] == "code"
    assert completion.model == "qwen2.5-coder-0.5b-instruct"
    assert "def " in (completion.choices[0].message.content or "")


def test_streaming_through_the_openai_client(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a python function that adds two numbers."}],
        stream=True,
        stream_options={"include_usage": True},
        **GEN,
    ) as response:
        assert response.headers["x-coe-expert"] == "code"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices]) > 3, "expected token-by-token chunks"
    assert "def " in text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_expert_by_name_skips_routing(client: openai.OpenAI) -> None:
    headers, completion = ask(
        client, "Write a python function.", model="general", max_tokens=8, temperature=0.0
    )
    assert headers["x-coe-expert"] == "general"
    assert headers["x-coe-strategy"] == "direct"
    assert completion.model == "smollm2-135m-instruct"


def test_expert_errors_pass_through_as_openai_errors(client: openai.OpenAI) -> None:
    # More tokens than the expert's context allows: vLLM's own 400, passed on intact.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "hi"}], max_tokens=100_000
        )
    assert info.value.status_code == 400


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of this test's own: ``code`` a launched vLLM expert (the smallest model, to
    load fast), ``general`` the stub upstream; ``coe`` routed by keyword."""
    tmp: Path = tmp_path_factory.mktemp("doomed")
    stub, stub_url = start_stub(tmp / "stub.log")
    catalog = local_catalog()
    general, code = catalog["experts"]
    del general["launch"]
    general["replicas"] = [stub_url]
    code["launch"]["model"] = code["served_model_name"] = general["served_model_name"]
    catalog["virtual_models"] = [{"name": "coe", "router": "keyword"}]
    try:
        yield from running_gateway(tmp, catalog)
    finally:
        stop_process(stub, 5)


def test_killed_expert_gives_clean_503s_while_the_other_serves(doomed: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"{doomed.url}/v1", api_key="unused", timeout=120)
    pid = doomed.expert_pids["code"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model="code", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    assert info.value.status_code == 503
    body = info.value.response.json()
    assert body["error"]["code"] == "expert_unavailable"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert time.monotonic() - started < 10, "a dead expert must fail fast, not hang"

    # Routed to the dead expert, a request falls back to the generalist (one hop).
    started = time.monotonic()
    raw = client.with_options(max_retries=0).chat.completions.with_raw_response.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a Python function."}],
        max_tokens=8,
    )
    assert raw.headers["x-coe-fallback"] == "code->general"
    assert raw.parse().choices[0].message.content
    assert time.monotonic() - started < 10

    ok = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert ok.choices[0].message.content

    ready = httpx.get(f"{doomed.url}/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["experts"]["code"] == "not ready"  # no detail without the admin key
    detail = httpx.get(f"{doomed.url}/ready", headers=ADMIN, timeout=10)
    assert detail.json()["experts"]["code"]["live"] is False
    assert admin(doomed)["code"]["process"]["state"] == "exited"
