"""Read-side queries over the ledger and its rollups, for the operator console and admin API.

Every query is bounded by an index: the per-minute rollup by its key, the per-day rollups by
their leading `day`, and the ledger by `finished_at` (range lists) or `(external_id, finished_at)`
(one user's recent requests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, desc, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import (
    LATENCY_COLUMNS,
    UsageDailyModelRow,
    UsageDailyUserRow,
    UsageHourlyModelRow,
    UsageHourlyUserRow,
    UsageHourRow,
    UsageLedgerRow,
    UsageMinuteRow,
)
from sentinel.db.queries import added_up, summed
from sentinel.domain.usage import latency_ms
from sentinel.governance.rollups import MEASURES

UNAVAILABLE = "usage statistics unavailable"


@dataclass(frozen=True)
class Bucket:
    """Summed measures of one time bucket (index from the start of the range) with its latency histogram."""

    index: int
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms_sum: int
    histogram: tuple[int, ...]


@dataclass(frozen=True)
class Ranked:
    """One user's or one model's summed usage over a period."""

    name: str
    provider: str | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded request, as a user's page lists it."""

    request_id: str
    model: str | None
    provider: str | None
    endpoint: str
    status: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    started_at: datetime
    finished_at: datetime

    @property
    def latency_ms(self) -> int:
        return latency_ms(self.started_at, self.finished_at)


def _sums(table: Any) -> list[ColumnElement[Any]]:
    return [func.coalesce(added_up(getattr(table, name)), 0) for name in MEASURES]


def _ranked(name: str, provider: str | None, values: Any) -> Ranked:
    requests, errors, inp, out, cost = values
    return Ranked(name, provider, summed(requests), summed(errors), summed(inp), summed(out), float(cost))


class UsageStats:
    """Queries over `usage_minutes`, `usage_daily_*` and `usage_ledger` (see the module docstring)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _all(self, query: Any) -> list[Any]:
        with database_errors(UNAVAILABLE):
            async with self._sessions() as session:
                return list((await session.execute(query)).all())

    async def series(self, start_minute: int, end_minute: int, step_minutes: int) -> list[Bucket]:
        """Buckets of `step_minutes` over minutes [start_minute, end_minute) (unix minutes), only
        those with requests, in order. Whole hours are read from the per-hour rollup."""
        table: Any = UsageMinuteRow
        key, start, end, step = UsageMinuteRow.minute, start_minute, end_minute, step_minutes
        if step_minutes % 60 == 0 and start_minute % 60 == 0 and end_minute % 60 == 0:
            table, key, start, end, step = UsageHourRow, UsageHourRow.hour, start // 60, end // 60, step // 60
        index = ((key - start) // step).label("bucket")
        histogram = [func.coalesce(added_up(getattr(table, name)), 0) for name in LATENCY_COLUMNS]
        query = (
            select(index, *_sums(table), func.coalesce(added_up(table.latency_ms_sum), 0), *histogram)
            .where(key >= start, key < end)
            .group_by(index)
            .order_by(index)
        )
        return [
            Bucket(int(r[0]), summed(r[1]), summed(r[2]), summed(r[3]), summed(r[4]), float(r[5]), summed(r[6]),
                   tuple(summed(v) for v in r[7:]))
            for r in await self._all(query)
        ]

    async def top_users(self, *, since: datetime | None = None, first_hour: int | None = None,
                        first_day: int | None = None, limit: int = 10) -> list[Ranked]:
        """The users with most requests since `since` (from the ledger), since unix hour `first_hour`
        (per-hour rollup) or since UTC day `first_day` (per-day rollup): give one of the three."""
        table: Any
        if first_day is not None or first_hour is not None:
            table = UsageDailyUserRow if first_day is not None else UsageHourlyUserRow
            bound = table.day >= first_day if first_day is not None else table.hour >= first_hour
            query = select(table.external_id, *_sums(table)).where(bound)
        else:
            table = UsageLedgerRow
            query = select(table.external_id, *self._ledger_sums()).where(table.finished_at >= since)
        count = query.selected_columns[1]
        query = query.group_by(table.external_id).order_by(desc(count), table.external_id).limit(limit)
        return [_ranked(r[0], None, r[1:]) for r in await self._all(query)]

    async def top_models(self, *, since: datetime | None = None, first_hour: int | None = None,
                         first_day: int | None = None, limit: int = 10) -> list[Ranked]:
        """The models with most requests (see `top_users`); requests without a model are `''`."""
        table: Any
        if first_day is not None or first_hour is not None:
            table = UsageDailyModelRow if first_day is not None else UsageHourlyModelRow
            bound = table.day >= first_day if first_day is not None else table.hour >= first_hour
            query = select(table.model, table.provider, *_sums(table)).where(bound)
            query = query.group_by(table.model, table.provider)
        else:
            table = UsageLedgerRow
            model, provider = func.coalesce(table.model, ""), func.coalesce(table.provider, "")
            query = select(model, provider, *self._ledger_sums()).where(table.finished_at >= since)
            query = query.group_by(model, provider)
        count = query.selected_columns[2]
        query = query.order_by(desc(count), query.selected_columns[0]).limit(limit)
        return [_ranked(r[0], r[1] or None, r[2:]) for r in await self._all(query)]

    async def user_totals(self, external_id: str, first_day: int) -> Ranked:
        """One user's totals since UTC day `first_day` (per-day rollup, by its (external_id, day) index)."""
        table = UsageDailyUserRow
        query = select(*_sums(table)).where(table.external_id == external_id, table.day >= first_day)
        return _ranked(external_id, None, (await self._all(query))[0])

    @staticmethod
    def _ledger_sums() -> list[ColumnElement[Any]]:
        row = UsageLedgerRow
        return [
            func.count(),
            func.coalesce(func.sum(case((row.status >= 400, 1), else_=0)), 0),
            func.coalesce(added_up(row.input_tokens), 0),
            func.coalesce(added_up(row.output_tokens), 0),
            func.coalesce(func.sum(row.cost_usd), 0.0),
        ]

    async def recent_requests(self, external_id: str, limit: int = 20) -> list[LedgerEntry]:
        """The user's last `limit` recorded requests, newest first."""
        row = UsageLedgerRow
        query = (
            select(row.request_id, row.model, row.provider, row.endpoint, row.status, row.input_tokens,
                   row.output_tokens, row.cost_usd, row.started_at, row.finished_at)
            .where(row.external_id == external_id)
            .order_by(row.finished_at.desc())
            .limit(limit)
        )
        return [LedgerEntry(*r) for r in await self._all(query)]
