"""Session affinity: the turns of one conversation stay on one expert.

A conversation is named by the client (``"coe": {"conversation_id": "..."}`` in the
request) or, failing that, by a hash of how it began: its first system (or developer)
message and its first user message, which every later turn repeats. The id is scoped
to the virtual model and the caller's key id, and the store keeps ``id -> expert``
for ``COE_AFFINITY__TTL_S`` after the last turn.

For each routed request the router decides as usual, then:

* no expert remembered (or it left the catalog): ``new``, the router's choice;
* the router chose the remembered expert: ``sticky``;
* the router chose another expert with confidence >= ``COE_AFFINITY__MOVE_CONFIDENCE``:
  ``moved``, the conversation follows it;
* otherwise ``sticky``: the remembered expert answers (its KV cache already holds the
  conversation's prefix, and the answer keeps one voice);
* inside a tool loop (:mod:`coe_router.routing.tool_loop`), the remembered expert answers
  whatever the router says: ``tool_loop``. It made the call; the result is its to use.

A failing store skips affinity for the request (no outcome, no header).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from coe_router.config import AffinitySettings
from coe_router.errors import StateUnavailable
from coe_router.protocol import ChatMessage
from coe_router.routing.base import RoutingDecision, message_text
from coe_router.state import StoreAccess

#: Longest client-given conversation id that counts (the protocol caps it at this too).
_MAX_ID = 256
#: Conversations whose last write this gateway remembers (to skip redundant refreshes).
_MEMO_SIZE = 10_000


def conversation_id(
    model: str, caller: str, given: str | None, messages: Sequence[ChatMessage]
) -> str:
    """The conversation's id: the client's ``coe.conversation_id`` (``given``), else a hash
    of its opening turns."""
    if given is not None and given.strip():
        basis: list[Any] = ["id", given[:_MAX_ID]]
    else:
        system = next((m for m in messages if m.role in ("system", "developer")), None)
        first_user = next((m for m in messages if m.role == "user"), messages[0])
        basis = ["turns", message_text(system) if system else None, message_text(first_user)]
    canonical = json.dumps([model, caller, *basis], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Affinity:
    """Keeps conversations on their expert, through the state store."""

    def __init__(
        self,
        settings: AffinitySettings,
        access: StoreAccess,
        experts: Collection[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._experts = frozenset(experts)
        self._access = access
        self._clock = clock
        #: conversation -> (expert, when this gateway last wrote it), most recent last.
        self._written: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether routed requests use affinity."""
        return self._settings.enabled

    async def apply(
        self, conversation: str, decision: RoutingDecision, *, tool_loop: bool = False
    ) -> tuple[RoutingDecision, str | None]:
        """The decision to follow and its outcome (``sticky``, ``moved``, ``new``,
        ``tool_loop``), or the router's decision and None when the store cannot be read."""
        try:
            raw = await self._access.guard.call(
                "affinity_get", lambda: self._access.store.get(f"affinity:{conversation}")
            )
        except StateUnavailable:
            return decision, None
        pinned = raw.decode() if raw is not None else None
        if pinned is None or pinned not in self._experts:
            return decision, "new"
        if tool_loop:
            reason = f"tool loop: the result goes back to {pinned!r}, which made the call"
            return dataclasses.replace(decision, expert=pinned, reason=reason), "tool_loop"
        if pinned == decision.expert:
            return decision, "sticky"
        if decision.confidence >= self._settings.move_confidence:
            return decision, "moved"
        kept = dataclasses.replace(
            decision,
            expert=pinned,
            reason=(
                f"conversation affinity: kept on {pinned!r} (the router chose "
                f"{decision.expert!r} at {decision.confidence:.2f} < "
                f"{self._settings.move_confidence:.2f}; {decision.reason or 'no reason'})"
            ),
        )
        return kept, "sticky"

    def remember(self, conversation: str, expert: str) -> None:
        """Record (or refresh) the conversation's expert, in the background.

        A conversation that stays on its expert is written again only once a tenth of the
        TTL has passed since this gateway last wrote it: the store round trip (and the
        background task) per turn bought nothing, and it is on every routed request.
        """
        now = self._clock()
        last = self._written.get(conversation)
        if last is not None and last[0] == expert and now - last[1] < self._settings.ttl_s / 10:
            return
        self._written[conversation] = (expert, now)
        self._written.move_to_end(conversation)
        while len(self._written) > _MEMO_SIZE:
            self._written.popitem(last=False)
        value = expert.encode()
        self._access.background.submit(
            "affinity_set",
            lambda: self._access.store.set(f"affinity:{conversation}", value, self._settings.ttl_s),
        )
