"""``POST /v1/chat/completions`` and its dry run ``POST /v1/route``: HTTP in, HTTP out.

The request path: validate -> rate limit -> response cache lookup -> placement
(:mod:`coe_router.routing.placement`: route, affinity, wake cost, decision log) -> one
expert, or a panel (:mod:`coe_router.gateway.synthesis`). One
:class:`~coe_router.lifecycle.RequestLifecycle` does the bookkeeping on every path.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from coe_router import tracing
from coe_router.aggregation.plan import plan_synthesis
from coe_router.experts.expert import ExpertClient, UpstreamStream
from coe_router.experts.fallback import (
    NO_LIVE_REPLICA,
    Answered,
    fallback_hops,
    live_decision,
    with_fallback,
)
from coe_router.gateway.auth import caller_id, require_api_key
from coe_router.gateway.body import read_json, validate
from coe_router.gateway.context import AppContext, app_context
from coe_router.gateway.disconnect import until_disconnect
from coe_router.gateway.headers import candidates, coe_info, routing_headers
from coe_router.gateway.responses import SSEResponse, replay
from coe_router.gateway.synthesis import synthesis_response
from coe_router.gateway.traced import traced
from coe_router.lifecycle import CLIENT_CLOSED, ClientDisconnected, RequestLifecycle
from coe_router.protocol import (
    MAX_N,
    ChatCompletionRequest,
    FallbackInfo,
    RouteRequest,
    RouteResponse,
)
from coe_router.routing.base import RoutingDecision
from coe_router.shared.ratelimit import limit_headers

router = APIRouter()


@router.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
async def chat_completions(request: Request) -> Response:
    """Route the conversation, then relay the chosen expert's answer (streamed or not)."""
    started = time.perf_counter()
    return await traced(
        "chat.completions", request, lambda span: _chat_completions(request, span, started)
    )


async def _chat_completions(
    request: Request, span: tracing.Span, started: float
) -> tuple[Response, RequestLifecycle | None]:
    ctx = app_context(request)
    shared = ctx.shared
    with tracing.validation_span():
        body = await read_json(request, ctx.settings.server.max_body_bytes)
        req = validate(ChatCompletionRequest, body, {MAX_N: ctx.settings.server.max_n})
    span.set("gen_ai.request.model", req.model)
    span.set("coe.stream", bool(req.stream))
    plan = plan_synthesis(req, ctx.catalog, ctx.settings.synthesis)
    caller = caller_id(request)
    cache = None if plan else shared.cache.plan(req.model, body, bool(req.stream), caller)
    # The rate limit (429 before any routing work) and the cache lookup are independent
    # store round trips: with Redis, overlap them rather than pay for both in a row.
    if cache is None:
        quota, hit = await shared.limiter.admit(caller), None
    else:
        quota, hit = await asyncio.gather(shared.limiter.admit(caller), shared.cache.lookup(cache))
    headers = limit_headers(quota) if quota is not None else {}
    if cache is not None:
        if hit is not None:
            return replay(hit, headers), None
        headers["x-coe-cache"] = "miss"
    given = req.coe.conversation_id if req.coe is not None else None
    placed = await ctx.placement.place(req.model, req.messages, caller, given)
    if placed.affinity is not None:
        headers["x-coe-affinity"] = placed.affinity
    lifecycle = RequestLifecycle(
        ctx.lifecycle, model=req.model, caller=caller, cache_plan=cache, started=started,
        span=span,
    )  # fmt: skip
    try:
        if plan is not None:  # several experts answer; the aggregation path takes it from here
            response = await synthesis_response(
                request, ctx, req, body, placed.decision, plan, lifecycle, headers
            )
        else:
            response = await _single(request, ctx, req, body, placed.decision, lifecycle, headers)
    except ClientDisconnected:
        response = Response(status_code=int(CLIENT_CLOSED))
    return response, lifecycle


async def _single(
    request: Request,
    ctx: AppContext,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    decision: RoutingDecision,
    lifecycle: RequestLifecycle,
    headers: dict[str, str],
) -> Response:
    """One expert answers: the client's body goes to it untouched, except the model name
    (the expert's own) and our extension object. If the routed expert cannot answer before
    the first byte, another may (:mod:`coe_router.experts.fallback`)."""
    forward = {k: v for k, v in body.items() if k != "coe"}
    hops = fallback_hops(ctx.catalog, ctx.settings.upstream, req.model)
    lifecycle.begin(decision.expert, decision.strategy)
    with lifecycle.guard():

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

        if req.stream:
            hide_usage = _ask_for_usage(forward, lifecycle.counts_tokens)
            streamed = await until_disconnect(request, with_fallback(
                ctx.pool, decision, open_stream, hops=hops, streaming=True, metrics=ctx.metrics
            ))  # fmt: skip
            routing = _answered_by(streamed, lifecycle, headers)
            return SSEResponse(
                lifecycle.relay(streamed.value, routing, hide_usage=hide_usage),
                headers={**routing, **headers},
            )
        answered = await until_disconnect(request, with_fallback(
            ctx.pool, decision, complete, hops=hops, streaming=False, metrics=ctx.metrics
        ))  # fmt: skip
        routing = _answered_by(answered, lifecycle, headers)
        result = answered.value
        info = coe_info(answered.decision, req.model)
        if answered.fallback is not None:
            info.fallback = FallbackInfo.model_validate(answered.fallback.info())
        result["coe"] = info.model_dump(exclude_none=True, by_alias=True)
        payload = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    lifecycle.completed(result, payload, routing)
    return Response(payload, media_type="application/json", headers={**routing, **headers})


def _answered_by(
    answered: Answered[Any], lifecycle: RequestLifecycle, headers: dict[str, str]
) -> dict[str, str]:
    """The routing headers of who answered; after a fallback, ``x-coe-fallback`` too, and
    the stand-in's answer is not cached as the routed expert's."""
    if answered.fallback is not None:
        headers["x-coe-fallback"] = answered.fallback.header
        lifecycle.cache_plan = None
    return routing_headers(answered.decision)


def _ask_for_usage(forward: dict[str, Any], needed: bool) -> bool:
    """Token limits need a stream's usage: ask the expert for it when the client did not.
    True when the extra usage chunk must be hidden from the client."""
    options = forward.get("stream_options")
    if not needed or (isinstance(options, dict) and options.get("include_usage")):
        return False
    forward["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                 "include_usage": True}  # fmt: skip
    return True


@router.post("/v1/route", dependencies=[Depends(require_api_key)])
async def route(request: Request) -> RouteResponse:
    """Dry run: the routing decision for a chat request, without generating anything."""
    ctx = app_context(request)
    body = await read_json(request, ctx.settings.server.max_body_bytes)
    req = validate(RouteRequest, body)
    routed, elapsed = await ctx.placement.decide(req.model, req.messages)
    hops = fallback_hops(ctx.catalog, ctx.settings.upstream, req.model)
    decision = live_decision(routed, ctx.pool, hops)
    fallback = None
    if decision.expert != routed.expert:
        fallback = FallbackInfo.model_validate({"from": routed.expert, "reason": NO_LIVE_REPLICA})
    return RouteResponse(
        model=req.model,
        expert=decision.expert,
        category=decision.category,
        confidence=decision.confidence,
        strategy=decision.strategy,
        alternatives=candidates(decision),
        reason=decision.reason,
        fallback=fallback,
        routing_ms=round(elapsed * 1000, 3),
    )
