"""The circuit breaker fails fast after repeated failures and recovers after its cooldown."""

from __future__ import annotations

import os
import signal

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


# ---------------------------------------------------------------- fork() while a lock is held


def _child_takes(lock_user) -> int:
    """Fork; the child runs lock_user() with 5 seconds to finish; the child's exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            signal.alarm(5)  # a child waiting on a lock copied held dies of SIGALRM
            lock_user()
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return status


def _held_at_fork(owner, lock_user) -> int:
    # As another thread would be holding it, mid-call, when the server forks.
    owner._lock.acquire()
    try:
        return _child_takes(lock_user)
    finally:
        owner._lock.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_fork_while_the_breaker_lock_is_held_leaves_the_child_a_working_breaker():
    breaker = CircuitBreaker(threshold=1)
    assert _held_at_fork(breaker, breaker.failed) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_a_fork_while_a_store_lock_is_held_leaves_the_child_a_working_store(kind):
    if kind == "memcached":
        pytest.importorskip("pymemcache")
        from fastsess.stores.memcached import MemcachedStore

        store = MemcachedStore("127.0.0.1:1")  # never reached: only its lock is used
        assert _held_at_fork(store, store._forget_connections) == 0
    else:
        pytest.importorskip("redis")
        from fastsess.stores.redis import RedisStore

        store = RedisStore("redis://127.0.0.1:1/0")
        assert _held_at_fork(store, store._open) == 0
