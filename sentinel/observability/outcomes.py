"""Per-minute counts of API answers by kind, kept in memory until they are written to the database.

The ledger records served requests only; a request refused (401, 429) or failed upstream (502, 504)
leaves no usage record. The console's error rate needs those too, so the request middleware counts
every answer of the API routes here (`record(status)`: a dict lookup and a few increments), and
`sentinel.governance.request_stats.RequestStatsWriter` moves the counts to `request_minutes` /
`request_hours` every few seconds. Counts of up to one flush interval are lost in a crash: these
are statistics, not billing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_PENDING_MINUTES = 180  # while the database is down, keep at most three hours of counts


@dataclass
class Outcomes:
    """Answers of one minute: all, 4xx (429 counted also on its own) and 5xx."""

    requests: int = 0
    client_errors: int = 0
    rate_limited: int = 0
    server_errors: int = 0

    def merge(self, other: Outcomes) -> None:
        self.requests += other.requests
        self.client_errors += other.client_errors
        self.rate_limited += other.rate_limited
        self.server_errors += other.server_errors


class RequestOutcomes:
    """The counter (one per process); `clock` is unix seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._minutes: dict[int, Outcomes] = {}

    def record(self, status: int) -> None:
        """Count one answer with HTTP `status`."""
        minute = int(self.clock()) // 60
        counts = self._minutes.get(minute)
        if counts is None:
            counts = self._minutes[minute] = Outcomes()
        counts.requests += 1
        if status >= 500:
            counts.server_errors += 1
        elif status >= 400:
            counts.client_errors += 1
            if status == 429:
                counts.rate_limited += 1

    def take(self) -> dict[int, Outcomes]:
        """Everything counted so far (by unix minute); the counter starts afresh."""
        taken, self._minutes = self._minutes, {}
        return taken

    def give_back(self, minutes: dict[int, Outcomes]) -> None:
        """Put back counts that could not be written (the oldest are dropped past the cap)."""
        for minute, counts in minutes.items():
            self._minutes.setdefault(minute, Outcomes()).merge(counts)
        if len(self._minutes) > MAX_PENDING_MINUTES:
            for minute in sorted(self._minutes)[: len(self._minutes) - MAX_PENDING_MINUTES]:
                del self._minutes[minute]
