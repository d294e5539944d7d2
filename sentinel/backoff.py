"""Exponential backoff with jitter: one policy for every retry loop (Zion calls, usage delivery)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Before retry n (1-based) wait `min(cap, base * 2**(n-1))`, the upper half of it jittered.

    `attempts` is how many tries a bounded retry loop makes in all (unbounded loops ignore it).
    """

    base: float = 0.1
    cap: float = 2.0
    attempts: int = 3

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry `retry` (1-based)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(1, retry) - 1, 64))  # 2.0**1024 overflows
        return ceiling / 2 + random.uniform(0, ceiling / 2)
