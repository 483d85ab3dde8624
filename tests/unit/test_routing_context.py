"""Conversations: latest user turn, earlier ones as context, stickiness rule."""

from __future__ import annotations

import numpy as np
import pytest

from coe_router.protocol import ChatMessage
from coe_router.routing.context import MAX_CONTEXT_TURNS, blend, is_follow_up, split_turns


def test_split_turns_ignores_system_and_assistant() -> None:
    msgs = [
        ChatMessage(role="system", content="You are helpful"),
        ChatMessage(role="user", content="one"),
        ChatMessage(role="assistant", content="x"),
        ChatMessage(role="user", content="two"),
    ]
    t = split_turns(msgs)
    assert (t.latest, t.context) == ("two", "one")
    assert split_turns(msgs[:2]).context is None


def test_context_keeps_only_recent_turns() -> None:
    msgs = [ChatMessage(role="user", content=str(i)) for i in range(10)]
    t = split_turns(msgs)
    assert t.context is not None
    assert t.context.split("\n\n") == ["6", "7", "8"]
    assert MAX_CONTEXT_TURNS == 3


def test_blend_sticks_unless_clearly_elsewhere() -> None:
    ctx = np.array([0.8, 0.2], dtype=np.float32)
    vague = np.array([0.4, 0.6], dtype=np.float32)
    clear = np.array([0.1, 0.9], dtype=np.float32)
    assert blend(vague, ctx, 0.7).choice == 0
    assert blend(vague, ctx, 0.7).sticky
    assert blend(clear, ctx, 0.7).choice == 1
    assert blend(clear, ctx, 0.7).switched
    assert blend(clear, None, 0.7).choice == 1


@pytest.mark.parametrize(
    ("text", "follow_up"),
    [
        ("why?", True),
        ("thanks! can you make it shorter?", True),
        ("translate it to french", True),
        ("Write me a poem about autumn leaves", False),
        ("Completely different question: what are the symptoms of a stroke?", False),
    ],
)
def test_follow_up_detection(text: str, follow_up: bool) -> None:
    assert is_follow_up(text) is follow_up


def test_a_follow_up_never_leaves_the_conversation() -> None:
    ctx = np.array([0.9, 0.1], dtype=np.float32)
    sure_elsewhere = np.array([0.05, 0.95], dtype=np.float32)
    kept = blend(sure_elsewhere, ctx, 0.6, follow_up=True)
    assert kept.choice == 0
    # The kept conversation keeps its own confidence, not the diluted mix.
    assert kept.confidence == pytest.approx(0.9)
    assert blend(sure_elsewhere, ctx, 0.6).choice == 1
