"""A circuit breaker for network stores: after repeated failures, fail fast for a while.

Without it, every request during an outage would wait out the connect timeout.
Closed: calls go through. After `threshold` consecutive failures it opens for
`cooldown` seconds, during which calls fail at once with StoreError. Then one
trial call goes through (half-open): success closes it, failure reopens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import StoreError
from .base import fork_safe_lock


class CircuitBreaker:
    """Thread-safe; one per store, or per node of a store with several (and so per process).

    The closed state is read without the lock: a failure recorded by another
    thread at that moment lets one more call through, which is what a closed
    breaker does anyway.
    """

    def __init__(self, threshold: int = 5, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._lock = fork_safe_lock(self)

    def before_call(self, what: str) -> None:
        """Raise StoreError while the breaker is open; let one trial call through after the cooldown."""
        if self._failures < self.threshold:  # closed, as nearly always: no lock to take
            return
        with self._lock:
            if self._failures < self.threshold:
                return
            now = self.clock()
            if now < self._open_until:
                raise StoreError(f"{what} is failing; not retrying for {self._open_until - now:.1f} s")
            self._open_until = now + self.cooldown  # half-open: this caller is the trial

    def succeeded(self) -> None:
        if not self._failures:  # nothing to reset, as nearly always
            return
        with self._lock:
            self._failures = 0
            self._open_until = 0.0

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open_until = self.clock() + self.cooldown

    @property
    def failing(self) -> bool:
        """True after a failure that no success has followed yet (read without the lock)."""
        return self._failures > 0

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._failures >= self.threshold and self.clock() < self._open_until
