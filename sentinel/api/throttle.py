"""Failed authentications are rate-limited per client address, before any identity lookup.

A flood of made-up bearer tokens would otherwise cost one database or governance lookup each. An
address with `limit` failed authentications in the current minute gets 429 `auth_rate_limited`
for every request until that minute ends, without a lookup. Counted in this process (each replica
counts its own: N replicas admit up to N x `limit` failures a minute); the address is the socket
peer's (behind a proxy, the proxy's address).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sentinel.errors import RateLimited

_MAX_ADDRESSES = 100_000


class FailedAuthThrottle:
    """Per-address counts of failed authentications over fixed one-minute windows."""

    def __init__(self, limit: int, *, window: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._counts: dict[str, tuple[int, int]] = {}  # address -> (window index, failures)

    def check(self, address: str | None) -> None:
        """RateLimited (429) when `address` already failed `limit` times in this window."""
        if address is None:
            return
        index = math.floor(self.clock() / self.window)
        seen = self._counts.get(address)
        if seen is not None and seen[0] == index and seen[1] >= self.limit:
            retry = (index + 1) * self.window - self.clock()
            raise RateLimited(
                "Too many failed authentications from this address; retry later",
                code="auth_rate_limited", retry_after=retry,
            )

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from `address`."""
        if address is None:
            return
        index = math.floor(self.clock() / self.window)
        seen = self._counts.get(address)
        count = seen[1] + 1 if seen is not None and seen[0] == index else 1
        if len(self._counts) >= _MAX_ADDRESSES and address not in self._counts:
            self._counts = {a: c for a, c in self._counts.items() if c[0] == index}
            if len(self._counts) >= _MAX_ADDRESSES:
                self._counts.clear()
        self._counts[address] = (index, count)
