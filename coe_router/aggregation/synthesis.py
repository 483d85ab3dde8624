"""One synthesis request: ask the panel, merge its answers, answer whole or streamed.

FastAPI-free: it takes the pool's clients, the synthesis settings and the request's
:class:`~coe_router.lifecycle.RequestLifecycle` (tier holds, token charge); the gateway
turns what it returns into an HTTP response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from coe_router.aggregation.base import Merge, Strategy
from coe_router.aggregation.panel import PanelAnswer, ask_panel, panel_failure, total_usage
from coe_router.aggregation.plan import SynthesisPlan
from coe_router.aggregation.strategies import STRATEGIES
from coe_router.config import SynthesisSettings
from coe_router.experts.expert import ExpertClient
from coe_router.lifecycle import RequestLifecycle
from coe_router.protocol import ChatCompletionRequest
from coe_router.routing.base import RoutingDecision
from coe_router.sse import DONE, sse_event


class Synthesis:
    """The panel, then the merge by the plan's strategy (see the module docstring)."""

    def __init__(
        self,
        *,
        experts: dict[str, ExpertClient],
        settings: SynthesisSettings,
        req: ChatCompletionRequest,
        request_body: dict[str, Any],
        members: list[tuple[ExpertClient, float]],
        plan: SynthesisPlan,
        aggregator: str,
        decision: RoutingDecision,
        lifecycle: RequestLifecycle,
    ) -> None:
        self._experts = experts
        self._settings = settings
        self.req = req
        #: The client's body without our ``coe`` object: what every expert is asked.
        self.forward = {k: v for k, v in request_body.items() if k != "coe"}
        self.members, self.plan, self.aggregator = members, plan, aggregator
        self.decision = decision
        self.lifecycle = lifecycle
        self.strategy: Strategy = STRATEGIES[plan.strategy]()
        self.label = f"synthesis-{plan.strategy}"
        self.id = f"chatcmpl-coe-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        #: The expert whose answer the client got (known once merged).
        self.expert = aggregator if self.strategy.uses_aggregator else members[0][0].name

    async def _panel(self) -> Merge:
        self.lifecycle.count_calls(len(self.members) + int(self.strategy.uses_aggregator))
        answers = await ask_panel(
            self.members, self.forward, self._settings.expert_timeout_s, self.lifecycle.hold
        )
        if not any(a.ok for a in answers):
            raise panel_failure(answers)
        # An aggregator that just failed on the panel would fail again: the best member
        # that answered merges instead (coe.aggregator says who did).
        mine = next((a for a in answers if a.expert == self.aggregator), None)
        if mine is not None and not mine.ok:
            self.aggregator = max((a for a in answers if a.ok), key=lambda a: a.score).expert
        return Merge(answers, self.forward, self._experts[self.aggregator], self.lifecycle.hold)

    def _info(self, answers: list[PanelAnswer]) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "strategy": self.label,
            "virtual_model": self.req.model,
            "category": self.decision.category,
            "aggregator": self.aggregator if self.strategy.uses_aggregator else None,
            "experts": [a.report() for a in answers],
        }

    def _usage(self, merge: Merge) -> dict[str, int]:
        """Every call's usage summed; charged to the caller's token limit here, once."""
        usage = total_usage(merge.answers, merge.usage)
        self.lifecycle.charge(usage["total_tokens"])
        return usage

    async def complete(self) -> dict[str, Any]:
        """The merged answer as one chat completion."""
        merge = await self._panel()
        merged = await self.strategy.merge(merge)
        self.expert = merge.expert
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": merged.text},
                         "finish_reason": merged.finish_reason, "logprobs": None}],
            "usage": self._usage(merge),
            "coe": self._info(merge.answers),
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

    async def events(self) -> AsyncIterator[bytes]:
        """The stream's events: the answer, usage when asked for, ``coe``, then [DONE].

        Raises :class:`~coe_router.errors.CoEError` on failure (the caller sends it in-band).
        """
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        merge = await self._panel()
        async for delta, finish in self.strategy.stream(merge):
            self.expert = merge.expert
            yield self._chunk(delta, finish)
        self.expert = merge.expert
        usage = self._usage(merge)
        if include_usage:
            yield self._chunk(None, usage=usage)
        yield self._chunk(None, coe=self._info(merge.answers))
        yield DONE
