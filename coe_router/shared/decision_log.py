"""The routing-decision log: one entry per routed request, capped, never in the way.

Entries go to the store's capped log ``decisions`` (a Redis stream trimmed with
``XADD ... MAXLEN ~ COE_DECISION_LOG__MAX_ENTRIES``; a bounded deque in-process) from
the background queue: a request never waits for its entry, and when the store is slow
the queue fills and entries are dropped (counted in ``coe_state_errors_total``).
``python -m router_training replay`` turns the log into an evaluation set.

Every field is a string (stream fields are)::

    v             format version ("1")
    ts            unix time of the decision (seconds, 3 decimals)
    model         the virtual model that was asked for
    prompt        the user turns, oldest first, joined by a blank line; the last
                  ``max_prompt_chars`` characters (the latest turn matters most),
                  fewer if the entry would pass ``max_entry_bytes``
    expert        the router's choice          category    its category ("" if none)
    confidence    its confidence               strategy    the router's name
    alternatives  JSON [[expert, score], ...]  reason      the router's explanation
    served        the expert that answered (after affinity and tier-aware routing)
    affinity      sticky | moved | new | ""    conversation  the conversation id

The log stores user prompts: it is off unless ``COE_DECISION_LOG__ENABLED=true``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from coe_router.config import DecisionLogSettings
from coe_router.protocol import ChatMessage
from coe_router.routing.base import RoutingDecision, message_text
from coe_router.state import StoreAccess

#: Name of the log in the store.
LOG_NAME = "decisions"
FORMAT_VERSION = "1"


def prompt_of(messages: Sequence[ChatMessage], max_chars: int) -> str:
    """The user turns as training data sees a conversation (``router_training/data.py``)."""
    users = [message_text(m) for m in messages if m.role == "user"]
    text = "\n\n".join(u for u in users if u.strip()) or message_text(messages[-1])
    return text[-max_chars:]


class DecisionLog:
    """Appends routing decisions to the store, fire-and-forget."""

    def __init__(self, settings: DecisionLogSettings, access: StoreAccess) -> None:
        self._settings = settings
        self._access = access

    @property
    def enabled(self) -> bool:
        """Whether decisions are logged."""
        return self._settings.enabled

    def record(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        decision: RoutingDecision,
        served: str,
        affinity: str | None = None,
        conversation: str | None = None,
    ) -> None:
        """Queue one entry (routed requests only; direct ones carry no decision)."""
        if not self._settings.enabled or decision.strategy == "direct":
            return
        entry = {
            "v": FORMAT_VERSION,
            "ts": f"{time.time():.3f}",
            "model": model,
            "prompt": prompt_of(messages, self._settings.max_prompt_chars),
            "expert": decision.expert,
            "category": decision.category or "",
            "confidence": f"{decision.confidence:.6g}",
            "strategy": decision.strategy,
            "alternatives": json.dumps([[c.expert, c.score] for c in decision.alternatives]),
            "reason": decision.reason or "",
            "served": served,
            "affinity": affinity or "",
            "conversation": conversation or "",
        }
        over = sum(len(k) + len(v.encode()) for k, v in entry.items())
        over -= self._settings.max_entry_bytes
        if over > 0:  # cut the prompt's head (the latest turn matters most) to fit the cap
            prompt = entry["prompt"].encode()
            entry["prompt"] = prompt[min(over, len(prompt)) :].decode(errors="ignore")
        cap = self._settings.max_entries
        self._access.background.submit(
            "decision_log", lambda: self._access.store.append(LOG_NAME, entry, cap)
        )
