"""Cross-expert fallback: when the routed expert cannot answer, the next candidate does.

The candidates, in order: the routed expert, the routing decision's alternatives (best
first), then the catalog's generalist. A routed request moves on

* before calling, when its expert is not live (no replica up with its breaker closed; a
  tiered expert asleep on purpose is live, it can be woken), and
* when its expert fails before the first byte reached the client, for the failures that are
  retried on another replica (:meth:`~coe_router.errors.UpstreamError.retry_elsewhere`): not
  the expert's own 4xx about the request, nor a non-streamed generation that timed out.

It moves at most ``hops`` times (``COE_UPSTREAM__FALLBACK_HOPS``, or the virtual model's
``fallback_hops``); experts that are not live are skipped without counting as a hop; a
request that names an expert never moves. Streams move only before the response started:
``call`` returns once the first upstream chunk arrived, and nothing after that comes back
here (later failures reach the client in-band).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from coe_router.catalog import Catalog
from coe_router.config import UpstreamSettings
from coe_router.errors import UpstreamError, UpstreamUnavailable
from coe_router.experts.expert import ExpertClient
from coe_router.metrics import Metrics
from coe_router.routing.base import RoutingDecision

T = TypeVar("T")

#: The reason given when the routed expert was not tried at all.
NO_LIVE_REPLICA = "no_live_replica"


class Experts(Protocol):
    """What fallback needs of the pool (:class:`~coe_router.experts.pool.ExpertPool`)."""

    generalist: str

    def get(self, name: str) -> ExpertClient | None:
        """The expert called ``name``."""
        ...

    def is_live(self, name: str) -> bool:
        """Whether ``name`` can serve (or be woken to serve) now."""
        ...


@dataclass(frozen=True, slots=True)
class Fallback:
    """The answer comes from another expert than the routed one."""

    source: str
    target: str
    #: ``no_live_replica``, or the kind of the routed expert's failure (``unavailable``,
    #: ``timeout``, ``bad_response``, ``error``, ...).
    reason: str

    @property
    def header(self) -> str:
        """The ``x-coe-fallback`` header: ``code->general``."""
        return f"{self.source}->{self.target}"

    def info(self) -> dict[str, str]:
        """The ``fallback`` entry of the ``coe`` object (the answering expert is its
        ``expert``)."""
        return {"from": self.source, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Answered(Generic[T]):
    """What ``call`` returned, and who returned it."""

    value: T
    expert: ExpertClient
    #: The decision as followed: the answering expert's, with the fallback in its reason.
    decision: RoutingDecision
    fallback: Fallback | None = None


def fallback_hops(catalog: Catalog, settings: UpstreamSettings, model: str) -> int:
    """How many times a request for ``model`` may move: the virtual model's own
    ``fallback_hops``, else the setting; 0 for a request naming an expert."""
    virtual = catalog.virtual_model(model)
    if virtual is None:
        return 0
    return settings.fallback_hops if virtual.fallback_hops is None else virtual.fallback_hops


def candidates(decision: RoutingDecision, generalist: str) -> list[str]:
    """The routed expert, its alternatives best first, then the generalist; each once."""
    ordered = [decision.expert, *(c.expert for c in decision.alternatives), generalist]
    return list(dict.fromkeys(ordered))


def moved(decision: RoutingDecision, fallback: Fallback) -> RoutingDecision:
    """``decision`` as followed after ``fallback``: the target's name and score."""
    score = next((c.score for c in decision.alternatives if c.expert == fallback.target), 0.0)
    return replace(
        decision,
        expert=fallback.target,
        confidence=score,
        reason=f"fallback from {fallback.source!r} ({fallback.reason}); "
        f"{decision.reason or 'router choice'}",
    )


def live_decision(decision: RoutingDecision, pool: Experts, hops: int) -> RoutingDecision:
    """Where a request would go now (``/v1/route``): the routed expert when it is live,
    else the first live candidate (when fallback is on), else the routed expert."""
    if hops <= 0 or pool.is_live(decision.expert):
        return decision
    for name in candidates(decision, pool.generalist)[1:]:
        if pool.get(name) is not None and pool.is_live(name):
            return moved(decision, Fallback(decision.expert, name, NO_LIVE_REPLICA))
    return decision


async def with_fallback(
    pool: Experts,
    decision: RoutingDecision,
    call: Callable[[ExpertClient], Awaitable[T]],
    *,
    hops: int,
    streaming: bool,
    metrics: Metrics | None = None,
) -> Answered[T]:
    """``call`` the routed expert; on the failures above, the next live candidate.

    Raises the routed expert's error when nobody else may or can answer, else the last
    candidate's error.
    """
    routed = pool.get(decision.expert)
    if routed is None:  # a router named an expert the pool lacks: config drift, say so
        raise UpstreamUnavailable(f"router chose unknown expert {decision.expert!r}")
    if hops <= 0:
        return Answered(await call(routed), routed, decision)
    reason: str | None = None
    first_error: UpstreamError | None = None
    moves = 0
    for name in candidates(decision, pool.generalist):
        expert = pool.get(name)
        if expert is None:
            continue
        routed_here = name == decision.expert
        if not pool.is_live(name):
            if routed_here:
                reason, first_error = NO_LIVE_REPLICA, expert.unavailable()
            continue
        if not routed_here:
            if moves >= hops:
                break
            moves += 1
        try:
            value = await call(expert)
        except UpstreamError as exc:
            if not exc.retry_elsewhere(streaming=streaming):
                raise
            if first_error is None:
                reason, first_error = exc.kind, exc
            continue
        if routed_here:
            return Answered(value, expert, decision)
        fallback = Fallback(decision.expert, name, reason or NO_LIVE_REPLICA)
        if metrics is not None:
            metrics.fallbacks.labels(fallback.source, fallback.target, fallback.reason).inc()
        return Answered(value, expert, moved(decision, fallback), fallback)
    # Nobody answered: the routed expert's own failure says the most.
    raise first_error if first_error is not None else routed.unavailable()
