"""A settable clock for the classes that take `clock=` (caches, limiters, health, sessions)."""

from __future__ import annotations


class FakeClock:
    """Unix seconds that move only when a test says so: `clock()` reads, `advance(s)` moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
