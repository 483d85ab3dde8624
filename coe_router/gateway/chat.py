"""``POST /v1/chat/completions`` and its dry run ``POST /v1/route``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from coe_router.errors import CoEError, UpstreamUnavailable
from coe_router.experts.expert import ExpertClient
from coe_router.gateway.auth import require_api_key
from coe_router.gateway.body import read_json, validate
from coe_router.gateway.sse import Relay, SSEResponse
from coe_router.gateway.state import GatewayState, gateway_state
from coe_router.gateway.synthesis import plan_synthesis, synthesis_response
from coe_router.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CoEInfo,
    RouteCandidate,
    RouteRequest,
    RouteResponse,
)
from coe_router.routing.base import RoutingDecision
from coe_router.routing.tier_aware import prefer_awake

router = APIRouter()
T = TypeVar("T")

#: Status recorded when the client hung up before the answer (nginx's convention).
CLIENT_CLOSED = "499"


class ClientDisconnected(Exception):
    """The client went away while we waited on the expert."""


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it (closing the upstream call) if the client disconnects."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
    if task.cancelled() or not task.done():
        # Let the cancelled upstream call finish unwinding (closes its connection).
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()


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
        alternatives=[
            RouteCandidate(expert=c.expert, score=c.score) for c in decision.alternatives
        ],
        reason=decision.reason,
    )


@router.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
async def chat_completions(request: Request) -> Response:
    """Route the conversation, then relay the chosen expert's answer (streamed or not)."""
    state = gateway_state(request)
    started = time.perf_counter()
    body = await read_json(request, state.settings.server.max_body_bytes)
    req = validate(ChatCompletionRequest, body)
    decision, _ = await _decide(state, req.model, req.messages)
    tiers = state.pool.tiers
    if tiers is not None and decision.strategy != "direct":
        decision = prefer_awake(
            decision, tiers.expected_wake_s, state.settings.tiers.wake_cost_weight
        )
    plan = plan_synthesis(req, state)
    if plan is not None:  # several experts answer; the aggregation path takes it from here
        return await synthesis_response(request, state, req, body, decision, plan)
    expert = state.pool.get(decision.expert)
    if expert is None:  # a router named an expert the pool lacks: config drift, say so
        raise UpstreamUnavailable(f"router chose unknown expert {decision.expert!r}")

    # Everything the client sent reaches the expert untouched, except the model name
    # (the expert's own) and our extension object.
    forward = {k: v for k, v in body.items() if k != "coe"}
    forward["model"] = expert.spec.served_model_name
    headers = _coe_headers(decision)
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

    try:
        if tiers is not None and expert.name in tiers.experts:
            # The decision exists before generation starts: the wake begins right here.
            await _until_disconnect(request, tiers.acquire(expert.name))
            held = True
        if req.stream:
            return await _stream(request, expert, forward, headers, started, finish, state)
        result, _replica = await _until_disconnect(request, expert.complete(forward))
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
    return Response(
        json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode(),
        media_type="application/json",
        headers=headers,
    )


async def _stream(
    request: Request,
    expert: ExpertClient,
    forward: dict[str, Any],
    headers: dict[str, str],
    started: float,
    finish: Callable[[str], None],
    state: GatewayState,
) -> Response:
    upstream = await _until_disconnect(request, expert.stream(forward))
    ttft = state.metrics.ttft.labels(expert.name)
    return SSEResponse(
        Relay(
            upstream,
            on_first_byte=lambda: ttft.observe(time.perf_counter() - started),
            on_end=finish,
        ),
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
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
        alternatives=[
            RouteCandidate(expert=c.expert, score=c.score) for c in decision.alternatives
        ],
        reason=decision.reason,
        routing_ms=round(elapsed * 1000, 3),
    )
