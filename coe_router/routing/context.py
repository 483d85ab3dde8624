"""Conversations: route on the latest user turn, with the earlier ones as context.

A conversation stays with the expert its earlier turns point to ("can you make it
shorter?" is not a new topic) unless the latest turn, on its own, clearly belongs
elsewhere. "Clearly" is a confidence the router is configured with
(``switch_confidence``). Routers are stateless: the earlier user turns are in every
request, and re-scoring them reproduces the earlier choice without a session store.
System prompts are ignored: they are mostly boilerplate ("You are a helpful
assistant") and say little about what is asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from coe_router.protocol import ChatMessage
from coe_router.routing.base import message_text

#: Earlier user turns kept as context (the most recent ones): older turns rarely matter
#: and every one costs an encoder window.
MAX_CONTEXT_TURNS = 3


@dataclass(frozen=True, slots=True)
class Turns:
    """The latest user turn and the earlier user turns joined (None for a first turn)."""

    latest: str
    context: str | None


def split_turns(messages: Sequence[ChatMessage]) -> Turns:
    """The latest user turn and up to :data:`MAX_CONTEXT_TURNS` earlier ones."""
    users = [message_text(m).strip() for m in messages if m.role == "user"]
    users = [u for u in users if u]
    if not users:
        # No user text at all (e.g. only a system prompt): route on whatever text exists.
        every = " ".join(message_text(m) for m in messages).strip()
        return Turns(latest=every, context=None)
    earlier = users[:-1][-MAX_CONTEXT_TURNS:]
    return Turns(latest=users[-1], context="\n\n".join(earlier) if earlier else None)


#: Words by which a short turn points back at the conversation ("make IT shorter").
_REFERS_BACK = frozenset(
    ("it", "this", "that", "these", "those", "them", "again", "above", "same", "previous",
     "earlier", "shorter", "longer", "more", "also", "instead")
)  # fmt: skip


#: Longer turns are never follow-ups (12 words of 40 characters each).
_FOLLOW_UP_CHARS = 480


def is_follow_up(text: str) -> bool:
    """A turn that only makes sense with the conversation: very short (under 4 words), or
    short (under 12) and pointing back. A classifier reads "thanks! can you make it
    shorter?" as writing with confidence 0.64, about as sure as of a real new writing
    request, so the decision whether to leave the conversation's expert cannot rest on the
    classifier alone. Only the first :data:`_FOLLOW_UP_CHARS` characters are read: a
    longer turn is not a short one, and a 1 MB paste must not be scanned on the loop."""
    if len(text) > _FOLLOW_UP_CHARS:
        return False
    words = re.findall(r"[\w']+", text.lower())
    return len(words) < 4 or (len(words) < 12 and any(w in _REFERS_BACK for w in words))


@dataclass(frozen=True, slots=True)
class Blended:
    """Scores after taking the conversation into account."""

    scores: NDArray[np.float32]
    choice: int
    sticky: bool
    switched: bool
    #: Confidence in ``choice``: a kept conversation keeps the confidence its context had.
    confidence: float


def blend(
    latest: NDArray[np.float32],
    context: NDArray[np.float32] | None,
    switch_confidence: float,
    context_weight: float = 0.5,
    follow_up: bool = False,
) -> Blended:
    """Combine per-option scores of the latest turn and of the earlier turns.

    Without context the latest turn decides. With context, the conversation's option
    (argmax of the context) is kept unless the latest turn picks another one with at
    least ``switch_confidence`` and is not a ``follow_up`` (see :func:`is_follow_up`);
    scores are mixed either way so alternatives stay informative.
    """
    top_latest = int(np.argmax(latest))
    if context is None:
        return Blended(latest, top_latest, False, False, float(latest[top_latest]))
    mixed = ((1.0 - context_weight) * latest + context_weight * context).astype(np.float32)
    top_context = int(np.argmax(context))
    clearly_elsewhere = float(latest[top_latest]) >= switch_confidence and not follow_up
    if top_latest != top_context and clearly_elsewhere:
        return Blended(latest, top_latest, False, True, float(latest[top_latest]))
    confidence = max(float(mixed[top_context]), float(context[top_context]))
    return Blended(mixed, top_context, True, False, confidence)
