"""Ending a stream exactly once: an async cleanup, then a report of how it went.

Every stream the gateway hands out (an expert's response, the relay in front of it, a
synthesis with keep-alives, a translated Messages stream) can be ended from several places:
its own last event, the client hanging up, the server closing the body, an error. Each
owns one :class:`EndOnce`, so the cleanup (closing a connection, cancelling work) runs once
and the report (the outcome for metrics and the lifecycle) always follows it, even when the
cleanup raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class EndOnce:
    """``await end()``: run ``cleanup`` the first time only, then ``report``, whatever the
    cleanup raised. Later calls do nothing."""

    def __init__(
        self, cleanup: Callable[[], Awaitable[object]], report: Callable[[], None]
    ) -> None:
        self._cleanup = cleanup
        self._report = report
        self.ended = False

    async def __call__(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            await self._cleanup()
        finally:
            self._report()
