"""``POST /v1/chat/completions`` and its dry run ``POST /v1/route``.

The request path: validate -> rate limit (``ratelimit``) -> response cache lookup
(``cache``) -> route -> session affinity (``routing.affinity``) -> tier-aware choice ->
decision log (``routing.decision_log``, in the background) -> the expert -> token count
and cache fill (in the background). Each use of shared state lives in its own module and
degrades to "skipped" when the store fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from coe_router.errors import CoEError, UpstreamUnavailable
from coe_router.experts.expert import ExpertClient
from coe_router.gateway.auth import require_api_key
from coe_router.gateway.body import read_json, validate
from coe_router.gateway.cache import CachedAnswer, CachePlan, replay
from coe_router.gateway.disconnect import CLIENT_CLOSED, ClientDisconnected, until_disconnect
from coe_router.gateway.ratelimit import caller_id, limit_headers, usage_tokens
from coe_router.gateway.sse import Relay, SSEResponse
from coe_router.gateway.state import GatewayState, gateway_state
from coe_router.gateway.streamtap import StreamTap
from coe_router.gateway.synthesis import plan_synthesis, synthesis_response
from coe_router.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CoEInfo,
    RouteCandidate,
    RouteRequest,
    RouteResponse,
)
from coe_router.routing.affinity import conversation_id
from coe_router.routing.base import RoutingDecision
from coe_router.routing.tier_aware import prefer_awake

router = APIRouter()


async def _decide(
    state: GatewayState, model: str, messages: list[ChatMessage]
) -> tuple[RoutingDecision, float]:
    t0 = time.perf_counter()
    decision = await state.table.decide(model, messages)
    elapsed = time.perf_counter() - t0
    state.metrics.routing_latency.labels(decision.strategy).observe(elapsed)
    return decision, elapsed


def _coe_headers(decision: RoutingDecision) -> dict[str, str]:
    return {
        "x-coe-expert": decision.expert,
        "x-coe-category": decision.category or "",
        "x-coe-confidence": f"{decision.confidence:.4f}",
        "x-coe-strategy": decision.strategy,
    }


def _candidates(decision: RoutingDecision) -> list[RouteCandidate]:
    return [RouteCandidate(expert=c.expert, score=c.score) for c in decision.alternatives]


def _coe_info(decision: RoutingDecision, model: str) -> CoEInfo:
    return CoEInfo(
        expert=decision.expert,
        category=decision.category,
        confidence=decision.confidence,
        strategy=decision.strategy,
        virtual_model=model if decision.strategy != "direct" else None,
        alternatives=_candidates(decision),
        reason=decision.reason,
    )


async def _route(
    state: GatewayState, req: ChatCompletionRequest, caller: str
) -> tuple[RoutingDecision, dict[str, str]]:
    """The router's decision, kept on the conversation's expert (affinity) and weighed
    against wake cost (tiers); logged. Returns it with the ``x-coe-affinity`` header."""
    routed, _ = await _decide(state, req.model, req.messages)
    decision, shared = routed, state.shared
    outcome = conversation = None
    if routed.strategy != "direct" and shared.affinity.enabled:
        given = req.coe.conversation_id if req.coe is not None else None
        conversation = conversation_id(req.model, caller, given, req.messages)
        decision, outcome = await shared.affinity.apply(conversation, routed)
    tiers = state.pool.tiers
    # A sticky conversation stays put even on a sleeping expert: moving is the router's call.
    if tiers is not None and routed.strategy != "direct" and outcome != "sticky":
        decision = prefer_awake(
            decision, tiers.expected_wake_s, state.settings.tiers.wake_cost_weight
        )
    if conversation is not None and outcome is not None:
        shared.affinity.remember(conversation, decision.expert)
        state.metrics.affinity.labels(req.model, outcome).inc()
    shared.decisions.record(req.model, req.messages, routed, decision.expert, outcome, conversation)
    return decision, ({"x-coe-affinity": outcome} if outcome else {})


@router.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
async def chat_completions(request: Request) -> Response:
    """Route the conversation, then relay the chosen expert's answer (streamed or not)."""
    state = gateway_state(request)
    shared = state.shared
    started = time.perf_counter()
    body = await read_json(request, state.settings.server.max_body_bytes)
    req = validate(ChatCompletionRequest, body)
    plan = plan_synthesis(req, state)
    caller = caller_id(request)
    cache = None if plan else shared.cache.plan(req.model, body, bool(req.stream), caller)
    # The rate limit (429 before any routing work) and the cache lookup are independent
    # store round trips: with Redis, overlap them rather than pay for both in a row.
    if cache is None:
        quota, hit = await shared.limiter.admit(caller), None
    else:
        quota, hit = await asyncio.gather(shared.limiter.admit(caller), shared.cache.lookup(cache))
    extra_headers = limit_headers(quota) if quota is not None else {}
    if cache is not None:
        if hit is not None:
            return replay(hit, extra_headers)
        extra_headers["x-coe-cache"] = "miss"
    decision, affinity_headers = await _route(state, req, caller)
    extra_headers.update(affinity_headers)
    if plan is not None:  # several experts answer; the aggregation path takes it from here
        return await synthesis_response(request, state, req, body, decision, plan)
    expert = state.pool.get(decision.expert)
    if expert is None:  # a router named an expert the pool lacks: config drift, say so
        raise UpstreamUnavailable(f"router chose unknown expert {decision.expert!r}")

    # Everything the client sent reaches the expert untouched, except the model name
    # (the expert's own) and our extension object.
    forward = {k: v for k, v in body.items() if k != "coe"}
    forward["model"] = expert.spec.served_model_name
    routing_headers = _coe_headers(decision)
    headers = {**routing_headers, **extra_headers}
    tiers = state.pool.tiers
    metrics = state.metrics
    labels = (req.model, expert.name, decision.strategy)
    in_flight = metrics.in_flight.labels(expert.name)
    in_flight.inc()
    held = False  # a slot on the tiered pool, released when the answer is done

    def finish(status: str) -> None:
        if held:
            assert tiers is not None
            tiers.release(expert.name)
        in_flight.dec()
        metrics.requests.labels(*labels, status).inc()
        metrics.latency.labels(expert.name).observe(time.perf_counter() - started)

    def answered(tokens: int | None, entry: CachedAnswer | None) -> None:
        """After a complete answer: count its tokens, keep it in the cache."""
        shared.limiter.charge(caller, tokens)
        if cache is not None and entry is not None:
            shared.cache.fill(cache, entry)

    try:
        if tiers is not None and expert.name in tiers.experts:
            # The decision exists before generation starts: the wake begins right here.
            await until_disconnect(request, tiers.acquire(expert.name))
            held = True
        if req.stream:
            return await _stream(
                request, expert, forward, headers, started, finish, state,
                _StreamUse(caller, cache, routing_headers, answered),
            )  # fmt: skip
        result, _replica = await until_disconnect(request, expert.complete(forward))
    except ClientDisconnected:
        finish(CLIENT_CLOSED)
        return Response(status_code=int(CLIENT_CLOSED))
    except CoEError as exc:
        finish(str(exc.status_code))
        raise
    except BaseException:
        finish("500")
        raise
    result["coe"] = _coe_info(decision, req.model).model_dump(exclude_none=True)
    finish("200")
    payload = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    answered(usage_tokens(result), CachedAnswer("json", routing_headers, payload))
    return Response(payload, media_type="application/json", headers=headers)


@dataclass(frozen=True, slots=True)
class _StreamUse:
    """What the shared-state uses need from a stream: who asked, where to cache it, what
    to do with a complete answer."""

    caller: str
    cache: CachePlan | None
    routing_headers: dict[str, str]
    answered: Callable[[int | None, CachedAnswer | None], None]


async def _stream(
    request: Request,
    expert: ExpertClient,
    forward: dict[str, Any],
    headers: dict[str, str],
    started: float,
    finish: Callable[[str], None],
    state: GatewayState,
    use: _StreamUse,
) -> Response:
    # Token limits need the stream's usage: ask the expert for it, and hide the extra
    # usage chunk from a client that did not ask for it.
    options = forward.get("stream_options")
    hide_usage = False
    if state.shared.limiter.counts_tokens(use.caller) and not (
        isinstance(options, dict) and options.get("include_usage")
    ):
        forward["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}  # fmt: skip
        hide_usage = True
    upstream = await until_disconnect(request, expert.stream(forward))
    ttft = state.metrics.ttft.labels(expert.name)

    def end(status: str) -> None:
        finish(status)
        if status == "200":
            captured = tap.captured
            entry = None if captured is None else CachedAnswer("sse", use.routing_headers, captured)
            use.answered(tap.tokens, entry)

    relay = Relay(
        upstream, on_first_byte=lambda: ttft.observe(time.perf_counter() - started), on_end=end
    )
    capture = state.shared.cache.max_entry_bytes if use.cache is not None else None
    tap = StreamTap(relay, capture_limit=capture, hide_usage=hide_usage)
    return SSEResponse(
        tap, headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
    )


@router.post("/v1/route", dependencies=[Depends(require_api_key)])
async def route(request: Request) -> RouteResponse:
    """Dry run: the routing decision for a chat request, without generating anything."""
    state = gateway_state(request)
    body = await read_json(request, state.settings.server.max_body_bytes)
    req = validate(RouteRequest, body)
    decision, elapsed = await _decide(state, req.model, req.messages)
    return RouteResponse(
        model=req.model,
        expert=decision.expert,
        category=decision.category,
        confidence=decision.confidence,
        strategy=decision.strategy,
        alternatives=_candidates(decision),
        reason=decision.reason,
        routing_ms=round(elapsed * 1000, 3),
    )
