"""Tool loops stay on the expert that made the call; tools pass through chat untouched."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from coe_router.protocol import ChatMessage
from coe_router.routing.tool_loop import in_tool_loop
from tests.unit.conftest import GENERAL
from tests.unit.tool_fakes import ToolCallingVLLM

pytestmark = pytest.mark.unit

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip


def msgs(*items: dict[str, Any]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in items]


U = {"role": "user", "content": "weather in Paris?"}
A_CALL = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
A_TEXT = {"role": "assistant", "content": "It is 18C."}


@pytest.mark.parametrize(
    ("conversation", "expected"),
    [
        ([U], False),
        ([U, A_CALL, RESULT], True),  # the result goes back
        ([U, A_CALL, RESULT, {"role": "user", "content": "and Rome?"}], True),  # same turn
        ([U, A_CALL], True),  # the client continues the calling turn
        ([U, A_CALL, RESULT, A_TEXT], False),  # the expert answered: loop over
        ([U, A_CALL, RESULT, A_TEXT, {"role": "user", "content": "thanks"}], False),
        ([U, A_TEXT, {"role": "user", "content": "more"}], False),
        ([RESULT], True),  # a result with its call cut off still belongs to a call
        ([U, {"role": "assistant", "content": None, "tool_calls": []}, RESULT], False),
        ([U, {"role": "assistant", "content": None,
              "function_call": {"name": "f", "arguments": "{}"}},
          {"role": "function", "name": "f", "content": "1"}], True),  # legacy function calling
    ],
)  # fmt: skip
def test_in_tool_loop(conversation: list[ChatMessage], expected: bool) -> None:
    assert in_tool_loop(msgs(*conversation)) is expected  # type: ignore[arg-type]


@pytest.fixture
def fake() -> ToolCallingVLLM:
    return ToolCallingVLLM()


async def test_tools_pass_through_chat_completions_untouched(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    body = {"model": "coe", "messages": [U], "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False}  # fmt: skip
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    sent = fake.received[-1].body
    for key in ("tools", "tool_choice", "parallel_tool_calls", "messages"):
        assert sent[key] == body[key], key
    call = resp.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    # The next turn carries the call and its result back, as the client sent them.
    turn = [U, resp.json()["choices"][0]["message"],
            {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]  # fmt: skip
    resp2 = await client.post("/v1/chat/completions", json={"model": "coe", "messages": turn,
                                                            "tools": TOOLS})  # fmt: skip
    assert resp2.status_code == 200
    assert fake.received[-1].body["messages"] == json.loads(json.dumps(turn))


async def test_a_tool_result_is_never_rerouted_on_chat_completions(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    first = await client.post("/v1/chat/completions",
                              json={"model": "coe", "messages": [U], "tools": TOOLS})  # fmt: skip
    assert first.headers["x-coe-expert"] == "general"
    assert first.headers["x-coe-affinity"] == "new"
    assistant = first.json()["choices"][0]["message"]
    call_id = assistant["tool_calls"][0]["id"]
    # A result turn whose text would send it to the coder (3 keyword hits, confident).
    turn = [U, assistant, {"role": "tool", "tool_call_id": call_id, "content": "18C"},
            {"role": "user", "content": "now a python function to fix this bug"}]  # fmt: skip
    route = await client.post("/v1/route", json={"model": "coe", "messages": turn})
    assert route.json()["expert"] == "code"
    assert route.json()["confidence"] >= 0.8  # enough to move a plain conversation
    second = await client.post(
        "/v1/chat/completions", json={"model": "coe", "messages": turn, "tools": TOOLS}
    )
    assert second.status_code == 200, second.text
    assert second.headers["x-coe-expert"] == "general"
    assert second.headers["x-coe-affinity"] == "tool_loop"
    assert fake.received[-1].url.startswith(tuple(GENERAL))
    assert "tool loop" in second.json()["coe"]["reason"]


async def test_without_a_record_the_router_decides(
    client: httpx.AsyncClient, fake: ToolCallingVLLM
) -> None:
    """A result whose conversation the gateway never saw (or forgot): nothing to keep it on."""
    turn = [{"role": "user", "content": "a python function to fix this bug"}, A_CALL, RESULT]
    resp = await client.post("/v1/chat/completions", json={"model": "coe", "messages": turn})
    assert resp.status_code == 200
    assert resp.headers["x-coe-expert"] == "code"
    assert resp.headers["x-coe-affinity"] == "new"
