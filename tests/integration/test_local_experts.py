"""End to end: the official ``openai`` client, the gateway, and real vLLM CPU experts.

The tests run in file order; the last one kills an expert, so keep it last.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from tests.integration.conftest import Gateway, group_alive

pytestmark = pytest.mark.integration

# Greedy and short: CPU generation is slow and answers must be reproducible.
GEN = {"temperature": 0.0, "max_tokens": 48}


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=120)


def test_models_lists_virtual_model_and_experts(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"coe", "general", "code"} <= ids


def test_routed_general_question_gets_a_real_answer(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="coe",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        **GEN,
    )
    completion = raw.parse()
    assert raw.headers["x-coe-expert"] == "general"
    assert raw.headers["x-coe-strategy"] == "category"
    assert "x-coe-confidence" in raw.headers
    assert "x-coe-category" in raw.headers
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    coe = completion.model_extra["coe"] if completion.model_extra else {}
    assert coe["expert"] == "general"


def test_coding_prompt_lands_on_the_code_expert(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a Python function that reverses a string."}],
        **GEN,
    )
    completion = raw.parse()
    assert raw.headers["x-coe-expert"] == "code"
    assert raw.headers["x-coe-category"] == "code"
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
    raw = client.chat.completions.with_raw_response.create(
        model="general",
        messages=[{"role": "user", "content": "Write a python function."}],
        max_tokens=8,
        temperature=0.0,
    )
    assert raw.headers["x-coe-expert"] == "general"
    assert raw.headers["x-coe-strategy"] == "direct"
    assert raw.parse().model == "smollm2-135m-instruct"


def test_expert_errors_pass_through_as_openai_errors(client: openai.OpenAI) -> None:
    # More tokens than the expert's context allows: vLLM's own 400, passed on intact.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "hi"}], max_tokens=100_000
        )
    assert info.value.status_code == 400


def test_killed_expert_gives_clean_503s_while_the_other_serves(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    pid = gateway.expert_pids["code"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)

    for model, content in (("code", "hi"), ("coe", "Write a Python function.")):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client.with_options(max_retries=0).chat.completions.create(
                model=model, messages=[{"role": "user", "content": content}], max_tokens=8
            )
        assert info.value.status_code == 503
        body = info.value.response.json()
        assert body["error"]["code"] == "expert_unavailable"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert time.monotonic() - started < 10, "a dead expert must fail fast, not hang"

    ok = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert ok.choices[0].message.content

    ready = httpx.get(f"{gateway.url}/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["experts"]["code"]["live"] is False
    assert gateway.admin()["code"]["process"]["state"] == "exited"  # type: ignore[index]
