"""The panel: ask k experts the same question concurrently, each within its own timeout.

A failed or slow expert is left out and reported; the answer is built from the
rest. Through the tiered pool every member asks the pool for its expert at once, so
the scheduler sees the whole panel together; a panel larger than the memory budget
queues (one expert after another) instead of overrunning it. The per-expert timeout
starts once the pool has the expert awake: time spent queued for a wake is bounded
by the pool's own ``tiers.queue_timeout_s`` and reported as ``wait_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from coe_router.errors import CoEError, UpstreamError, UpstreamStatusError, UpstreamTimeout
from coe_router.experts.expert import ExpertClient
from coe_router.request_id import current_request_id

log = logging.getLogger("coe_router.aggregation")

#: Wraps one expert call; the tiered pool's ``hold`` keeps the expert awake for it.
Hold = Callable[[str], AbstractAsyncContextManager[None]]


@dataclass
class PanelAnswer:
    """One expert's contribution."""

    expert: str
    #: The router's score for this expert (ties in a vote go to the higher one).
    score: float
    ok: bool = False
    text: str = ""
    latency_s: float = 0.0
    #: Of ``latency_s``, the time spent waiting for the tiered pool to wake the expert.
    wait_s: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    error_status: int | None = None
    #: The error itself (not reported; :func:`panel_failure` may pass it on).
    exception: CoEError | None = field(default=None, repr=False)
    #: Its answer made it into the final one.
    used: bool = False

    def report(self) -> dict[str, Any]:
        """The entry for the ``coe.experts`` list of the response."""
        out: dict[str, Any] = {
            "expert": self.expert, "ok": self.ok, "used": self.used,
            "latency_ms": round(self.latency_s * 1000, 1),
            "wait_ms": round(self.wait_s * 1000, 1), "score": self.score,
        }  # fmt: skip
        if self.error:  # the client's text: the exception's own names replica URLs
            public = self.exception.client_text if self.exception is not None else None
            out["error"] = public or self.error
        return out


def _no_hold(name: str) -> AbstractAsyncContextManager[None]:
    return nullcontext()


async def ask_panel(
    members: list[tuple[ExpertClient, float]],
    body: dict[str, Any],
    timeout_s: float,
    hold: Hold | None = None,
) -> list[PanelAnswer]:
    """Ask every member (non-streaming) concurrently; never raises for one member's failure."""
    hold = hold or _no_hold

    async def ask(expert: ExpertClient, score: float) -> PanelAnswer:
        answer = PanelAnswer(expert.name, score)
        request = {**body, "model": expert.spec.served_model_name, "stream": False}
        request.pop("stream_options", None)
        started = time.perf_counter()
        try:
            async with hold(expert.name):
                answer.wait_s = time.perf_counter() - started
                async with asyncio.timeout(timeout_s):
                    result, _ = await expert.complete(request)
        except TimeoutError:
            answer.error = f"no answer within {timeout_s:g} s"
            answer.error_status = UpstreamTimeout.status_code
        except CoEError as exc:
            # The client sees only the error's public text (report()); the detail is logged.
            log.warning("request %s: panel member %r failed: %s",
                        current_request_id() or "-", expert.name, exc.message)  # fmt: skip
            answer.error = exc.message
            answer.error_status = exc.status_code
            answer.exception = exc
        else:
            choice = result["choices"][0] if result["choices"] else {}
            message = choice.get("message") if isinstance(choice, dict) else None
            answer.text = str((message if isinstance(message, dict) else {}).get("content") or "")
            answer.usage = {k: int(v) for k, v in (result.get("usage") or {}).items()
                            if isinstance(v, int)}  # fmt: skip
            answer.ok = True
        answer.latency_s = time.perf_counter() - started
        return answer

    return list(await asyncio.gather(*(ask(e, s) for e, s in members)))


def panel_failure(answers: list[PanelAnswer]) -> UpstreamError:
    """The error when no member answered: 504 if every one timed out, the experts' own
    4xx when every one rejected the request the same way (the request's fault), else 502."""
    detail = "; ".join(f"{a.expert}: {a.error}" for a in answers)
    first = answers[0].exception if answers else None
    if isinstance(first, UpstreamStatusError) and all(
        isinstance(a.exception, UpstreamStatusError) and a.error_status == first.status_code
        for a in answers
    ):
        return first
    if all(a.error_status == UpstreamTimeout.status_code for a in answers):
        return UpstreamTimeout(f"no expert of the panel answered in time ({detail})")
    return UpstreamError(f"every expert of the panel failed ({detail})")


def total_usage(answers: list[PanelAnswer], *more: dict[str, int]) -> dict[str, int]:
    """Token usage summed over every call (panel members and the aggregator)."""
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for usage in [*(a.usage for a in answers), *more]:
        for key in total:
            total[key] += int(usage.get(key, 0))
    return total
