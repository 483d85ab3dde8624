"""A stream whose first event may be long in coming: keep-alives until it is there.

Synthesis asks its whole panel before the first token of the answer exists. The work
runs in its own task and queues its events; the body sends them, with an SSE comment
(``: keep-alive``) whenever nothing was sent for ``keepalive_s`` (the panel, the
aggregator's wake and prefill), so proxies and clients do not time out. An error after
the response started is sent in-band, then ``[DONE]``.

The HTTP adapter first waits up to ``keepalive_s`` for the opening event
(:meth:`KeepAliveStream.opening`): a failure that comes that early (experts down, the
request rejected) still gets a real status code instead of a 200 stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from coe_router.closing import EndOnce
from coe_router.errors import CoEError
from coe_router.lifecycle import CLIENT_CLOSED
from coe_router.sse import DONE, sse_event

KEEPALIVE = b": keep-alive\n\n"
log = logging.getLogger("coe_router.aggregation")


class KeepAliveStream:
    """Runs ``events`` in a task; :meth:`body` relays them with keep-alives.

    ``on_first_byte`` is called with the first real event; ``on_end`` exactly once with
    the outcome (``"200"``, an error's status, or ``"499"`` when the client left), also
    when the body is closed before it was iterated.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        keepalive_s: float,
        on_first_byte: Callable[[], None],
        on_end: Callable[[str], None],
    ) -> None:
        self._events = events
        self._keepalive_s = keepalive_s
        self._on_first_byte = on_first_byte
        self._on_end = on_end
        self._status = CLIENT_CLOSED
        self._queue: asyncio.Queue[bytes | CoEError | None] = asyncio.Queue()
        self._producer: asyncio.Future[None] | None = None
        self._next: asyncio.Future[bytes | CoEError | None] | None = None
        self._end = EndOnce(self.close, lambda: self._on_end(self._status))
        self._waited = False

    def start(self) -> None:
        """Start the work in its own task."""
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

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            async for event in self._relay():
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the work, report the outcome (idempotent)."""
        await self._end()

    async def _relay(self) -> AsyncIterator[bytes]:
        first = True
        if self._waited:  # :meth:`opening` already waited one period
            yield KEEPALIVE
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(self._queue.get())
            while not (await asyncio.wait({self._next}, timeout=self._keepalive_s))[0]:
                yield KEEPALIVE
            item, self._next = self._next.result(), None
            if item is None:
                return
            if isinstance(item, CoEError):  # the status is sent already: say it in-band
                self._status = str(item.status_code)
                yield sse_event(item.to_body()) + DONE
                return
            if first:
                first = False
                self._on_first_byte()
            yield item

    async def _produce(self) -> None:
        """Run the events into the queue; an error is queued as the last event.

        Always ends the queue with None, so the relay never waits for nothing.
        """
        try:
            async for event in self._events:
                self._queue.put_nowait(event)
            self._status = "200"
        except CoEError as exc:
            self._queue.put_nowait(exc)
        except Exception as exc:  # a bug: say so rather than hang up mid-stream
            log.exception("stream failed")
            self._queue.put_nowait(CoEError(f"internal error: {type(exc).__name__}"))
        finally:
            self._queue.put_nowait(None)
