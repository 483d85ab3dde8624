"""Where a request goes: the router's decision, kept on the conversation's expert
(affinity), weighed against wake cost (tiers), and logged.

The steps, for a routed request (a request naming an expert skips all but the first):

1. the virtual model's router decides (timed, into ``coe_routing_seconds``);
2. session affinity may keep the conversation on the expert that answered its earlier
   turns (``sticky``), or let it follow the router (``moved``, ``new``);
   A turn inside a tool loop (:mod:`~coe_router.routing.tool_loop`) always stays on the
   expert that made the call (``tool_loop``);
3. with the tiered pool, an awake expert of nearly the same quality may win over a
   sleeping one (:func:`~coe_router.routing.tier_aware.prefer_awake`), except for a
   sticky conversation or a tool loop: moving it is the router's call, not the scheduler's;
4. the conversation's expert is remembered and the decision is logged, both in the
   background.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coe_router import tracing
from coe_router.metrics import Metrics
from coe_router.protocol import ChatMessage
from coe_router.routing.base import RoutingDecision
from coe_router.routing.table import RoutingTable
from coe_router.routing.tier_aware import prefer_awake
from coe_router.routing.tool_loop import in_tool_loop
from coe_router.shared.affinity import Affinity, conversation_id
from coe_router.shared.decision_log import DecisionLog


@dataclass(frozen=True, slots=True)
class Placed:
    """The decision to follow, and how it came about."""

    decision: RoutingDecision
    #: ``sticky``, ``moved``, ``new`` or ``tool_loop`` when affinity applied, else None.
    affinity: str | None
    #: Seconds the router took.
    routing_s: float


@dataclass(frozen=True, slots=True)
class Placement:
    """Decides where each request goes (see the module docstring)."""

    table: RoutingTable
    affinity: Affinity
    decisions: DecisionLog
    metrics: Metrics
    #: Expected seconds before an expert could serve; None without the tiered pool.
    wake_s: Callable[[str], float] | None
    #: Quality given up per second of wake time (``COE_TIERS__WAKE_COST_WEIGHT``).
    wake_cost_weight: float

    async def decide(
        self, model: str, messages: Sequence[ChatMessage]
    ) -> tuple[RoutingDecision, float]:
        """The router's own decision for ``model`` and the seconds it took (a dry run)."""
        with tracing.routing_span(model) as span:
            t0 = time.perf_counter()
            decision = await self.table.decide(model, messages)
            elapsed = time.perf_counter() - t0
            tracing.set_routing(
                span, expert=decision.expert, category=decision.category,
                confidence=decision.confidence, strategy=decision.strategy,
            )  # fmt: skip
        self.metrics.routing_latency.labels(decision.strategy).observe(elapsed)
        return decision, elapsed

    async def place(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        caller: str,
        conversation: str | None = None,
    ) -> Placed:
        """Route, apply affinity and wake cost, remember and log. ``conversation`` is the
        client's own conversation id, if it gave one."""
        routed, elapsed = await self.decide(model, messages)
        if routed.strategy == "direct":
            return Placed(routed, None, elapsed)
        decision, outcome, cid = routed, None, None
        if self.affinity.enabled:
            loop = in_tool_loop(messages)
            with tracing.affinity_span(loop) as span:
                cid = conversation_id(model, caller, conversation, messages)
                decision, outcome = await self.affinity.apply(cid, routed, tool_loop=loop)
                span.set("coe.affinity", outcome)
                span.set("coe.expert", decision.expert)
        if self.wake_s is not None and outcome not in ("sticky", "tool_loop"):
            decision = prefer_awake(decision, self.wake_s, self.wake_cost_weight)
        if cid is not None and outcome is not None:
            self.affinity.remember(cid, decision.expert)
            self.metrics.affinity.labels(model, outcome).inc()
        self.decisions.record(model, messages, routed, decision.expert, outcome, cid)
        return Placed(decision, outcome, elapsed)
