"""A quiet window: when a polled table was found with nothing to do, skip polling it for a while.

The SQL usage outbox and the ledger's not-yet-rolled-up rows are polled by background loops (twice
a second, once a second) and are empty nearly always; each empty poll is a transaction, and those
were most of an idle server's CPU. After a poll found nothing, `QuietWindow.active` stays true for
`seconds`, unless this process added work meanwhile (`touched`): work of its own is seen at the next
poll, work another process added within `seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class QuietWindow:
    """See the module docstring. `seconds` = 0 never goes quiet; `clock` is injectable for tests."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError("a quiet window cannot be negative")
        self.seconds = seconds
        self.clock = clock
        self._since = 0.0
        self._until: float | None = None
        self._touches = 0

    @property
    def active(self) -> bool:
        """Whether a poll may be skipped now (never when the clock went back past the window's
        start: a wall clock set back an hour must not silence the poll for an hour)."""
        return self._until is not None and self._since <= self.clock() < self._until

    def touched(self) -> None:
        """This process added work: the next poll looks."""
        self._touches += 1
        self._until = None

    def poll(self) -> int:
        """Call as a poll begins; hand the result to `found_nothing` if it finds nothing."""
        return self._touches

    def found_nothing(self, poll: int) -> None:
        """The poll begun as `poll` found nothing: go quiet, unless work was added since it began
        (that work may have landed after the poll looked)."""
        if self.seconds and poll == self._touches:
            self._since = self.clock()
            self._until = self._since + self.seconds
