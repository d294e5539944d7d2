"""The ledger's rollups: per minute and per hour (with latency histograms), per hour and per day by
user and by model.

The console's pages read these instead of scanning the ledger, so they stay fast with millions of
rows. Recording a request is one insert; `RollupWorker` adds new ledger rows to the rollups in
batches, in id order, marking them in the same transaction (`SqlLedger.roll_up`): the rollups hold
exactly what the ledger holds, at most one interval later. Rows are upserted in key order (`INSERT ... ON CONFLICT DO UPDATE SET n = n + new`),
so two writers never wait on each other's locks in opposite orders.

A request's latency is `finished_at - started_at`: from its admission (after authentication and
the body) until its usage record was written (a stream's end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.backoff import Backoff
from sentinel.db.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_COLUMNS,
    Base,
    UsageDailyModelRow,
    UsageDailyUserRow,
    UsageHourlyModelRow,
    UsageHourlyUserRow,
    UsageHourRow,
    UsageMinuteRow,
)
from sentinel.db.queries import upsert_adding
from sentinel.domain.usage import latency_ms
from sentinel.errors import GovernanceUnavailable
from sentinel.observability.logging import Repeated
from sentinel.periodic import Next, Periodic

log = logging.getLogger("sentinel.rollups")
DELAYED = "rollups delayed: %s"

MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")
STOP_TIMEOUT = 5.0  # at shutdown, how long the roll-up under way and the catching up may take


def latency_bucket(ms: int) -> int:
    """The histogram column index for a request that took `ms` milliseconds."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)  # the first bound >= ms; past the last: the open bucket


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The `q`-quantile (0..1) in ms estimated from histogram counts (linear within a bucket);
    None for an empty histogram. The open last bucket reports its lower bound."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = 0 if index == 0 else LATENCY_BOUNDS_MS[index - 1]
            if index >= len(LATENCY_BOUNDS_MS):
                return float(low)
            high = LATENCY_BOUNDS_MS[index]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])  # pragma: no cover - the loop always returns


class Figures(Protocol):
    """What a rollup reads of a ledger row (a `UsageRecord` has it all)."""

    @property
    def external_id(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime: ...


@dataclass
class Totals:
    """Summed measures of some requests."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def merge(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MEASURES}


@dataclass
class SeriesTotals(Totals):
    """Totals plus the latency sum and histogram (the per-minute and per-hour rollups)."""

    latency_ms_sum: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * len(LATENCY_COLUMNS))

    def add(self, record: Figures) -> None:
        """Count one request."""
        self.requests += 1
        self.errors += 1 if record.status >= 400 else 0
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cost_usd += record.cost_usd or 0.0
        ms = latency_ms(record.started_at, record.finished_at)
        self.latency_ms_sum += ms
        self.histogram[latency_bucket(ms)] += 1

    def merge(self, other: Totals) -> None:
        super().merge(other)
        if isinstance(other, SeriesTotals):
            self.latency_ms_sum += other.latency_ms_sum
            self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]

    def values(self) -> dict[str, Any]:
        histogram = dict(zip(LATENCY_COLUMNS, self.histogram, strict=True))
        return {**super().values(), "latency_ms_sum": self.latency_ms_sum, **histogram}


# table, its key columns, whether it keeps latencies
TABLES: tuple[tuple[type[Base], tuple[str, ...], bool], ...] = (
    (UsageMinuteRow, ("minute",), True),
    (UsageHourRow, ("hour",), True),
    (UsageHourlyUserRow, ("hour", "external_id"), False),
    (UsageHourlyModelRow, ("hour", "model", "provider"), False),
    (UsageDailyUserRow, ("day", "external_id"), False),
    (UsageDailyModelRow, ("day", "model", "provider"), False),
)


def rollup_columns(series: bool) -> tuple[str, ...]:
    """The summed columns of a rollup table (those of a series table keep latencies too)."""
    return (*MEASURES, "latency_ms_sum", *LATENCY_COLUMNS) if series else MEASURES


@dataclass
class Rollup:
    """Records summed per key of every rollup table (see TABLES).

    Each record is counted once, under its (minute, user, model, provider); those sums are then
    added to every table's key (minutes make hours and days): a batch's records share a few such
    keys, so each table costs per key, not per record."""

    groups: list[dict[tuple[Any, ...], Totals]] = field(default_factory=lambda: [{} for _ in TABLES])

    @classmethod
    def of(cls, records: Iterable[Figures]) -> Rollup:
        fine: dict[tuple[int, str, str, str], SeriesTotals] = {}
        for record in records:
            key = (
                int(record.finished_at.timestamp()) // 60, record.external_id, record.model or "",
                record.provider or "",
            )  # fmt: skip
            totals = fine.get(key)
            if totals is None:
                totals = fine[key] = SeriesTotals()
            totals.add(record)
        rollup = cls()
        for key, totals in fine.items():
            rollup._merge(key, totals)
        return rollup

    def add(self, record: Figures) -> None:
        """Count one record under each table's key."""
        self.merge(Rollup.of([record]))

    def merge(self, other: Rollup) -> None:
        """Add another rollup's sums to this one."""
        for group, theirs, (_, _, series) in zip(self.groups, other.groups, TABLES, strict=True):
            for key, totals in theirs.items():
                self._into(group, key, series).merge(totals)

    def _merge(self, fine: tuple[int, str, str, str], totals: SeriesTotals) -> None:
        minute, external_id, model, provider = fine
        hour, day = minute // 60, minute // 1440
        keys = ((minute,), (hour,), (hour, external_id), (hour, model, provider), (day, external_id),
                (day, model, provider))  # fmt: skip
        for group, key, (_, _, series) in zip(self.groups, keys, TABLES, strict=True):
            self._into(group, key, series).merge(totals)

    @staticmethod
    def _into(group: dict[tuple[Any, ...], Totals], key: tuple[Any, ...], series: bool) -> Totals:
        totals = group.get(key)
        if totals is None:
            totals = group[key] = SeriesTotals() if series else Totals()
        return totals

    def rows(self) -> list[list[dict[str, Any]]]:
        """Per table (in TABLES order), the rows to add, in key order."""
        return [
            [{**dict(zip(names, key, strict=True)), **totals.values()} for key, totals in sorted(group.items())]
            for group, (_, names, _) in zip(self.groups, TABLES, strict=True)
        ]


async def apply_rollups(session: AsyncSession, records: Sequence[Figures]) -> None:
    """Add `records` (rows just inserted into the ledger) to the rollups; does not commit."""
    if not records:
        return
    for rows, (table, keys, series) in zip(Rollup.of(records).rows(), TABLES, strict=True):
        await upsert_adding(session, table, keys, rollup_columns(series), rows)


class RollupWorker:
    """Rolls new ledger rows up every `interval` seconds (sooner while a backlog remains) until stopped.

    A database outage is retried after `interval`, and logged when first met and then at most once a
    minute (`Repeated`: at one attempt a second it was a warning a second); any other failure (a bug, a row the roll-up cannot
    take) is logged with its traceback and retried after `backoff` (doubling from `interval` to a
    minute): before, it ended the loop for good and the console's roll-ups stayed stale until restart.
    """

    def __init__(
        self, roll_up: Callable[[int], Awaitable[int]], *, interval: float = 1.0, batch: int = 2000,
        backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roll_up = roll_up
        self.interval = interval
        self.batch = batch
        self.backoff = backoff or Backoff(base=interval, cap=60.0)
        self.failures = 0  # unexpected failures in a row
        self._repeated = Repeated(log, clock=clock)
        self._loop = Periodic(self._round, interval=interval, backoff=self.backoff, log=log, crashed="rollups crashed")

    async def run_once(self) -> int:
        """Roll up one batch; how many rows it took (0 when nothing waits or it failed)."""
        try:
            taken = await self.roll_up(self.batch)
        except GovernanceUnavailable as exc:
            self._repeated.warning(DELAYED, exc.message)
            return 0
        except Exception:  # noqa: BLE001 - the loop must outlive anything; logged, backed off
            self.failures += 1
            log.exception("rollups failed; retrying", extra={"failures": self.failures})
            return 0
        self.failures = 0
        if (suppressed := self._repeated.forget(DELAYED)) is not None:
            log.info("rollups resumed", extra={"suppressed": suppressed} if suppressed else None)
        return taken

    async def _round(self) -> int | Next:
        """One round of the loop (`Periodic`): the next at once while a whole batch was taken (a
        backlog remains), else after `interval`, or `backoff`'s delay after unexpected failures."""
        if await self.run_once() >= self.batch:
            return Next.NOW
        return self.failures

    def start(self) -> None:
        self._loop.start()

    async def stop(self, drain_timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop, then roll up what is waiting. `drain_timeout` bounds both: a roll-up still waiting
        on the database then is cut short (its transaction is not committed: its rows are rolled up
        after the next start), so whatever closes after the worker gets its turn before the process
        is killed. The rollups lag the ledger meanwhile; nothing is lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        if self._loop.running:
            if not await self._loop.stop(drain_timeout):
                log.warning("a roll-up was still under way at shutdown; cut short, its rows are rolled up "
                            "after the next start")
                return
        try:
            await asyncio.wait_for(self._catch_up(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            log.warning("rollups not caught up at shutdown; the rest is rolled up after the next start")

    async def _catch_up(self) -> None:
        while await self.run_once() >= self.batch:
            pass
