"""Where usage records end up: the built-in ledger or Zion (implemented in `sentinel.governance`)."""

from __future__ import annotations

from typing import Protocol

from sentinel.domain.usage import UsageRecord

__all__ = ["UsageSink"]


class UsageSink(Protocol):
    """Where usage ends up. `deliver` raises GovernanceUnavailable when the whole batch should be
    retried (it is, with the same records and key), and returns the request ids of records refused
    one by one (batched again later under a new key)."""

    name: str

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]: ...
