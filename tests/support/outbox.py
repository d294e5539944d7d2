"""Usage records and outbox parts for the quota tests (outbox, deliverer)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.quota.batch import Batch, Claimed, new_batch_key, split_key

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def usage_record(request_id: str, tokens: int = 10, external_id: str = "alice") -> UsageRecord:
    """A complete, measured usage record whose token counts derive from `tokens`."""
    return UsageRecord(
        request_id=request_id, external_id=external_id, email=f"{external_id}@example.com", model="gpt-4o-mini",
        provider="openai", endpoint="chat", input_tokens=tokens, output_tokens=tokens + 1,
        usage_source="measured", status=200, started_at=T0, finished_at=T0 + timedelta(seconds=1), cost_usd=0.25,
    )


class OutboxPart:
    """One backend of a `DurableOutbox` (the `OutboxBackend` interface), in memory, that a test can
    take down.

    `down` makes every operation raise what its backend raises when unreachable (StoreUnavailable
    for `redis`, GovernanceUnavailable for `sql`); `settle_down` fails settling only. Refs are
    request ids. `acked` and `retried` record what was settled as accepted and as refused (with
    its `retry_in`); `expire()` ends every lease, so held batches are claimed again, whole, under
    their keys (what a crash does).
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.error = StoreUnavailable if backend == "redis" else GovernanceUnavailable
        self.down = False
        self.settle_down = False
        self.items: dict[str, UsageRecord] = {}
        self.held: dict[str, Batch] = {}
        self.expired: list[Batch] = []
        self.acked: list[str] = []
        self.retried: list[tuple[str, float]] = []
        self.adopted: list[tuple[str, float]] = []

    def _check(self, down: bool) -> None:
        if down:
            raise self.error(f"{self.backend} unavailable")

    def expire(self) -> None:
        self.expired += self.held.values()
        self.held.clear()

    async def put(self, record: UsageRecord) -> None:
        self._check(self.down)
        self.items[record.request_id] = record

    async def claim(self, limit: int) -> Batch | None:
        self._check(self.down)
        if self.expired:
            batch = self.expired.pop(0)
        else:
            taken = {c.ref for b in self.held.values() for c in b.items}
            free = [(rid, r) for rid, r in self.items.items() if rid not in taken][:limit]
            if not free:
                return None
            batch = Batch(self.backend, new_batch_key(), tuple(Claimed(self.backend, rid, r) for rid, r in free))
        self.held[batch.key] = batch
        return batch

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        self._check(self.down)
        return batch.key in self.held

    async def split_up(self, batch: Batch) -> Batch:
        self._check(self.down)
        apart = Batch(self.backend, split_key(batch.key), batch.items)
        if self.held.pop(batch.key, None) is not None:
            self.held[apart.key] = apart
        return apart

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        self._check(self.down or self.settle_down)
        accepted, declined = batch.split(refused)
        for c in accepted:
            self.acked.append(c.ref)
            self.items.pop(c.ref, None)
        self.retried += [(c.ref, retry_in) for c in declined]
        self.held.pop(batch.key, None)

    async def adopt(self, batch: Batch, retry_in: float) -> None:
        """As `SqlOutbox.adopt`: the batch's records kept under its key, taken over at the next claim
        (its `retry_in` is noted in `adopted`)."""
        self._check(self.down)
        items = tuple(Claimed(self.backend, c.record.request_id, c.record) for c in batch.items)
        for c in items:
            self.items.setdefault(c.ref, c.record)
        self.adopted.append((batch.key, retry_in))
        self.expired.append(Batch(self.backend, batch.key, items))

    async def depth(self) -> int:
        self._check(self.down)
        return len(self.items)

    async def sink_quiet(self, me: str) -> float:
        """As `RedisStreamOutbox.sink_quiet`: no replica here was asked for a wait."""
        self._check(self.down)
        return 0.0

    async def quiet_sink(self, wait: float, me: str) -> None:
        self._check(self.down)
