"""The ledger's rollups: per minute (with a latency histogram), per day by user and by model.

The console's pages read these instead of scanning the ledger, so they stay fast with millions of
rows. `SqlLedger.record_batch` calls `apply_rollups` in the transaction that inserts the rows, for
the rows that were new only: the rollups hold exactly what the ledger holds, also when a batch is
delivered twice. Rows are upserted in key order (`INSERT ... ON CONFLICT DO UPDATE SET n = n + new`),
so two writers never wait on each other's locks in opposite orders.

A request's latency is `finished_at - started_at`: from its admission (after authentication and
the body) until its usage record was written (a stream's end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.db.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_COLUMNS,
    UsageDailyModelRow,
    UsageDailyUserRow,
    UsageMinuteRow,
)
from sentinel.db.queries import upsert_adding
from sentinel.domain.usage import UsageRecord

MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")


def latency_bucket(ms: int) -> int:
    """The histogram column index for a request that took `ms` milliseconds."""
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS)


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


@dataclass
class Totals:
    """Summed measures of some requests."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        self.errors += 1 if record.status >= 400 else 0
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cost_usd += record.cost_usd or 0.0

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MEASURES}


@dataclass
class MinuteTotals(Totals):
    """Totals plus the latency sum and histogram."""

    latency_ms_sum: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * len(LATENCY_COLUMNS))

    def add(self, record: UsageRecord) -> None:
        super().add(record)
        ms = max(0, int((record.finished_at - record.started_at).total_seconds() * 1000))
        self.latency_ms_sum += ms
        self.histogram[latency_bucket(ms)] += 1

    def values(self) -> dict[str, Any]:
        return {**super().values(), "latency_ms_sum": self.latency_ms_sum, **dict(zip(LATENCY_COLUMNS, self.histogram, strict=True))}


@dataclass
class Rollup:
    """One batch of records, summed per minute, per (day, user) and per (day, model, provider)."""

    minutes: dict[int, MinuteTotals] = field(default_factory=dict)
    users: dict[tuple[int, str], Totals] = field(default_factory=dict)
    models: dict[tuple[int, str, str], Totals] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[UsageRecord]) -> Rollup:
        rollup = cls()
        for record in records:
            seconds = int(record.finished_at.timestamp())
            day = seconds // 86400
            rollup.minutes.setdefault(seconds // 60, MinuteTotals()).add(record)
            rollup.users.setdefault((day, record.external_id), Totals()).add(record)
            rollup.models.setdefault((day, record.model or "", record.provider or ""), Totals()).add(record)
        return rollup


async def apply_rollups(session: AsyncSession, records: Sequence[UsageRecord]) -> None:
    """Add `records` (rows just inserted into the ledger) to the rollups; does not commit."""
    if not records:
        return
    rollup = Rollup.of(records)
    minutes = [{"minute": k, **v.values()} for k, v in sorted(rollup.minutes.items())]
    users = [{"day": d, "external_id": u, **v.values()} for (d, u), v in sorted(rollup.users.items())]
    models = [{"day": d, "model": m, "provider": p, **v.values()} for (d, m, p), v in sorted(rollup.models.items())]
    minute_columns = [*MEASURES, "latency_ms_sum", *LATENCY_COLUMNS]
    await upsert_adding(session, UsageMinuteRow, ["minute"], minute_columns, minutes)
    await upsert_adding(session, UsageDailyUserRow, ["day", "external_id"], MEASURES, users)
    await upsert_adding(session, UsageDailyModelRow, ["day", "model", "provider"], MEASURES, models)
