"""The in-process quota limiter for QUOTA_FAILURE_MODE=local (Redis is down).

Same semantics and code as `QuotaLimiter`, over a private `MemoryStore`. Each replica then
enforces the plan on its own, so N replicas admit up to N times a limit between them while Redis
is away; a reservation must be settled by the limiter that made it (the limiter checks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sentinel.quota.limiter import QuotaLimiter
from sentinel.store.memory import MemoryStore


class LocalLimiter(QuotaLimiter):
    """A `QuotaLimiter` whose counters live in this process only."""

    def __init__(
        self,
        *,
        prefix: str = "sentinel:quota",
        clock: Callable[[], float] = time.time,
        ttl_margin: float = 60.0,
    ) -> None:
        # The store's clock drives only key expiry (TTLs are relative); windows follow `clock`.
        super().__init__(MemoryStore(), prefix=prefix, clock=clock, ttl_margin=ttl_margin)
