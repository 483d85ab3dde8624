"""``POST /v1/chat/completions`` and its dry run ``POST /v1/route``: HTTP in, HTTP out.

The request path: validate -> rate limit -> response cache lookup -> placement
(:mod:`coe_router.routing.placement`: route, affinity, wake cost, decision log) -> one
expert, or a panel (:mod:`coe_router.gateway.synthesis`). One
:class:`~coe_router.lifecycle.RequestLifecycle` does the bookkeeping on every path.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from coe_router import tracing
from coe_router.aggregation.plan import plan_synthesis
from coe_router.experts.fallback import (
    NO_LIVE_REPLICA,
    fallback_hops,
    live_decision,
)
from coe_router.gateway.auth import require_api_key
from coe_router.gateway.body import read_json, read_request, validate
from coe_router.gateway.context import AppContext, app_context
from coe_router.gateway.front import Admitted, admit, ask_expert, coe_object
from coe_router.gateway.headers import candidates
from coe_router.gateway.responses import SSEResponse
from coe_router.gateway.synthesis import synthesis_response
from coe_router.gateway.traced import traced
from coe_router.lifecycle import RequestLifecycle
from coe_router.protocol import (
    MAX_N,
    ChatCompletionRequest,
    FallbackInfo,
    RouteRequest,
    RouteResponse,
)

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
    body, req = await read_request(
        request, ctx.settings.server.max_body_bytes, ChatCompletionRequest,
        {MAX_N: ctx.settings.server.max_n},
    )  # fmt: skip
    span.set("gen_ai.request.model", req.model)
    span.set("coe.stream", bool(req.stream))
    plan = plan_synthesis(req, ctx.catalog, ctx.settings.synthesis)
    admitted = await admit(
        request, ctx, model=req.model, messages=req.messages,
        conversation=req.coe.conversation_id if req.coe is not None else None,
        cache_key=None if plan else body, stream=bool(req.stream), span=span, started=started,
    )  # fmt: skip
    if isinstance(admitted, Response):  # answered from the cache
        return admitted, None
    if plan is not None:  # several experts answer; the aggregation path takes it from here
        response = await synthesis_response(
            request, ctx, req, body, admitted.decision, plan, admitted.lifecycle,
            admitted.headers,
        )  # fmt: skip
    else:
        response = await _single(request, ctx, req, body, admitted)
    return response, admitted.lifecycle


async def _single(
    request: Request,
    ctx: AppContext,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    admitted: Admitted,
) -> Response:
    """One expert answers: the client's body goes to it untouched, except the model name
    (the expert's own) and our extension object. If the routed expert cannot answer before
    the first byte, another may (:mod:`coe_router.experts.fallback`)."""
    forward = {k: v for k, v in body.items() if k != "coe"}
    lifecycle, headers = admitted.lifecycle, admitted.headers
    lifecycle.begin(admitted.decision.expert, admitted.decision.strategy)
    with lifecycle.guard():
        if req.stream:
            hide_usage = _ask_for_usage(forward, lifecycle.counts_tokens)
            streamed, routing = await ask_expert(
                request, ctx, admitted, req.model, forward, stream=True
            )
            return SSEResponse(
                lifecycle.relay(streamed.value, routing, hide_usage=hide_usage),
                headers={**routing, **headers},
            )
        answered, routing = await ask_expert(
            request, ctx, admitted, req.model, forward, stream=False
        )
        result = answered.value
        result["coe"] = coe_object(answered, req.model)
        payload = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    lifecycle.completed(result, payload, routing)
    return Response(payload, media_type="application/json", headers={**routing, **headers})


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
