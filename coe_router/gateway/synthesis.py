"""Multi-expert synthesis on the request path: recruit k experts, ask them, merge, respond.

Switched on per virtual model (catalog ``synthesis:``) or per request
(``coe: {"synthesis": true, "k": 3, "aggregator": "...", "strategy": "..."}``).
Streaming clients get SSE comment lines as keep-alives while the panel works; with
``synthesize`` the aggregator's answer is then streamed token by token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
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
from coe_router.gateway.disconnect import CLIENT_CLOSED, ClientDisconnected, until_disconnect
from coe_router.gateway.sse import DONE, SSEResponse, data_events, sse_event
from coe_router.gateway.state import GatewayState
from coe_router.protocol import ChatCompletionRequest
from coe_router.routing.base import RoutingDecision

KEEPALIVE = b": keep-alive\n\n"
log = logging.getLogger("coe_router.gateway.synthesis")


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
    if req.n is not None and req.n > 1:  # one merged answer; n answers would need n panels
        raise InvalidRequest("Synthesis answers with one choice: 'n' must be 1.", param="n")
    limits = state.settings.synthesis
    spec = vm.synthesis or SynthesisSpec()
    most = min(limits.max_k, len(state.catalog.experts))
    asked = opts.k if opts is not None else None
    if asked is not None and asked > most:
        raise InvalidRequest(
            f"'coe.k' must be at most {most}.", param="coe.k", code="invalid_value"
        )
    # Defaults (the virtual model's, then the settings') are capped at what there is.
    k = asked or min(spec.k or limits.default_k, most)
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
    """Answer ``req`` from a panel of experts, merged by ``plan.strategy``.

    Headers: ``x-coe-experts`` (asked, best first), ``x-coe-aggregator`` (``synthesize``),
    ``x-coe-strategy``; non-streamed answers also get ``x-coe-experts-used``,
    ``x-coe-experts-failed`` and ``x-coe-experts-latency-ms`` (``name=ms,...``). A stream's
    headers leave before the panel answers: its final ``coe`` chunk has the outcome.
    """
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
        # The response starts at the first event, or after ``keepalive_s`` with a keep-alive:
        # a panel that fails faster (experts down, the request rejected) gets a real status.
        run.start()
        try:
            early = await until_disconnect(
                request, run.opening(state.settings.synthesis.keepalive_s)
            )
        except ClientDisconnected:
            await run.close()
            finish(CLIENT_CLOSED, headers["x-coe-expert"])
            return Response(status_code=int(CLIENT_CLOSED))
        except BaseException:  # cancelled (shutdown) or a bug: leave nothing running
            run.cancel()
            finish("500", headers["x-coe-expert"])
            raise
        if early is not None:
            await run.close()
            finish(str(early.status_code), headers["x-coe-expert"])
            raise early
        return SSEResponse(run.relay(finish), headers={
            **headers, "cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip
    try:
        result = await until_disconnect(request, run.complete())
    except ClientDisconnected:
        finish(CLIENT_CLOSED, headers["x-coe-expert"])
        return Response(status_code=int(CLIENT_CLOSED))
    except CoEError as exc:
        finish(str(exc.status_code), headers["x-coe-expert"])
        raise
    except BaseException:
        finish("500", headers["x-coe-expert"])
        raise
    info = result["coe"]
    headers["x-coe-expert"] = info["expert"]
    headers["x-coe-aggregator"] = info["aggregator"] or ""
    headers["x-coe-experts-used"] = ",".join(e["expert"] for e in info["experts"] if e["used"])
    headers["x-coe-experts-failed"] = ",".join(e["expert"] for e in info["experts"] if not e["ok"])
    headers["x-coe-experts-latency-ms"] = ",".join(
        f"{e['expert']}={e['latency_ms']:g}" for e in info["experts"]
    )
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
        #: Outcome of a stream, for the metrics: status and the expert that answered.
        self.status, self.expert = CLIENT_CLOSED, aggregator
        self._queue: asyncio.Queue[bytes | CoEError | None] = asyncio.Queue()
        self._producer: asyncio.Future[None] | None = None
        self._next: asyncio.Future[bytes | CoEError | None] | None = None
        self._waited = False

    async def _panel(self) -> list[PanelAnswer]:
        limits = self.state.settings.synthesis
        answers = await ask_panel(self.members, self.forward, limits.expert_timeout_s, self.hold)
        if not any(a.ok for a in answers):
            raise panel_failure(answers)
        # An aggregator that just failed on the panel would fail again: the best member
        # that answered merges instead (coe.aggregator says who did).
        mine = next((a for a in answers if a.expert == self.aggregator), None)
        if mine is not None and not mine.ok:
            self.aggregator = max((a for a in answers if a.ok), key=lambda a: a.score).expert
        return answers

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
        extra: dict[str, int] = {}
        if self.plan.strategy == "synthesize":
            client = self.state.pool.get(self.aggregator)
            assert client is not None
            async with self.hold(self.aggregator):
                result, _ = await client.complete(self._aggregator_body(answers, stream=False))
            choice = result["choices"][0] if result["choices"] else {}
            message = choice.get("message") or {}
            text, finish = str(message.get("content") or ""), choice.get("finish_reason", "stop")
            extra = {k: v for k, v in (result.get("usage") or {}).items() if isinstance(v, int)}
            expert = self.aggregator
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

    # --- streaming: the work runs in one task and queues events; the relay sends them, with
    # a keep-alive comment whenever nothing was sent for ``keepalive_s`` (panel, the
    # aggregator's wake and prefill), so proxies and clients do not time out.

    def start(self) -> None:
        """Start the work (panel, merge) in its own task."""
        self._producer = asyncio.ensure_future(self._produce())

    async def opening(self, within_s: float) -> CoEError | None:
        """Wait up to ``within_s`` for the first event; the error if the work failed by then."""
        self._next = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._next}, timeout=within_s)
        if not done:
            self._waited = True
            return None
        first = self._next.result()
        return first if isinstance(first, CoEError) else None

    def cancel(self) -> None:
        """Cancel whatever still runs (every expert call in it)."""
        for task in (self._next, self._producer):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        """:meth:`cancel`, and wait until the calls have closed their connections."""
        self.cancel()
        if self._producer is not None:
            await asyncio.gather(self._producer, return_exceptions=True)

    def relay(self, finish: Callable[[str, str], None]) -> _Body:
        """The SSE body. Closing it (the client left) cancels the work; ``finish`` is called
        once with the outcome, also when the body was closed before it was iterated."""
        return _Body(self, self._relay(), finish)

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        every = self.state.settings.synthesis.keepalive_s
        if self._waited:  # :meth:`opening` already waited one period
            yield KEEPALIVE
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(self._queue.get())
            while not (await asyncio.wait({self._next}, timeout=every))[0]:
                yield KEEPALIVE
            item, self._next = self._next.result(), None
            if item is None:
                return
            if isinstance(item, CoEError):  # the status is sent already: say it in-band
                self.status = str(item.status_code)
                yield sse_event(item.to_body()) + DONE
                return
            yield item

    async def _produce(self) -> None:
        """Run :meth:`_events` into the queue; an error is queued as the last event.

        Always ends the queue with None, so the relay never waits for nothing.
        """
        try:
            async for event in self._events():
                self._queue.put_nowait(event)
        except CoEError as exc:
            self._queue.put_nowait(exc)
        except Exception as exc:  # a bug: say so rather than hang up mid-stream
            log.exception("synthesis stream failed")
            self._queue.put_nowait(CoEError(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self._queue.put_nowait(None)

    async def _events(self) -> AsyncIterator[bytes]:
        """The stream's events: the answer, usage when asked for, ``coe``, then [DONE]."""
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        answers = await self._panel()
        usage: dict[str, int] = {}
        if self.plan.strategy == "synthesize":
            self.expert = self.aggregator
            async for event in self._stream_aggregator(answers, usage):
                yield event
        else:
            chosen = vote(answers) if self.plan.strategy == "vote" else best(answers)
            self.expert = chosen.expert
            yield self._chunk({"role": "assistant", "content": ""})
            yield self._chunk({"content": chosen.text})
            yield self._chunk({}, "stop")
        if include_usage:
            yield self._chunk(None, usage=total_usage(answers, usage))
        yield self._chunk(None, coe=self._info(answers, self.expert))
        yield DONE
        self.status = "200"

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
                    if not isinstance(obj, dict):
                        continue
                    if isinstance(obj.get("error"), dict):  # vLLM reports in-band errors so
                        raise UpstreamError(
                            f"aggregator {self.aggregator!r} failed mid-stream: "
                            f"{obj['error'].get('message', '')}"
                        )
                    if obj.get("usage"):
                        usage.update({k: v for k, v in obj["usage"].items() if isinstance(v, int)})
                    choices = obj.get("choices") or []
                    if choices:
                        yield self._chunk(choices[0].get("delta") or {},
                                          choices[0].get("finish_reason"))  # fmt: skip
            finally:
                await upstream.aclose()


class _Body:
    """A synthesis stream's body: the events, then cleanup exactly once (see ``Relay``)."""

    def __init__(
        self, run: _Synthesis, events: AsyncGenerator[bytes, None],
        finish: Callable[[str, str], None],
    ) -> None:  # fmt: skip
        self._run, self._events, self._finish = run, events, finish
        self._ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            async for event in self._events:
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop: close the events, cancel the work, report the outcome (idempotent)."""
        if self._ended:
            return
        self._ended = True
        try:
            await self._events.aclose()
            await self._run.close()
        finally:
            self._finish(self._run.status, self._run.expert)
