"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's API, HTTP in and out.

A Messages request is routed exactly like a chat completion, through the same
placement (router, affinity, tool loops, wake cost, decision log), rate limits, response
cache and :class:`~coe_router.lifecycle.RequestLifecycle`; the body is translated to the
expert's OpenAI chat API and the answer back (:mod:`coe_router.anthropic`). A request
that asks for synthesis takes the chat path's panel (:mod:`coe_router.gateway.synthesis`)
and its answer is re-framed. Errors on these routes take Anthropic's shape
(:mod:`coe_router.gateway.handlers`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from coe_router import tracing
from coe_router.aggregation.plan import plan_synthesis
from coe_router.anthropic.count import estimate, exact, tokenize_body
from coe_router.anthropic.relay import MessagesRelay, TranslatedStream
from coe_router.anthropic.translate import from_openai, openai_messages, to_openai
from coe_router.anthropic.types import CountTokensRequest, MessagesRequest, TokenCount
from coe_router.errors import UpstreamError
from coe_router.gateway.auth import require_api_key
from coe_router.gateway.body import read_json, read_request, validate
from coe_router.gateway.context import AppContext, app_context
from coe_router.gateway.front import Admitted, admit, ask_expert, coe_object
from coe_router.gateway.headers import routing_headers
from coe_router.gateway.responses import SSEResponse
from coe_router.gateway.synthesis import synthesis_response
from coe_router.gateway.traced import traced
from coe_router.lifecycle import RequestLifecycle
from coe_router.protocol import ChatCompletionRequest, ChatMessage

log = logging.getLogger("coe_router.gateway")
router = APIRouter()

#: Marks a Messages request's cache key: the same JSON can be a valid chat request too,
#: and the two must not share a cached answer.
_CACHE_API = "anthropic.messages"


@router.post("/v1/messages", dependencies=[Depends(require_api_key)])
async def messages(request: Request) -> Response:
    """Route the conversation, then answer as Anthropic's Messages API (streamed or not)."""
    started = time.perf_counter()
    return await traced("messages", request, lambda span: _messages(request, span, started))


async def _messages(
    request: Request, span: tracing.Span, started: float
) -> tuple[Response, RequestLifecycle | None]:
    ctx = app_context(request)
    body, req = await read_request(request, ctx.settings.server.max_body_bytes, MessagesRequest)
    forward = to_openai(req)
    chat = [ChatMessage.model_validate(m) for m in forward["messages"]]
    span.set("gen_ai.request.model", req.model)
    span.set("coe.stream", bool(req.stream))
    as_chat = ChatCompletionRequest.model_validate({**forward, "coe": req.coe})
    plan = plan_synthesis(as_chat, ctx.catalog, ctx.settings.synthesis)
    keyed = {"api": _CACHE_API, **{k: v for k, v in body.items() if k != "metadata"}}
    admitted = await admit(
        request, ctx, model=req.model, messages=chat,
        conversation=req.coe.conversation_id if req.coe is not None else None,
        cache_key=None if plan else keyed, stream=bool(req.stream), span=span, started=started,
    )  # fmt: skip
    if isinstance(admitted, Response):  # answered from the cache
        return admitted, None
    if plan is not None:  # several experts answer; the chat path's answer, re-framed
        merged = await synthesis_response(
            request, ctx, as_chat, forward, admitted.decision, plan, admitted.lifecycle,
            admitted.headers,
        )  # fmt: skip
        return _as_message(merged, req), admitted.lifecycle
    return await _answer(request, ctx, req, forward, admitted), admitted.lifecycle


async def _answer(
    request: Request,
    ctx: AppContext,
    req: MessagesRequest,
    forward: dict[str, Any],
    admitted: Admitted,
) -> Response:
    """One expert (or its stand-in, before the first byte) answers the translated request;
    its answer is translated back."""
    lifecycle, headers = admitted.lifecycle, admitted.headers
    lifecycle.begin(admitted.decision.expert, admitted.decision.strategy)
    with lifecycle.guard():
        if req.stream:
            streamed, routing = await ask_expert(
                request, ctx, admitted, req.model, forward, stream=True
            )
            relay = MessagesRelay(
                streamed.value, lifecycle, model=req.model, stop_sequences=req.stop_sequences,
                routing_headers=routing, capture_limit=lifecycle.capture_limit,
            )  # fmt: skip
            return SSEResponse(relay, headers={**routing, **headers})
        answered, routing = await ask_expert(
            request, ctx, admitted, req.model, forward, stream=False
        )
        result = answered.value
        message = from_openai(result, model=req.model, stop_sequences=req.stop_sequences)
        out = message.model_dump(mode="json")
        out["coe"] = coe_object(answered, req.model)
        payload = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
    lifecycle.completed(result, payload, routing)
    return Response(payload, media_type="application/json", headers={**routing, **headers})


def _as_message(response: Response, req: MessagesRequest) -> Response:
    """A synthesis answer (a chat completion or its stream) as a Message or its events."""
    headers = {k: v for k, v in response.headers.items() if k.startswith("x-")}
    if isinstance(response, SSEResponse):
        events = TranslatedStream(
            response.stream, model=req.model, stop_sequences=req.stop_sequences
        )
        return SSEResponse(events, headers=headers)
    if response.status_code != 200:
        return response
    result = json.loads(bytes(response.body))
    out = from_openai(result, model=req.model, stop_sequences=req.stop_sequences)
    payload = out.model_dump(mode="json")
    payload["coe"] = result.get("coe")
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, media_type="application/json", headers=headers)


@router.post("/v1/messages/count_tokens", dependencies=[Depends(require_api_key)])
async def count_tokens(request: Request) -> Response:
    """The input tokens of a Messages request: the routed expert's own count when it is
    awake (vLLM's ``/tokenize``), else an estimate marked ``"approximate": true``."""
    return await traced("messages.count_tokens", request, lambda _: _count(request))


async def _count(request: Request) -> tuple[Response, None]:
    ctx = app_context(request)
    with tracing.validation_span():
        body = await read_json(request, ctx.settings.server.max_body_bytes)
        req = validate(CountTokensRequest, body)
        chat = [ChatMessage.model_validate(m) for m in openai_messages(req)]
    # The router's choice, without affinity or logging: counting is not a turn.
    decision, _ = await ctx.placement.decide(req.model, chat)
    expert = ctx.pool.get(decision.expert)
    count: TokenCount | None = None
    # A sleeping expert is not woken to count: the estimate is cheaper than a wake.
    if expert is not None and ctx.pool.expected_wake_s(expert.name) == 0:
        try:
            count = exact(await expert.tokenize(tokenize_body(req, expert.spec.served_model_name)))
        except UpstreamError as exc:
            log.info("count_tokens: %s could not count (%s); estimating", expert.name, exc)
    if count is None:
        count = estimate(req)
    headers = {**routing_headers(decision),
               "x-coe-token-count": "approximate" if count.approximate else "exact"}  # fmt: skip
    return JSONResponse(count.model_dump(), headers=headers), None
