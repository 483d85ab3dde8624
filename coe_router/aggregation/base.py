"""The aggregation-strategy contract: how a panel's answers become one answer.

A strategy gets the panel's answers and, for strategies that need one, the aggregator
expert; it returns the merged answer whole (:meth:`Strategy.merge`) or as chat-completion
deltas (:meth:`Strategy.stream`). Strategies register by name in
:data:`coe_router.aggregation.strategies.STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from coe_router.aggregation.panel import Hold, PanelAnswer
from coe_router.experts.expert import ExpertClient

#: One streamed piece of the answer: a chat-completion ``delta`` and its finish reason.
Delta = tuple[dict[str, Any], str | None]


@dataclass
class Merge:
    """One merge in progress: what a strategy reads, and what it reports back."""

    answers: list[PanelAnswer]
    #: The conversation as the client sent it (without our ``coe`` object).
    request: dict[str, Any]
    #: The expert that writes the answer for strategies that use one.
    aggregator: ExpertClient
    hold: Hold
    #: Who answered in the end (set by the strategy).
    expert: str = ""
    #: Token usage of the strategy's own calls (the aggregator's).
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Merged:
    """A merged answer, whole."""

    text: str
    finish_reason: str


class Strategy(Protocol):
    """Merges a panel's answers (see the module docstring)."""

    #: Whether an aggregator expert writes the answer (then it is named in the response).
    uses_aggregator: ClassVar[bool]

    async def merge(self, merge: Merge) -> Merged:
        """The answer, whole."""
        ...

    def stream(self, merge: Merge) -> AsyncIterator[Delta]:
        """The answer as deltas, ending with the one that carries the finish reason."""
        ...
