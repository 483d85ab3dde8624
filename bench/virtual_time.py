"""An asyncio event loop on a virtual clock: simulated minutes pass in milliseconds.

:class:`VirtualTimeLoop` is a :class:`asyncio.SelectorEventLoop` whose :meth:`time`
reads a virtual clock. When the loop has nothing ready to run it asks its selector to
wait ``timeout`` seconds for the next timer; :class:`VirtualSelector` does not wait but
moves the virtual clock forward by ``timeout`` and returns at once. Everything that
sleeps or times out through the loop (``asyncio.sleep``, ``asyncio.wait_for``,
``asyncio.timeout``, ``loop.call_later``) therefore runs instantly, in the right order,
and sees consistent timestamps from ``loop.time()``.

This is only sound when nothing waits on real I/O: ``httpx.MockTransport`` (no sockets)
and in-memory fakes are fine. The wrapped real selector still holds the loop's
self-pipe and any other registration and is polled without blocking on every turn, so
``call_soon_threadsafe`` keeps working. If the loop has nothing scheduled at all and no
real event arrives within ``idle_real_s`` real seconds, the program can never make
progress again (a deadlock, or a wait on real I/O): :class:`VirtualTimeDeadlock` is
raised instead of hanging.

Code that reads the wall clock directly (``time.monotonic()``, ``time.time()``) is not
affected; give it ``loop.time`` as its clock (``TierScheduler(clock=loop.time)``).

Usage::

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class VirtualTimeDeadlock(RuntimeError):
    """The loop has no timer, no ready callback and no real I/O: it would block forever."""


class VirtualSelector(selectors.BaseSelector):
    """A selector whose ``select(timeout)`` advances a virtual clock instead of blocking.

    Registrations go to a real selector (the loop's self-pipe lives there), which is
    polled with a zero timeout on every call.
    """

    def __init__(self, start: float = 0.0, idle_real_s: float = 1.0) -> None:
        self._real = selectors.DefaultSelector()
        #: The virtual time, in seconds.
        self.now = start
        self._idle_real_s = idle_real_s

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Register with the real selector."""
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        """Unregister from the real selector."""
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Modify a registration on the real selector."""
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Real events if any are ready now; otherwise jump ``timeout`` virtual seconds."""
        events = self._real.select(0)
        if events:
            return events
        if timeout is None:
            # Nothing scheduled: only a real event (another thread) could wake the loop.
            events = self._real.select(self._idle_real_s)
            if not events:
                raise VirtualTimeDeadlock(
                    f"at virtual t={self.now:.3f} s nothing is scheduled and no real I/O "
                    f"arrived within {self._idle_real_s} s: every task waits forever"
                )
            return events
        if timeout > 0:
            self.now += timeout
        return []

    def close(self) -> None:
        """Close the real selector."""
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        """The real selector's registrations."""
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual and never waits for a timer."""

    def __init__(self, start: float = 0.0, idle_real_s: float = 1.0) -> None:
        self._virtual = VirtualSelector(start, idle_real_s)
        super().__init__(self._virtual)
        # Timers due within this of now run now; the virtual clock lands exactly on them.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        """The virtual time, in seconds."""
        return self._virtual.now
