"""The circuit breaker fails fast after repeated failures and recovers after its cooldown."""

from __future__ import annotations

import pytest

from fastsess.errors import StoreError
from fastsess.stores.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_stays_closed_below_the_threshold():
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=Clock())
    for _ in range(2):
        breaker.before_call("redis")
        breaker.failed()
    breaker.before_call("redis")
    assert not breaker.is_open


def test_breaker_opens_after_threshold_failures_and_fails_fast():
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=clock)
    for _ in range(3):
        breaker.failed()
    assert breaker.is_open
    with pytest.raises(StoreError, match="not retrying"):
        breaker.before_call("redis")


def test_breaker_lets_one_trial_through_after_cooldown_and_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=5, clock=clock)
    breaker.failed()
    breaker.failed()
    clock.now += 5
    breaker.before_call("redis")  # the trial
    with pytest.raises(StoreError):
        breaker.before_call("redis")  # others still fail fast during the trial
    breaker.succeeded()
    breaker.before_call("redis")
    assert not breaker.is_open


def test_a_failed_trial_reopens_the_breaker():
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=5, clock=clock)
    breaker.failed()
    breaker.failed()
    clock.now += 5
    breaker.before_call("redis")
    breaker.failed()
    with pytest.raises(StoreError):
        breaker.before_call("redis")


def test_failing_from_a_failure_until_the_next_success():
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=Clock())
    assert not breaker.failing
    breaker.failed()
    assert breaker.failing and not breaker.is_open
    breaker.succeeded()
    assert not breaker.failing
