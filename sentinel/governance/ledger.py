"""The built-in usage ledger: one SQL row per request, recorded exactly once.

`request_id` is unique in `usage_ledger`, and rows are written with `INSERT ... ON CONFLICT DO
NOTHING`, so a batch retried after a crash or a timeout never counts a request twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import UsageLedgerRow
from sentinel.db.queries import insert_ignoring
from sentinel.domain.usage import UsageRecord

# 15 bound values a row: 500 rows stay well under SQLite's and PostgreSQL's parameter limits.
_CHUNK_ROWS = 500


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _CHUNK_ROWS):
        yield rows[start : start + _CHUNK_ROWS]


def _row(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "external_id": record.external_id,
        "email": record.email,
        "model": record.model,
        "provider": record.provider,
        "endpoint": record.endpoint,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "usage_source": record.usage_source,
        "status": record.status,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "cost_usd": record.cost_usd,
        "cache_write_tokens": record.cache_write_tokens,
        "cache_read_tokens": record.cache_read_tokens,
    }


class SqlLedger:
    """Usage records in the `usage_ledger` table of the built-in database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record_batch(self, records: list[UsageRecord]) -> int:
        """Insert `records` in one transaction, skipping request ids already recorded.

        Returns how many rows were new. Raises GovernanceUnavailable when the database is down,
        in which case nothing was recorded and the whole batch can be retried safely.
        """
        unique: dict[str, dict[str, Any]] = {}
        for record in records:
            unique.setdefault(record.request_id, _row(record))
        if not unique:
            return 0
        inserted = 0
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                # One cached statement run as executemany (SQLAlchemy batches it as "insertmanyvalues"),
                # not a freshly compiled multi-VALUES statement per batch: compiling dominated the CPU.
                statement = insert_ignoring(session, UsageLedgerRow, ["request_id"]).returning(
                    UsageLedgerRow.request_id
                )
                for chunk in _chunks(list(unique.values())):
                    inserted += len((await session.execute(statement, list(chunk))).all())
                await session.commit()
        return inserted

    async def totals(
        self, external_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Usage of `external_id` grouped by model, for requests finished in [since, until).

        Each item: `{"model", "requests", "input_tokens", "output_tokens"}`; sorted by model,
        requests without a model last.
        """
        query = (
            select(
                UsageLedgerRow.model,
                func.count(),
                func.coalesce(func.sum(UsageLedgerRow.input_tokens), 0),
                func.coalesce(func.sum(UsageLedgerRow.output_tokens), 0),
            )
            .where(UsageLedgerRow.external_id == external_id)
            .group_by(UsageLedgerRow.model)
        )
        if since is not None:
            query = query.where(UsageLedgerRow.finished_at >= since)
        if until is not None:
            query = query.where(UsageLedgerRow.finished_at < until)
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(query)).all()
        totals = [
            # PostgreSQL sums BIGINT as NUMERIC: normalise to int.
            {"model": model, "requests": int(count), "input_tokens": int(inp), "output_tokens": int(out)}
            for model, count, inp, out in rows
        ]
        return sorted(totals, key=lambda item: (item["model"] is None, item["model"] or ""))


class SqlLedgerSink:
    """The built-in ledger as the deliverer's usage sink: exactly-once thanks to the unique request id."""

    name = "builtin"

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        """Record the batch (already-recorded request ids are skipped); refuses nothing one by one."""
        await self.ledger.record_batch(records)
        return []
