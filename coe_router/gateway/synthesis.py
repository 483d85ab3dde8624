"""The HTTP side of multi-expert synthesis (:mod:`coe_router.aggregation`): headers, the
early status of a stream, and the response.

Headers: ``x-coe-experts`` (asked, best first), ``x-coe-aggregator`` (``synthesize``),
``x-coe-strategy``; non-streamed answers also get ``x-coe-experts-used``,
``x-coe-experts-failed`` and ``x-coe-experts-latency-ms`` (``name=ms,...``). A stream's
headers leave before the panel answers: its final ``coe`` chunk has the outcome.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response

from coe_router import tracing
from coe_router.aggregation.plan import SynthesisPlan, recruit
from coe_router.aggregation.stream import KeepAliveStream
from coe_router.aggregation.synthesis import Synthesis
from coe_router.gateway.context import AppContext
from coe_router.gateway.disconnect import until_disconnect
from coe_router.gateway.headers import routing_headers
from coe_router.gateway.responses import SSEResponse
from coe_router.lifecycle import RequestLifecycle
from coe_router.protocol import ChatCompletionRequest
from coe_router.routing.base import RoutingDecision


async def synthesis_response(
    request: Request,
    ctx: AppContext,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    decision: RoutingDecision,
    plan: SynthesisPlan,
    lifecycle: RequestLifecycle,
    headers: dict[str, str],
) -> Response:
    """Answer ``req`` from a panel of experts, merged by ``plan.strategy``."""
    experts = ctx.pool.experts
    members, suggested = await recruit(ctx.table.routers[req.model], req, decision, plan.k, experts)
    run = Synthesis(
        experts=experts, settings=ctx.settings.synthesis, req=req, request_body=body,
        members=members, plan=plan, aggregator=plan.aggregator or suggested or members[0][0].name,
        decision=decision, lifecycle=lifecycle,
    )  # fmt: skip
    aggregator = run.aggregator if run.strategy.uses_aggregator else ""
    headers = {
        **routing_headers(decision),
        **headers,
        "x-coe-expert": run.expert,
        "x-coe-experts": ",".join(m.name for m, _ in members),
        "x-coe-aggregator": aggregator,
        "x-coe-strategy": run.label,
    }
    lifecycle.begin(run.expert, run.label)
    span = tracing.synthesis_span(run.label, [m.name for m, _ in members], aggregator or None)
    if req.stream:
        keepalive_s = ctx.settings.synthesis.keepalive_s

        def end(status: str) -> None:
            span.end()
            lifecycle.finish(status, run.expert)

        stream = KeepAliveStream(
            run.events(), keepalive_s=keepalive_s, on_first_byte=lifecycle.first_byte,
            on_end=end,
        )  # fmt: skip
        # The response starts at the first event, or after ``keepalive_s`` with a keep-alive:
        # a panel that fails faster (experts down, the request rejected) gets a real status.
        with span.current():  # the panel's expert calls are its children
            stream.start()
        try:
            with lifecycle.guard():
                early = await until_disconnect(request, stream.opening(keepalive_s))
                if early is not None:
                    raise early
        finally:
            if lifecycle.finished:
                await stream.close()
        return SSEResponse(stream, headers=headers)
    with lifecycle.guard(), span:
        result = await until_disconnect(request, run.complete())
    info = result["coe"]
    headers["x-coe-expert"] = info["expert"]
    headers["x-coe-aggregator"] = info["aggregator"] or ""
    headers["x-coe-experts-used"] = ",".join(e["expert"] for e in info["experts"] if e["used"])
    headers["x-coe-experts-failed"] = ",".join(e["expert"] for e in info["experts"] if not e["ok"])
    headers["x-coe-experts-latency-ms"] = ",".join(
        f"{e['expert']}={e['latency_ms']:g}" for e in info["experts"]
    )
    lifecycle.finish("200", info["expert"])
    return Response(json.dumps(result, ensure_ascii=False).encode(),
                    media_type="application/json", headers=headers)  # fmt: skip
