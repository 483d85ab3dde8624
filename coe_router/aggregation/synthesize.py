"""The ``synthesize`` strategy: an aggregator expert merges the panel's answers.

Its prompt: the question, the panel's answers, and how to merge them.

The aggregator receives the conversation unchanged, then one extra user turn::

    You are given answers from several expert models to the conversation above.
    Expert 1 (code):
    <answer>
    ...
    Write the single best final answer for the user. Use what is correct in the
    answers, fix what is wrong, and do not mention the experts.

Answers longer than ``max_chars`` are cut, so the prompt stays within the
aggregator's context.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from coe_router.aggregation.base import Delta, Merge, Merged
from coe_router.aggregation.panel import PanelAnswer
from coe_router.errors import UpstreamError
from coe_router.sse import data_events

INSTRUCTION = (
    "Write the single best final answer for the user. Use what is correct in the answers, "
    "fix what is wrong, and do not mention the experts."
)


def aggregator_messages(
    messages: list[dict[str, Any]], answers: list[PanelAnswer], max_chars: int = 4000
) -> list[dict[str, Any]]:
    """The aggregator's conversation: the original one plus the panel's answers."""
    parts = ["You are given answers from several expert models to the conversation above."]
    for i, a in enumerate((a for a in answers if a.ok), start=1):
        text = a.text if len(a.text) <= max_chars else a.text[:max_chars] + " [...]"
        parts.append(f"Expert {i} ({a.expert}):\n{text}")
        a.used = True
    parts.append(INSTRUCTION)
    return [*messages, {"role": "user", "content": "\n\n".join(parts)}]


class Synthesize:
    """An aggregator expert reads the panel's answers and writes the final one."""

    uses_aggregator: ClassVar[bool] = True

    def _body(self, merge: Merge, stream: bool) -> dict[str, Any]:
        messages = aggregator_messages(merge.request["messages"], merge.answers)
        body = {**merge.request, "model": merge.aggregator.spec.served_model_name,
                "stream": stream, "messages": messages}  # fmt: skip
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return body

    async def merge(self, merge: Merge) -> Merged:
        """The aggregator's answer, whole."""
        client = merge.aggregator
        merge.expert = client.name
        async with merge.hold(client.name):
            result, _ = await client.complete(self._body(merge, stream=False))
        choice = result["choices"][0] if result.get("choices") else {}
        message = choice.get("message") or {}
        merge.usage.update(_ints(result.get("usage")))
        return Merged(str(message.get("content") or ""), choice.get("finish_reason") or "stop")

    async def stream(self, merge: Merge) -> AsyncIterator[Delta]:
        """The aggregator's answer as it writes it; its usage is kept for the total."""
        client = merge.aggregator
        merge.expert = client.name
        async with merge.hold(client.name):
            upstream = await client.stream(self._body(merge, stream=True))
            try:
                async for data in data_events(upstream):
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue
                    if not isinstance(obj, dict):
                        continue
                    if isinstance(obj.get("error"), dict):  # vLLM reports in-band errors so
                        raise UpstreamError(
                            f"aggregator {client.name!r} failed mid-stream: "
                            f"{obj['error'].get('message', '')}"
                        )
                    merge.usage.update(_ints(obj.get("usage")))
                    choices = obj.get("choices") or []
                    if choices and isinstance(choices[0], dict):
                        yield choices[0].get("delta") or {}, choices[0].get("finish_reason")
            finally:
                await upstream.aclose()


def _ints(usage: object) -> dict[str, int]:
    """The integer fields of a ``usage`` object (empty when there is none)."""
    if not isinstance(usage, dict):
        return {}
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
