"""Tool loops stay put: a turn inside a tool loop goes back to the expert that made the call.

An agent's tool loop is one turn of the conversation split over several requests: the
expert asks for a tool (``tool_calls``), the client runs it and sends the result back,
and the same expert continues. Routing that result afresh could hand it to an expert
that never made the call, which has to reconstruct the plan from the transcript and
may not even support the tool format. So a request is *in a tool loop* when its latest
assistant message called tools and the conversation has not yet moved past it:

* tool results (``role: "tool"``, or the legacy ``"function"``) follow that assistant
  message, last or followed by the user's text (a Messages request may add text after
  its ``tool_result`` blocks; translation puts it after the tool messages);
* or the last message is that assistant message itself (the client continues it).

A new user turn after the expert's final answer ends the loop: the latest assistant
message then has no tool calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from coe_router.protocol import ChatMessage

#: Roles that carry a tool's result (``function``: OpenAI's legacy function calling).
_RESULTS = ("tool", "function")


def in_tool_loop(messages: Sequence[ChatMessage]) -> bool:
    """Whether ``messages`` continue a tool call (see the module docstring)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.role != "assistant":
            continue
        if not _calls_tools(message):
            return False
        after = messages[i + 1 :]
        return not after or any(m.role in _RESULTS for m in after)
    # No assistant message: a lone tool result still belongs to someone's call.
    return bool(messages) and messages[-1].role in _RESULTS


def _calls_tools(message: ChatMessage) -> bool:
    extra = message.model_extra or {}
    calls = extra.get("tool_calls")
    return (isinstance(calls, list) and bool(calls)) or extra.get("function_call") is not None
