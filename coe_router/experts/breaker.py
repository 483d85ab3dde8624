"""A per-replica circuit breaker: stop sending to a replica that keeps failing.

closed --N consecutive failures--> open --reset_s elapsed--> half-open
half-open lets one trial request through: success closes, failure re-opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Consecutive-failure breaker; the clock is injectable for tests."""

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_after = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """Current state (an open breaker turns half-open once ``reset_after_s`` passed)."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._reset_after:
            return "half_open"
        return "open"

    def allows(self) -> bool:
        """Whether a request may go to this replica now (without claiming the trial)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial_in_flight)

    def acquire(self) -> bool:
        """Claim the right to send one request; in half-open only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The replica answered: close the breaker."""
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """The replica failed: count it, and open (or re-open) when over the threshold."""
        self._failures += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()

    def release(self) -> None:
        """A claimed trial ended without a verdict (e.g. the client went away)."""
        self._trial_in_flight = False
