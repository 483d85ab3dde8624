"""Multi-expert synthesis end to end: the official ``openai`` client, the gateway, and both
real vLLM CPU experts (``general`` and ``code``) on the session's ``gateway``.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support import GatewayProcess

# Greedy and short: CPU generation is slow (the aggregator also reads both answers).
GEN = {"temperature": 0.0, "max_tokens": 32}
QUESTION = "Write a Python function that returns the square of a number."


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=300)


def test_streamed_synthesis_of_two_real_experts(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="coe",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"coe": {"synthesis": True, "k": 2, "strategy": "synthesize"}},
        **GEN,
    ) as response:
        assert response.headers["x-coe-strategy"] == "synthesis-synthesize"
        asked = response.headers["x-coe-experts"].split(",")
        assert sorted(asked) == ["code", "general"]
        # By default the router's first choice (whichever router `coe` uses) merges.
        assert response.headers["x-coe-aggregator"] == asked[0]
        chunks = list(response.parse())
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert len(content) > 3, "expected the aggregator's answer token by token"
    assert text.strip()
    assert len({c.id for c in chunks}) == 1
    usage = next(c.usage for c in chunks if c.usage is not None)
    # The panel's answers count too, not only the aggregator's streamed tokens.
    assert usage.completion_tokens > len(content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    coe = (chunks[-1].model_extra or {})["coe"]
    assert coe["strategy"] == "synthesis-synthesize"
    assert coe["aggregator"] == coe["expert"] == asked[0]
    by = {e["expert"]: e for e in coe["experts"]}
    assert set(by) == {"code", "general"}
    for entry in by.values():
        assert entry["ok"] is True, entry
        assert entry["used"] is True
        assert entry["latency_ms"] > 0


def test_vote_over_two_real_experts_answers_in_openai_shape(gateway: GatewayProcess) -> None:
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "coe", "messages": [{"role": "user", "content": "What is 2 + 3?"}],
              "coe": {"synthesis": True, "k": 2, "strategy": "vote"}, **GEN},
        timeout=300,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert resp.headers["x-coe-strategy"] == "synthesis-vote"
    assert set(resp.headers["x-coe-experts"].split(",")) == {"code", "general"}
    assert resp.headers["x-coe-experts-used"]
    experts = body["coe"]["experts"]
    assert all(e["ok"] for e in experts)
    usage = body["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
