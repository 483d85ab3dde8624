"""The router contract: one async method from a conversation to a :class:`RoutingDecision`.

Strategies register a factory under a name in :data:`ROUTER_CLS` (as RouteLLM does);
a virtual model in the catalog picks one by name, so new strategies plug in
without touching the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from coe_router.catalog import Catalog, VirtualModelSpec
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage


@dataclass(frozen=True, slots=True)
class Candidate:
    """An expert the router considered, with its score in [0, 1] on the same scale as the
    decision's ``confidence`` (tier-aware routing compares them)."""

    expert: str
    score: float


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Which expert answers, and why."""

    expert: str
    category: str | None
    confidence: float
    strategy: str
    alternatives: tuple[Candidate, ...] = field(default_factory=tuple)
    reason: str | None = None


class Router(Protocol):
    """Chooses the expert for a conversation."""

    async def route(self, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """Decide which expert answers ``messages`` (the latest user turn matters most)."""
        ...


@dataclass(frozen=True, slots=True)
class Recruitment:
    """Experts recruited for one request, best first, and who aggregates their answers."""

    experts: tuple[Candidate, ...]
    #: The expert that merges the recruits' answers.
    aggregator: str


@runtime_checkable
class Recruiter(Protocol):
    """A router that can also recruit a panel of experts for synthesis (Symbolic-MoE).

    Optional: synthesis asks a router that is a :class:`Recruiter` for its panel, and
    builds one from any other router's decision and alternatives.
    """

    async def recruit(self, messages: Sequence[ChatMessage], k: int | None = None) -> Recruitment:
        """The ``k`` experts (default: the router's own number) that should answer."""
        ...


RouterFactory = Callable[[Catalog, Mapping[str, Any]], Router]

#: Strategy name -> factory(catalog, options). Strategies add themselves on import.
ROUTER_CLS: dict[str, RouterFactory] = {}


def build_router(spec: VirtualModelSpec, catalog: Catalog) -> Router:
    """The router a virtual model asks for, built from its options."""
    factory = ROUTER_CLS.get(spec.router)
    if factory is None:
        raise ConfigError(
            f"virtual model {spec.name!r}: unknown router {spec.router!r} "
            f"(known: {', '.join(sorted(ROUTER_CLS))})"
        )
    return factory(catalog, spec.options)


def message_text(message: ChatMessage) -> str:
    """The text of a message; text parts of multi-part content are joined."""
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):
        return "\n".join(str(p.get("text", "")) for p in message.content if p.get("type") == "text")
    return ""
