"""The aggregator's prompt: the question, the panel's answers, and how to merge them.

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

from typing import Any

from coe_router.aggregation.panel import PanelAnswer

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
