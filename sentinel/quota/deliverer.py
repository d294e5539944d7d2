"""The background deliverer: moves usage records from the outbox to the governance ledger.

Batches are delivered with retries and exponential backoff (0.5 s doubling to 30 s, with jitter);
records stay in the outbox until the sink accepted them, so a governance outage, a crash or a
restart delays delivery but loses nothing. Each batch carries an idempotency key derived from its
request ids; the built-in ledger is exactly-once by request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Protocol

from sentinel.backoff import Backoff
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, SentinelError, StoreUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.quota.outbox import Claimed, DurableOutbox

log = logging.getLogger("sentinel.deliverer")


class UsageSink(Protocol):
    """Where usage ends up. `deliver` raises GovernanceUnavailable when the whole batch should be
    retried, and returns the request ids of records refused one by one (retried later)."""

    name: str

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]: ...


def idempotency_key(records: list[UsageRecord]) -> str:
    digest = hashlib.sha256("\n".join(sorted(r.request_id for r in records)).encode()).hexdigest()
    return f"sentinel-usage-{digest[:32]}"


class UsageDeliverer:
    """Runs `deliver_once` on an interval (or sooner when records wait) until stopped."""

    def __init__(
        self,
        outbox: DurableOutbox,
        sink: UsageSink,
        metrics: Metrics,
        *,
        interval: float = 0.5,
        batch_size: int = 500,
        backoff: Backoff | None = None,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.metrics = metrics
        self.interval = interval
        self.batch_size = batch_size
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def deliver_once(self) -> int:
        """Deliver one batch; returns how many records were delivered (0 on failure or nothing)."""
        if self.outbox.orphans:
            await self.outbox.rescue_orphans()
        batch: list[Claimed] = await self.outbox.claim(self.batch_size)
        if not batch:
            return 0
        records = [c.record for c in batch]
        try:
            refused = set(await self.sink.deliver(records, idempotency_key(records)))
        except (GovernanceUnavailable, StoreUnavailable) as exc:
            self.failures += 1
            delay = self.backoff.delay(self.failures)
            self.metrics.deliveries.labels("failure").inc()
            log.warning("usage delivery failed; retrying", extra={"error": exc.message, "retry_in_s": round(delay, 2)})
            await self.outbox.retry_later(batch, delay)
            return 0
        self.failures = 0
        if refused:
            self.metrics.deliveries.labels("partial").inc()
            await self.outbox.retry_later([c for c in batch if c.record.request_id in refused], self.backoff.cap)
            batch = [c for c in batch if c.record.request_id not in refused]
        try:
            await self.outbox.ack(batch)
        except SentinelError as exc:
            # Delivered but not acknowledged: it will be delivered again; the ledger deduplicates.
            log.warning("could not acknowledge delivered usage", extra={"error": exc.message})
        self.metrics.deliveries.labels("success").inc()
        self.metrics.delivered_records.inc(len(batch))
        return len(batch)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            delivered = 0
            try:
                delivered = await self.deliver_once()
                self.metrics.outbox_depth.set(await self.outbox.depth())
            except SentinelError as exc:
                log.warning("usage deliverer cycle failed", extra={"error": exc.message})
            except Exception:  # noqa: BLE001 - the loop must survive anything; logged once per cycle
                log.exception("usage deliverer cycle crashed")
            if delivered >= self.batch_size:
                continue
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.ensure_future(self._run())

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop the loop, then deliver what is left (bounded); the rest stays in the outbox."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.drain(), drain_timeout)
        except TimeoutError:
            log.warning("usage outbox not fully drained at shutdown; the rest is delivered after restart")

    async def drain(self) -> None:
        """Deliver batches until nothing deliverable is left (or a delivery fails)."""
        while await self.deliver_once() > 0:
            pass
