"""The per-replica circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

import pytest

from coe_router.experts.breaker import CircuitBreaker


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, threshold: int = 3, reset_s: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, reset_s, clock=clock)


def tripped(clock: Clock, threshold: int = 1, reset_s: float = 10.0) -> CircuitBreaker:
    """A breaker just opened by ``threshold`` consecutive failures."""
    b = breaker(clock, threshold, reset_s)
    for _ in range(threshold):
        b.record_failure()
    assert b.state == "open"
    return b


def turns_half_open_after(b: CircuitBreaker, clock: Clock, seconds: float) -> None:
    """``b`` stays open, refusing everything, until ``seconds`` have passed; then half-open."""
    clock.advance(seconds - 0.001)
    assert b.state == "open"
    assert not b.allows()
    assert not b.acquire()
    clock.advance(0.001)
    assert b.state == "half_open"
    assert b.allows()


def test_starts_closed_and_lets_everything_through(clock: Clock) -> None:
    b = breaker(clock)
    assert b.state == "closed"
    for _ in range(5):
        assert b.allows()
        assert b.acquire()  # a closed breaker has no single-trial limit


def test_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    b = breaker(clock, threshold=3)
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    assert b.allows()
    b.record_failure()
    assert b.state == "open"
    assert not b.allows()
    assert not b.acquire()


def test_threshold_of_one_opens_on_the_first_failure(clock: Clock) -> None:
    b = breaker(clock, threshold=1)
    b.record_failure()
    assert b.state == "open"
    assert not b.allows()


def test_a_success_resets_the_failure_count(clock: Clock) -> None:
    b = breaker(clock, threshold=3)
    for _ in range(4):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"  # only two in a row since the last success


def test_stays_open_until_reset_time_then_turns_half_open(clock: Clock) -> None:
    b = tripped(clock, threshold=1, reset_s=10)
    turns_half_open_after(b, clock, 10)


def test_half_open_admits_exactly_one_trial(clock: Clock) -> None:
    b = tripped(clock, threshold=1, reset_s=10)
    clock.advance(10)
    assert b.acquire()
    assert b.state == "half_open"
    assert not b.allows()  # the trial is in flight
    assert not b.acquire()
    clock.advance(100)  # time alone does not free the trial slot
    assert not b.acquire()


def test_successful_trial_closes_the_breaker(clock: Clock) -> None:
    b = tripped(clock, threshold=2, reset_s=10)
    clock.advance(10)
    assert b.acquire()
    b.record_success()
    assert b.state == "closed"
    assert b.acquire()
    assert b.acquire()
    # The count started over: one failure does not re-open a threshold-2 breaker.
    b.record_failure()
    assert b.state == "closed"


def test_failed_trial_reopens_for_a_full_reset_period(clock: Clock) -> None:
    b = tripped(clock, threshold=3, reset_s=10)
    clock.advance(15)
    assert b.acquire()
    b.record_failure()  # one failure is enough once open, whatever the threshold
    turns_half_open_after(b, clock, 10)
    assert b.acquire()


def test_released_trial_frees_the_slot_without_a_verdict(clock: Clock) -> None:
    b = tripped(clock, threshold=1, reset_s=10)
    clock.advance(10)
    assert b.acquire()
    b.release()  # e.g. the client went away
    assert b.state == "half_open"  # neither closed nor re-opened
    assert b.allows()
    assert b.acquire()


def test_release_on_a_closed_breaker_changes_nothing(clock: Clock) -> None:
    b = breaker(clock, threshold=2)
    b.record_failure()
    b.release()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"  # the earlier failure still counted


def test_success_while_open_closes_it(clock: Clock) -> None:
    # A health round that finds the replica back up resets its breaker early.
    b = tripped(clock, threshold=1, reset_s=10)
    assert b.state == "open"
    b.record_success()
    assert b.state == "closed"
    assert b.acquire()


def test_default_clock_is_monotonic_time() -> None:
    b = CircuitBreaker(1, 3600)
    b.record_failure()
    assert b.state == "open"
