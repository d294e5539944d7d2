"""Usage records and outbox parts for the quota tests (outbox, deliverer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.quota.outbox import Claimed

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def usage_record(request_id: str, tokens: int = 10, external_id: str = "alice") -> UsageRecord:
    """A complete, measured usage record whose token counts derive from `tokens`."""
    return UsageRecord(
        request_id=request_id, external_id=external_id, email=f"{external_id}@example.com", model="gpt-4o-mini",
        provider="openai", endpoint="chat", input_tokens=tokens, output_tokens=tokens + 1,
        usage_source="measured", status=200, started_at=T0, finished_at=T0 + timedelta(seconds=1), cost_usd=0.25,
    )


class OutboxPart:
    """One part of a `DurableOutbox` (the Outbox interface), in memory, that a test can take down.

    `down` makes every operation raise what its backend raises when unreachable (StoreUnavailable
    for `redis`, GovernanceUnavailable for `sql`); `ack_down` fails acknowledgements only.
    `acked` and `retried` record what was acknowledged and postponed (with the delay).
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.error = StoreUnavailable if backend == "redis" else GovernanceUnavailable
        self.down = False
        self.ack_down = False
        self.items: dict[str, UsageRecord] = {}
        self.acked: list[str] = []
        self.retried: list[tuple[str, float]] = []

    def _check(self, down: bool) -> None:
        if down:
            raise self.error(f"{self.backend} unavailable")

    async def put(self, record: UsageRecord) -> None:
        self._check(self.down)
        self.items[record.request_id] = record

    async def claim(self, limit: int) -> list[Claimed]:
        self._check(self.down)
        return [Claimed(self.backend, rid, r) for rid, r in list(self.items.items())[:limit]]

    async def ack(self, items: list[Claimed]) -> None:
        self._check(self.down or self.ack_down)
        for c in items:
            if c.backend == self.backend:
                self.acked.append(c.ref)
                self.items.pop(c.ref, None)

    async def retry_later(self, items: list[Claimed], delay: float) -> None:
        self._check(self.down)
        self.retried += [(c.ref, delay) for c in items if c.backend == self.backend]

    async def depth(self) -> int:
        self._check(self.down)
        return len(self.items)
