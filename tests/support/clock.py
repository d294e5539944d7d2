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


class TickingClock(FakeClock):
    """A FakeClock that moves `step` seconds each time it is read: time passes only as the code
    under test works (each reading one step), never with the wall clock."""

    def __init__(self, step: float, now: float = 1_700_000_000.0) -> None:
        super().__init__(now)
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now
