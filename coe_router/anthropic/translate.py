"""Messages request -> OpenAI chat-completions body, and chat completion -> Anthropic Message.

The experts speak OpenAI's chat API (vLLM), so a Messages request is served by
translating it on the way in and the answer on the way out:

* ``system`` becomes the first message (text blocks joined by a newline, as vLLM joins
  text parts);
* text and image blocks become content parts (an image becomes an ``image_url`` part, a
  base64 source a ``data:`` URL);
* an assistant turn's ``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON
  ``arguments``); a user turn's ``tool_result`` blocks become ``role: "tool"`` messages,
  placed first because OpenAI wants them right after the call. A tool result has no error
  flag in OpenAI's API: ``is_error`` prefixes its text with ``[tool error]``. Images in a
  tool result go in a user message after the tool messages (tool messages carry text);
* ``tools`` become function tools, ``tool_choice`` auto/any/tool/none becomes
  ``"auto"``/``"required"``/a named function/``"none"``, ``disable_parallel_tool_use``
  becomes ``parallel_tool_calls: false``; ``stop_sequences`` becomes ``stop``;
  ``metadata.user_id`` becomes ``user``.

The answer keeps the expert's tool-call ids, so a client's ``tool_result.tool_use_id``
finds its call again on the next turn.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from coe_router.anthropic.types import (
    CountTokensRequest,
    ImageBlock,
    Message,
    MessageParam,
    MessagesRequest,
    RequestBlock,
    StopReason,
    TextBlock,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from coe_router.errors import InvalidRequest, UpstreamBadResponse

#: Marks a tool result the client flagged ``is_error`` (OpenAI's API has no such flag).
TOOL_ERROR_PREFIX = "[tool error] "
#: Where a tool call's ``arguments`` go when they are not a JSON object: Anthropic's
#: ``input`` must be one, and dropping what the model wrote would hide its mistake.
UNPARSED_ARGUMENTS = "_unparsed_arguments"

_FINISH_TO_STOP: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- request ----------------------------------------------------------------------------------


def to_openai(req: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat-completions body for ``req`` (``model`` is the client's; the gateway
    replaces it with the expert's). Streaming asks for usage, which ``message_delta``
    reports."""
    body: dict[str, Any] = {"model": req.model, "messages": openai_messages(req)}
    body["max_tokens"] = req.max_tokens
    if req.stop_sequences:
        body["stop"] = list(req.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    body.update(openai_tools(req))
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id
    if continues_assistant(req):
        # A trailing assistant turn is a prefill: vLLM continues it instead of starting
        # a new turn (its chat-template parameters; Anthropic's semantics).
        body["add_generation_prompt"] = False
        body["continue_final_message"] = True
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def continues_assistant(req: CountTokensRequest) -> bool:
    """Whether the conversation ends with an assistant turn the answer continues."""
    return req.messages[-1].role == "assistant"


def openai_messages(req: CountTokensRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, ``system`` first."""
    out: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else _join(req.system)
        out.append({"role": "system", "content": system})
    for message in req.messages:
        out.extend(_turn(message))
    return out


def openai_tools(req: CountTokensRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` in OpenAI's terms (only the
    ones the request sets)."""
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [
            {"type": "function", "function": {
                "name": t.name,
                **({"description": t.description} if t.description is not None else {}),
                "parameters": t.input_schema,
            }}
            for t in req.tools
        ]  # fmt: skip
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceAuto):
        out["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        out["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceTool):
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, ToolChoiceNone):
        out["tool_choice"] = "none"
    if not isinstance(choice, ToolChoiceNone | None) and choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _turn(message: MessageParam) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        return [_assistant(message.content)]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            text, images = _tool_result(block)
            tool_messages.append({"role": "tool", "tool_call_id": block.tool_use_id,
                                  "content": text})  # fmt: skip
            parts.extend(images)
        elif isinstance(block, TextBlock | ImageBlock):
            parts.append(_part(block))
        else:  # a tool_use block in a user turn: Anthropic rejects it too
            raise _misplaced(block.type, "user")
    out = tool_messages
    if parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _assistant(blocks: list[RequestBlock]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({
                "id": block.id,
                "type": "function",
                "function": {"name": block.name,
                             "arguments": json.dumps(block.input, ensure_ascii=False)},
            })  # fmt: skip
        else:
            raise _misplaced(block.type, "assistant")
    out: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_result(block: ToolResultBlock) -> tuple[str, list[dict[str, Any]]]:
    """The tool message's text, and the images the result carried (as user parts)."""
    if block.content is None or isinstance(block.content, str):
        text, images = block.content or "", []
    else:
        text = _join([b for b in block.content if isinstance(b, TextBlock)])
        images = [_part(b) for b in block.content if isinstance(b, ImageBlock)]
    return (TOOL_ERROR_PREFIX + text if block.is_error else text), images


def _part(block: TextBlock | ImageBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    source = block.source
    url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # All-text content as one string: every chat template takes a string, not all take parts.
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _join(blocks: Sequence[TextBlock]) -> str:
    return "\n".join(b.text for b in blocks)


def _misplaced(block_type: str, role: str) -> InvalidRequest:
    return InvalidRequest(
        f"A {block_type} block cannot appear in a {role} message.",
        param="messages", code="invalid_value",
    )  # fmt: skip


# --- response ---------------------------------------------------------------------------------


def json_object(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for reading expert output)."""
    return value if isinstance(value, dict) else {}


def message_id(openai_id: object) -> str:
    """An Anthropic ``msg_...`` id, derived from the expert's completion id when it has one
    (so logs of both sides match), else random."""
    raw = _ID_UNSAFE.sub("", str(openai_id or "").removeprefix("chatcmpl-"))
    return f"msg_{raw or uuid.uuid4().hex}"


def stop_reason(
    finish_reason: object, matched: object, stop_sequences: Sequence[str] | None
) -> tuple[StopReason, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for an OpenAI ``finish_reason``.

    ``matched`` is vLLM's ``stop_reason`` field: the stop string that ended the answer
    (None at end of sequence). A ``"stop"`` is reported as ``stop_sequence`` only when
    that string is one the client asked for; an expert that does not say which string
    matched gets ``end_turn``, since the text alone cannot tell.
    """
    if finish_reason == "stop" and isinstance(matched, str) and matched in (stop_sequences or ()):
        return "stop_sequence", matched
    reason = _FINISH_TO_STOP.get(str(finish_reason), "end_turn")
    return reason, None


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string) as Anthropic's ``input`` object."""
    if isinstance(arguments, dict):
        return arguments
    text = arguments if isinstance(arguments, str) else ""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {UNPARSED_ARGUMENTS: text}
    return value if isinstance(value, dict) else {UNPARSED_ARGUMENTS: text}


def usage(raw: object) -> Usage:
    """OpenAI ``usage`` as Anthropic's (zeros when the expert sent none)."""
    counts = raw if isinstance(raw, dict) else {}
    details = counts.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=int(counts.get("prompt_tokens") or 0),
        output_tokens=int(counts.get("completion_tokens") or 0),
        cache_read_input_tokens=int(cached) if isinstance(cached, int) else None,
    )


def from_openai(
    completion: dict[str, Any], *, model: str, stop_sequences: Sequence[str] | None = None
) -> Message:
    """The Anthropic Message for an expert's chat completion (its first choice).

    ``model`` is the name reported to the client. Raises :class:`UpstreamBadResponse`
    when the completion has no choice to translate.
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamBadResponse("the expert's completion has no choices")
    choice = choices[0]
    message = json_object(choice.get("message"))
    content: list[TextBlock | ToolUseBlock] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append(TextBlock(text=text))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = json_object(json_object(call).get("function"))
        if not function.get("name"):
            raise UpstreamBadResponse("the expert sent a tool call without a function name")
        content.append(ToolUseBlock(
            id=str(json_object(call).get("id") or f"toolu_{uuid.uuid4().hex}"),
            name=str(function["name"]),
            input=tool_input(function.get("arguments")),
        ))  # fmt: skip
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"),
                                   stop_sequences)  # fmt: skip
    if reason == "end_turn" and any(isinstance(b, ToolUseBlock) for b in content):
        reason = "tool_use"  # some servers end a tool call with "stop"
    return Message(
        id=message_id(completion.get("id")),
        model=model,
        content=content,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=usage(completion.get("usage")),
    )
