"""What every generating route does before an expert is asked, and how it asks one.

Both APIs (``/v1/chat/completions`` and ``/v1/messages``) go through :func:`admit` (rate
limit, response cache, placement, the request's lifecycle) and, when one expert answers,
:func:`ask_expert` (the tier hold, cross-expert fallback before the first byte); only the
wire format around them differs. Keeping them here means a feature added to the request
path reaches both APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from coe_router import tracing
from coe_router.experts.expert import ExpertClient, UpstreamStream
from coe_router.experts.fallback import Answered, fallback_hops, with_fallback
from coe_router.gateway.auth import caller_id
from coe_router.gateway.context import AppContext
from coe_router.gateway.disconnect import until_disconnect
from coe_router.gateway.headers import coe_info, routing_headers
from coe_router.gateway.responses import replay
from coe_router.lifecycle import RequestLifecycle
from coe_router.protocol import ChatMessage, FallbackInfo
from coe_router.routing.base import RoutingDecision
from coe_router.shared.ratelimit import limit_headers


@dataclass
class Admitted:
    """A request past the limits and the cache, placed on an expert."""

    lifecycle: RequestLifecycle
    decision: RoutingDecision
    #: Response headers so far: rate limits, ``x-coe-cache``, ``x-coe-affinity``.
    headers: dict[str, str]


async def admit(
    request: Request,
    ctx: AppContext,
    *,
    model: str,
    messages: Sequence[ChatMessage],
    conversation: str | None,
    cache_key: Mapping[str, Any] | None,
    stream: bool,
    span: tracing.Span,
    started: float,
) -> Admitted | Response:
    """Rate limit, cache lookup (when ``cache_key``, the request's cacheable form, is
    given and ``model`` caches), then placement. A cache hit is answered here."""
    shared = ctx.shared
    caller = caller_id(request)
    cache = None if cache_key is None else shared.cache.plan(model, dict(cache_key), stream, caller)
    # The rate limit (429 before any routing work) and the cache lookup are independent
    # store round trips: with Redis, overlap them rather than pay for both in a row.
    if cache is None:
        quota, hit = await shared.limiter.admit(caller), None
    else:
        quota, hit = await asyncio.gather(shared.limiter.admit(caller), shared.cache.lookup(cache))
    headers = limit_headers(quota) if quota is not None else {}
    if cache is not None:
        if hit is not None:
            return replay(hit, headers)
        headers["x-coe-cache"] = "miss"
    placed = await ctx.placement.place(model, messages, caller, conversation)
    if placed.affinity is not None:
        headers["x-coe-affinity"] = placed.affinity
    lifecycle = RequestLifecycle(
        ctx.lifecycle, model=model, caller=caller, cache_plan=cache, started=started, span=span
    )
    return Admitted(lifecycle, placed.decision, headers)


async def ask_expert(
    request: Request,
    ctx: AppContext,
    admitted: Admitted,
    model: str,
    forward: dict[str, Any],
    *,
    stream: bool,
) -> tuple[Answered[Any], dict[str, str]]:
    """Send ``forward`` (an OpenAI chat body) to the placed expert, or before the first
    byte to a stand-in (:mod:`coe_router.experts.fallback`); each is held awake for the
    rest of the request. Returns the answer (an open stream, or the completion) and the
    routing headers of whoever answered. Call inside ``lifecycle.guard()``."""
    lifecycle = admitted.lifecycle

    def to(expert: ExpertClient) -> dict[str, Any]:
        return {**forward, "model": expert.spec.served_model_name}

    async def open_stream(expert: ExpertClient) -> UpstreamStream:
        # The decision exists before generation starts: the wake begins right here.
        await lifecycle.occupy(expert.name)
        return await expert.stream(to(expert))

    async def complete(expert: ExpertClient) -> dict[str, Any]:
        await lifecycle.occupy(expert.name)
        result, _replica = await expert.complete(to(expert))
        return result

    hops = fallback_hops(ctx.catalog, ctx.settings.upstream, model)
    call = open_stream if stream else complete
    answered: Answered[Any] = await until_disconnect(request, with_fallback(
        ctx.pool, admitted.decision, call, hops=hops, streaming=stream, metrics=ctx.metrics
    ))  # fmt: skip
    if answered.fallback is not None:
        admitted.headers["x-coe-fallback"] = answered.fallback.header
        lifecycle.cache_plan = None  # the stand-in's answer is not the routed expert's
    return answered, routing_headers(answered.decision)


def coe_object(answered: Answered[Any], model: str) -> dict[str, Any]:
    """The ``coe`` object of a single-expert answer: who answered and why, and the
    fallback when a stand-in did."""
    info = coe_info(answered.decision, model)
    if answered.fallback is not None:
        info.fallback = FallbackInfo.model_validate(answered.fallback.info())
    return info.model_dump(exclude_none=True, by_alias=True)
