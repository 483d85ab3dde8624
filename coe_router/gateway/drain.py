"""Graceful drain: what happens to requests in flight when the gateway is told to stop.

On SIGTERM the server (:mod:`coe_router.gateway.server`) stops accepting connections and
calls :meth:`Drain.begin`. Requests and streams in flight carry on for up to
``COE_SERVER__DRAIN_S``; then :meth:`Drain` cuts the rest short, each in the way its client
can understand (:mod:`coe_router.gateway.admission` does the cutting): a stream gets an
in-band error event and ``data: [DONE]``, a request whose answer has not started gets a JSON
503. Only then does the lifespan end, which stops the launched experts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("coe_router.gateway")


@dataclass(eq=False, slots=True)
class InFlight:
    """One request being served: its task, and what of its answer has gone out."""

    task: asyncio.Task[object]
    #: The headers of ``http.response.start``, once sent (the status can no longer change).
    headers: list[tuple[bytes, bytes]] | None = None
    #: The last body bytes sent ended an SSE event (``\n\n``): an event may follow.
    at_boundary: bool = True
    #: The last body message was sent (nothing more may be).
    complete: bool = False
    #: Cancelled by the drain deadline (not by the client or the server).
    expired: bool = False
    #: The whole request body has been received.
    body_done: bool = False
    #: Cancelled by the body deadline (``COE_SERVER__BODY_TIMEOUT_S``).
    body_overdue: bool = False


@dataclass
class Drain:
    """In-flight requests, and the deadline after which they are cut short."""

    drain_s: float
    active: set[InFlight] = field(default_factory=set)
    #: Monotonic time :meth:`begin` was called (None while serving normally).
    began: float | None = None
    _timer: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        """Whether the gateway is shutting down (``/ready`` then says so)."""
        return self.began is not None

    def begin(self) -> None:
        """Start draining (idempotent); call on the event loop."""
        if self.began is not None:
            return
        self.began = time.monotonic()
        log.info("draining: %d request(s) in flight get up to %g s to finish",
                 len(self.active), self.drain_s)  # fmt: skip
        self._timer = asyncio.get_running_loop().call_later(self.drain_s, self.expire)

    def expire(self) -> None:
        """The drain time is up: cut every unfinished request short."""
        left = [r for r in self.active if not r.complete]
        if left:
            log.warning("drain time (%g s) is up: ending %d request(s) in flight",
                        self.drain_s, len(left))  # fmt: skip
        for r in left:
            r.expired = True
            r.task.cancel()

    def cancel(self) -> None:
        """Forget a pending deadline (the server stopped without waiting for it)."""
        if self._timer is not None:
            self._timer.cancel()
