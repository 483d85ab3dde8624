"""Multi-expert synthesis on the request path: recruit k experts, ask them, merge, respond.

Switched on per virtual model (catalog ``synthesis:``) or per request
(``coe: {"synthesis": true, "k": 3, "aggregator": "...", "strategy": "..."}``).
Streaming clients get SSE comment lines as keep-alives while the panel works; with
``synthesize`` the aggregator's answer is then streamed token by token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from coe_router.aggregation.panel import PanelAnswer, ask_panel, panel_failure, total_usage
from coe_router.aggregation.synthesize import aggregator_messages
from coe_router.aggregation.vote import best, vote
from coe_router.errors import CoEError, InvalidRequest, UpstreamError
from coe_router.experts.catalog import SynthesisSpec
from coe_router.experts.expert import ExpertClient
from coe_router.gateway.sse import DONE, SSEResponse, data_events, sse_event
from coe_router.gateway.state import GatewayState
from coe_router.protocol import ChatCompletionRequest
from coe_router.routing.base import RoutingDecision

KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class SynthesisPlan:
    """What a synthesis request asked for, checked against the limits."""

    k: int
    strategy: str
    aggregator: str | None


def plan_synthesis(req: ChatCompletionRequest, state: GatewayState) -> SynthesisPlan | None:
    """The plan when the request (or its virtual model) wants synthesis; 400 on bad values."""
    opts = req.coe
    vm = state.catalog.virtual_model(req.model)
    wanted = (
        opts.synthesis
        if opts is not None and opts.synthesis is not None
        else (vm is not None and vm.synthesis is not None)
    )
    if not wanted:
        return None
    if vm is None:
        raise InvalidRequest(
            "Synthesis needs a virtual model (e.g. 'coe'), not a single expert.", param="model"
        )
    limits = state.settings.synthesis
    spec = vm.synthesis or SynthesisSpec()
    k = (opts.k if opts and opts.k else None) or spec.k or limits.default_k
    most = min(limits.max_k, len(state.catalog.experts))
    if k > most:
        raise InvalidRequest(
            f"'coe.k' must be at most {most}.", param="coe.k", code="invalid_value"
        )
    aggregator = (opts.aggregator if opts else None) or spec.aggregator
    if aggregator is not None and state.catalog.expert(aggregator) is None:
        raise InvalidRequest(
            f"'coe.aggregator' must be an expert; '{aggregator}' is not.",
            param="coe.aggregator", code="invalid_value",
        )  # fmt: skip
    strategy = (opts.strategy if opts else None) or spec.strategy or limits.default_strategy
    return SynthesisPlan(k=k, strategy=strategy, aggregator=aggregator)


async def _recruit(
    state: GatewayState, req: ChatCompletionRequest, decision: RoutingDecision, k: int
) -> tuple[list[tuple[ExpertClient, float]], str | None]:
    """The k experts to ask (best first, no duplicates) and the router's aggregator, if any."""
    router = state.table.routers[req.model]
    recruit = getattr(router, "recruit", None)  # Symbolic-MoE routers recruit by skill
    suggested: str | None = None
    if recruit is not None:
        rec = await recruit(req.messages, k)
        ranked = [(c.expert, c.score) for c in rec.experts]
        suggested = rec.aggregator
    else:
        ranked = [(decision.expert, decision.confidence)]
        ranked += [(c.expert, c.score) for c in decision.alternatives]
    ranked += [(e.name, 0.0) for e in state.catalog.experts]  # fill up to k
    chosen: dict[str, float] = {}
    for name, score in ranked:
        if name not in chosen and state.pool.get(name) is not None:
            chosen[name] = score
        if len(chosen) == k:
            break
    members = [(client, chosen[name]) for name in chosen
               if (client := state.pool.get(name)) is not None]  # fmt: skip
    return members, suggested


def _hold(state: GatewayState) -> Callable[[str], AbstractAsyncContextManager[None]]:
    tiers = state.pool.tiers

    def hold(name: str) -> AbstractAsyncContextManager[None]:
        if tiers is not None and name in tiers.experts:
            return tiers.hold(name)
        return nullcontext()

    return hold


async def synthesis_response(
    request: Request,
    state: GatewayState,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    decision: RoutingDecision,
    plan: SynthesisPlan,
) -> Response:
    """Answer ``req`` from a panel of experts, merged by ``plan.strategy``."""
    started = time.perf_counter()
    members, suggested = await _recruit(state, req, decision, plan.k)
    aggregator = plan.aggregator or suggested or members[0][0].name
    forward = {k: v for k, v in body.items() if k != "coe"}
    strategy = f"synthesis-{plan.strategy}"
    names = [m.name for m, _ in members]
    headers = {
        "x-coe-expert": aggregator if plan.strategy == "synthesize" else names[0],
        "x-coe-experts": ",".join(names),
        "x-coe-aggregator": aggregator if plan.strategy == "synthesize" else "",
        "x-coe-category": decision.category or "",
        "x-coe-confidence": f"{decision.confidence:.4f}",
        "x-coe-strategy": strategy,
    }
    metrics = state.metrics

    def finish(status: str, expert: str) -> None:
        metrics.requests.labels(req.model, expert, strategy, status).inc()
        metrics.latency.labels(expert).observe(time.perf_counter() - started)

    run = _Synthesis(state, req, forward, members, plan, aggregator, decision, _hold(state))
    if req.stream:
        return SSEResponse(run.stream(finish), headers={
            **headers, "cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip
    try:
        result = await run.complete()
    except CoEError as exc:
        finish(str(exc.status_code), headers["x-coe-expert"])
        raise
    headers["x-coe-expert"] = result["coe"]["expert"]
    finish("200", headers["x-coe-expert"])
    return Response(json.dumps(result, ensure_ascii=False).encode(),
                    media_type="application/json", headers=headers)  # fmt: skip


class _Synthesis:
    """One synthesis request: the panel, then the merge (plain or streamed)."""

    def __init__(
        self, state: GatewayState, req: ChatCompletionRequest, forward: dict[str, Any],
        members: list[tuple[ExpertClient, float]], plan: SynthesisPlan, aggregator: str,
        decision: RoutingDecision, hold: Callable[[str], AbstractAsyncContextManager[None]],
    ) -> None:  # fmt: skip
        self.state, self.req, self.forward = state, req, forward
        self.members, self.plan, self.aggregator = members, plan, aggregator
        self.decision, self.hold = decision, hold
        self.id = f"chatcmpl-coe-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    async def _panel(self) -> list[PanelAnswer]:
        limits = self.state.settings.synthesis
        return await ask_panel(self.members, self.forward, limits.expert_timeout_s, self.hold)

    def _info(self, answers: list[PanelAnswer], expert: str) -> dict[str, Any]:
        return {
            "expert": expert,
            "strategy": f"synthesis-{self.plan.strategy}",
            "virtual_model": self.req.model,
            "category": self.decision.category,
            "aggregator": self.aggregator if self.plan.strategy == "synthesize" else None,
            "experts": [a.report() for a in answers],
        }

    def _aggregator_body(self, answers: list[PanelAnswer], stream: bool) -> dict[str, Any]:
        client = self.state.pool.get(self.aggregator)
        assert client is not None
        body = {**self.forward, "model": client.spec.served_model_name, "stream": stream,
                "messages": aggregator_messages(self.forward["messages"], answers)}  # fmt: skip
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return body

    async def complete(self) -> dict[str, Any]:
        """The merged answer as one chat completion."""
        answers = await self._panel()
        if not any(a.ok for a in answers):
            raise panel_failure(answers)
        extra: dict[str, int] = {}
        if self.plan.strategy == "synthesize":
            client = self.state.pool.get(self.aggregator)
            assert client is not None
            async with self.hold(self.aggregator):
                result, _ = await client.complete(self._aggregator_body(answers, stream=False))
            message = result["choices"][0].get("message") or {}
            text, finish = str(message.get("content") or ""), result["choices"][0].get(
                "finish_reason", "stop")  # fmt: skip
            extra, expert = dict(result.get("usage") or {}), self.aggregator
        else:
            chosen = vote(answers) if self.plan.strategy == "vote" else best(answers)
            text, finish, expert = chosen.text, "stop", chosen.expert
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish, "logprobs": None}],
            "usage": total_usage(answers, extra),
            "coe": self._info(answers, expert),
        }  # fmt: skip

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None,
               **extra: Any) -> bytes:  # fmt: skip
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )
        return sse_event({"id": self.id, "object": "chat.completion.chunk",
                          "created": self.created, "model": self.req.model,
                          "choices": choices, **extra})  # fmt: skip

    async def stream(self, finish: Callable[[str, str], None]) -> AsyncIterator[bytes]:
        """SSE: keep-alives while the panel works, then the answer, then ``coe`` and [DONE]."""
        status, expert = "499", self.aggregator
        panel = asyncio.ensure_future(self._panel())
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        try:
            while not panel.done():
                done, _ = await asyncio.wait(
                    {panel}, timeout=self.state.settings.synthesis.keepalive_s
                )
                if not done:
                    yield KEEPALIVE
            answers = panel.result()
            if not any(a.ok for a in answers):
                raise panel_failure(answers)
            usage: dict[str, int] = {}
            if self.plan.strategy == "synthesize":
                async for event in self._stream_aggregator(answers, usage):
                    yield event
            else:
                chosen = vote(answers) if self.plan.strategy == "vote" else best(answers)
                expert = chosen.expert
                yield self._chunk({"role": "assistant", "content": ""})
                yield self._chunk({"content": chosen.text})
                yield self._chunk({}, "stop")
            if include_usage:
                yield self._chunk(None, usage=total_usage(answers, usage))
            yield self._chunk(None, coe=self._info(answers, expert))
            yield DONE
            status = "200"
        except UpstreamError as exc:
            status = str(exc.status_code)
            yield sse_event(exc.to_body()) + DONE
        finally:
            if not panel.done():
                panel.cancel()
            finish(status, expert)

    async def _stream_aggregator(
        self, answers: list[PanelAnswer], usage: dict[str, int]
    ) -> AsyncIterator[bytes]:
        """Relay the aggregator's chunks under our id; keep its usage for the total."""
        client = self.state.pool.get(self.aggregator)
        assert client is not None
        async with self.hold(self.aggregator):
            upstream = await client.stream(self._aggregator_body(answers, stream=True))
            try:
                async for data in data_events(upstream):
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue
                    if obj.get("usage"):
                        usage.update({k: v for k, v in obj["usage"].items() if isinstance(v, int)})
                    choices = obj.get("choices") or []
                    if choices:
                        yield self._chunk(choices[0].get("delta") or {},
                                          choices[0].get("finish_reason"))  # fmt: skip
            finally:
                await upstream.aclose()
