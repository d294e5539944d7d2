"""The circuit breaker in front of Redis: a dead store costs one timeout, not one per request."""

from __future__ import annotations

import time


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; while open, calls fail fast for `cooldown` s.

    After the cooldown one call is let through (half-open); its success closes the breaker.
    """

    def __init__(self, threshold: int = 3, cooldown: float = 2.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        if self.opened_at is None:
            return False
        if time.monotonic() - self.opened_at >= self.cooldown:
            # Half-open: let the next call probe; a failure re-opens for another cooldown.
            self.opened_at = None
            self.failures = self.threshold - 1
            return False
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()
