"""Exponential backoff with jitter, shared by every retry loop (Zion calls, usage delivery)."""

from __future__ import annotations

import random


def jittered_delay(base: float, cap: float, attempt: int) -> float:
    """Before retry `attempt` (1-based): `min(cap, base * 2**(attempt-1))`, half of it jittered."""
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
