"""A circuit breaker: after a run of failures, stop calling a dependency for a while.

Closed: calls go through; `threshold` consecutive failures open it. Open: `allow()` is False
(callers fail at once) for `cooldown` seconds. Then half-open: exactly one call (the probe) is let
through; its success closes the breaker, its failure opens it for another cooldown. A probe that
never reports back (its caller was cancelled) is replaced by another one after a further cooldown.

Callers decide what is a failure: an outage of the dependency (refused connections, timeouts, 5xx),
never an answer that says no (a 4xx). Single event loop (or single thread): no locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """`allow()` before a call, then `success()` or `failure()` after it.

    `on_change(old, new)` is called on every state change (for a log line or a metric).
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if cooldown <= 0:
            raise ValueError("cooldown must be positive")
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.on_change = on_change
        self.failures = 0  # consecutive failures while closed
        self.rejected = 0  # calls refused while open (for tests and metrics)
        self._state: State = "closed"
        self._since = 0.0  # when the breaker opened, or when the current probe started

    @property
    def state(self) -> State:
        """The state as last changed (reading it changes nothing)."""
        return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now; True at most once per cooldown while not closed."""
        if self._state == "closed":
            return True
        now = self.clock()
        if now - self._since < self.cooldown:
            self.rejected += 1
            return False
        self._since = now  # this caller is the probe
        self._set("half_open")
        return True

    @property
    def is_open(self) -> bool:
        """`not allow()`: the spelling the Redis store uses (it lets the probe through too)."""
        return not self.allow()

    def retry_after(self) -> float:
        """Seconds until a call may be let through again (0 when closed)."""
        if self._state == "closed":
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self._since))

    def success(self) -> None:
        """The dependency answered: close the breaker."""
        self.failures = 0
        self._set("closed")

    def failure(self) -> None:
        """The dependency is failing: count it; open after `threshold` in a row, or a failed probe."""
        if self._state == "half_open" or (self._state == "closed" and self.failures + 1 >= self.threshold):
            self.failures = 0
            self._since = self.clock()
            self._set("open")
        elif self._state == "closed":
            self.failures += 1

    def _set(self, state: State) -> None:
        old, self._state = self._state, state
        if old != state and self.on_change is not None:
            self.on_change(old, state)
