"""The built-in usage ledger: one SQL row per request, recorded exactly once.

`request_id` is unique in `usage_ledger`, and rows are written with `INSERT ... ON CONFLICT DO
NOTHING`, so a batch retried after a crash or a timeout never counts a request twice. The rollup
worker adds new rows to the rollups (`sentinel.governance.rollups`) later, in batches, marking them
in the same transaction.
"""

from __future__ import annotations

import functools
import logging
import operator
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import UsageLedgerRow, User
from sentinel.db.queries import added_up, insert_ignoring, picked_once, sqlite_upsert_adding, summed
from sentinel.db.sqlite_writer import REFUSED_VALUES, SqliteWriter
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.rollups import TABLES, Rollup, apply_rollups, rollup_columns
from sentinel.quiet import QuietWindow

log = logging.getLogger("sentinel.ledger")

# 15 bound values a row: 500 rows stay well under SQLite's and PostgreSQL's parameter limits.
_CHUNK_ROWS = 500


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _CHUNK_ROWS):
        yield rows[start : start + _CHUNK_ROWS]


# A ledger row's columns: each is the usage record's attribute of that name.
_COLUMNS = (
    "request_id", "external_id", "email", "model", "provider", "endpoint", "input_tokens", "output_tokens",
    "usage_source", "status", "started_at", "finished_at", "cost_usd", "cache_write_tokens", "cache_read_tokens",
)


_values = operator.attrgetter(*_COLUMNS)  # a record's `_COLUMNS`, as a tuple, in one call
_STARTED, _FINISHED = _COLUMNS.index("started_at"), _COLUMNS.index("finished_at")


def _row(record: UsageRecord) -> dict[str, Any]:
    return dict(zip(_COLUMNS, _values(record), strict=True))


def _sqlite_row(record: UsageRecord) -> list[Any]:
    """The `_SQLITE_INSERT` parameters of `record` (its two times as SQLAlchemy stores them)."""
    values = list(_values(record))
    values[_STARTED] = _sqlite_time(values[_STARTED])
    values[_FINISHED] = _sqlite_time(values[_FINISHED])
    return values


_RECORD_COLUMNS = tuple(getattr(UsageLedgerRow, column) for column in _COLUMNS)


def _record(row: Any) -> UsageRecord:
    """A ledger row (the `_RECORD_COLUMNS`) as a usage record."""
    return UsageRecord(*row)


# Only a request id already recorded is skipped (`ON CONFLICT (request_id)`, as on PostgreSQL): `INSERT
# OR IGNORE` skipped a row breaking any constraint (NOT NULL, CHECK) too, without a word, and the
# deliverer settled the record as delivered — lost, where the ledger is to refuse it (`SqlLedgerSink`).
_SQLITE_INSERT = (
    f"INSERT INTO usage_ledger ({', '.join(_COLUMNS)}, rolled_up) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}, 0) ON CONFLICT (request_id) DO NOTHING"
)


# The rollup's claim on SQLite, for the writer's connection: the write lock is the transaction's
# (BEGIN IMMEDIATE), so two processes never claim the same row.
_SQLITE_CLAIM = (
    "UPDATE usage_ledger SET rolled_up = 1 WHERE id IN "
    "(SELECT id FROM usage_ledger WHERE NOT rolled_up ORDER BY id LIMIT ?) "
    "RETURNING external_id, model, provider, status, input_tokens, output_tokens, cost_usd, started_at, finished_at"
)


class _Figures(NamedTuple):
    """What the rollups read of a ledger row claimed on SQLite (see `rollups.Figures`)."""

    external_id: str
    model: str | None
    provider: str | None
    status: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    started_at: datetime
    finished_at: datetime

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> _Figures:
        external_id, model, provider, status, input_tokens, output_tokens, cost, started, finished = row
        return cls(
            external_id, model, provider, status, input_tokens, output_tokens, cost,
            _from_sqlite_time(started), _from_sqlite_time(finished),
        )  # fmt: skip


def _from_sqlite_time(value: str) -> datetime:
    """A time `_sqlite_time` stored (naive UTC) as UTC: read with its offset appended, not made aware
    by `.replace(tzinfo=UTC)` — keyword arguments, ~9,000 instructions a call, two a rolled-up row."""
    try:
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:  # (not a time, or one with an offset: refused, or read, as before)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _roll_up_sqlite(limit: int, connection: sqlite3.Connection) -> int:
    """Claim up to `limit` rows and add them to the rollups, in the caller's transaction."""
    claimed = [_Figures.of(row) for row in connection.execute(_SQLITE_CLAIM, (limit,)).fetchall()]
    if claimed:
        for rows, (table, keys, series) in zip(Rollup.of(claimed).rows(), TABLES, strict=True):
            sql, names = sqlite_upsert_adding(table, keys, rollup_columns(series))
            connection.executemany(sql, [[row[name] for name in names] for row in rows])
    return len(claimed)


def _sqlite_time(value: datetime) -> str:
    """How SQLAlchemy stores a UTC datetime in SQLite (naive UTC, microseconds), in its own format
    (`isoformat`, the offset formatted then cut off, cost ~20 % more; strftime more still)."""
    t = value.astimezone(UTC)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 (cheaper than str.format here)
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond)


class WindowUsage(NamedTuple):
    """What one user's ledger holds of requests started in a window: requests (a request's own row or
    its charges', not the parts recorded beside it, `<request id>#<n>`) and the tokens of all."""

    requests: int
    input_tokens: int
    output_tokens: int

    def of(self, metric: str) -> int:
        """The figure a limit of `metric` counts."""
        return int(getattr(self, metric))

    def plus(self, record: UsageRecord) -> WindowUsage:
        """This usage and `record`'s, counted as `SqlLedger.usage_since` counts a row (a part's record,
        `<request id>#<n>`, is no request of its own)."""
        return WindowUsage(self.requests + ("#" not in record.request_id), self.input_tokens + record.input_tokens,
                           self.output_tokens + record.output_tokens)


class SqlLedger:
    """Usage records in the `usage_ledger` table of the built-in database.

    With `writer` (a file-backed SQLite), inserts go through it: one commit a batch, on the event
    loop while the file is free (see `SqliteWriter`), instead of SQLAlchemy's async round trips;
    reads always go through SQLAlchemy. With `idle_recheck` (`sentinel.quiet`), a `roll_up` that
    found nothing skips the next ones for that long unless this ledger recorded rows meanwhile: rows
    another process recorded are rolled up by that process, or here at most `idle_recheck` later.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], writer: SqliteWriter | None = None, *,
        idle_recheck: float = 0.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._writer = writer
        self.quiet = QuietWindow(idle_recheck, clock)

    async def record_batch(self, records: list[UsageRecord]) -> int:
        """Insert `records` in one transaction, skipping request ids already recorded.

        Returns how many rows were new. Raises GovernanceUnavailable when the database is down,
        in which case nothing was recorded and the whole batch can be retried safely. New rows wait
        for the rollup worker (`roll_up`): recording a request is one insert.
        """
        self.quiet.touched()
        unique: dict[str, UsageRecord] = {}
        for record in records:
            unique.setdefault(record.request_id, record)
        if not unique:
            return 0
        if self._writer is not None:
            return await self._writer.executemany(_SQLITE_INSERT, [_sqlite_row(r) for r in unique.values()])
        inserted = 0
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                # One cached statement run as executemany (SQLAlchemy batches it as "insertmanyvalues"),
                # not a freshly compiled multi-VALUES statement per batch: compiling dominated the CPU.
                statement = insert_ignoring(session, UsageLedgerRow, ["request_id"]).returning(UsageLedgerRow.id)
                for chunk in _chunks([_row(r) for r in unique.values()]):
                    inserted += len((await session.execute(statement, list(chunk))).all())
                await session.commit()
        return inserted

    async def roll_up(self, limit: int = 2000) -> int:
        """Add up to `limit` rows not yet rolled up to the rollups, oldest first, and mark them, in one
        transaction that claims the rows first (each row is rolled up exactly once, also with
        concurrent workers). Returns how many rows were rolled up (0 without asking the database
        while `quiet` is active)."""
        if self.quiet.active:
            return 0
        poll = self.quiet.poll()
        if self._writer is not None:  # the claim, the sums and the upserts in the writer's thread
            count = await self._writer.transact(functools.partial(_roll_up_sqlite, limit))
            if not count:
                self.quiet.found_nothing(poll)
            return count
        Row = UsageLedgerRow
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                pending = picked_once(
                    session, select(Row.id).where(Row.rolled_up.is_(False)).order_by(Row.id).limit(limit),
                    "pending", skip_locked=True,
                )
                result = await session.execute(
                    update(Row).where(Row.id.in_(select(pending.c.id)), Row.rolled_up.is_(False))
                    .values(rolled_up=True).returning(*_RECORD_COLUMNS)
                )
                records = [_record(row) for row in result.all()]
                if records:
                    await apply_rollups(session, records)
                await session.commit()
        if not records:
            self.quiet.found_nothing(poll)
        return len(records)

    async def totals(
        self, external_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Usage of `external_id` grouped by model, for requests finished in [since, until).

        Each item: `{"model", "requests", "input_tokens", "output_tokens"}`; sorted by model,
        requests without a model last.
        """
        rows = await self._grouped(external_id, since, until)
        for row in rows:
            del row["external_id"], row["cost_usd"]
        return rows

    async def totals_by_user(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every user's usage grouped by model for requests finished in [since, until): the items of
        `totals` plus `external_id` and `cost_usd`, sorted by user then model (the same figures as
        `totals`, user by user)."""
        return await self._grouped(None, since, until)

    async def _grouped(
        self, external_id: str | None, since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        row = UsageLedgerRow
        query = select(
            row.external_id,
            row.model,
            func.count(),
            func.coalesce(added_up(row.input_tokens), 0),
            func.coalesce(added_up(row.output_tokens), 0),
            func.coalesce(func.sum(row.cost_usd), 0.0),
        ).group_by(row.external_id, row.model)
        if external_id is not None:
            query = query.where(row.external_id == external_id)
        if since is not None:
            query = query.where(row.finished_at >= since)
        if until is not None:
            query = query.where(row.finished_at < until)
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                found = (await session.execute(query)).all()
        totals = [
            # PostgreSQL sums BIGINT as NUMERIC, SQLite's total() is a float: `summed`.
            {
                "external_id": user, "model": model, "requests": int(count), "input_tokens": summed(inp),
                "output_tokens": summed(out), "cost_usd": round(float(spent or 0.0), 8),
            }
            for user, model, count, inp, out, spent in found
        ]
        return sorted(totals, key=lambda item: (item["external_id"], item["model"] is None, item["model"] or ""))

    async def usage_since(
        self, external_ids: Sequence[str], starts: Sequence[datetime]
    ) -> dict[str, list[WindowUsage]]:
        """Each of `external_ids` with usage in the ledger: its `WindowUsage` since each of `starts`
        (requests started at or after it, in `starts`' order), in one query per 500 users, grouped by
        user (bounded by the `(external_id, finished_at)` index: a request finishes after it starts)."""
        if not external_ids or not starts:
            return {}
        row = UsageLedgerRow
        own = ~row.request_id.contains("#")  # a part's row (`meter.part_id`) is no request of its own
        columns: list[Any] = []
        for start in starts:
            began = row.started_at >= start
            columns += [
                func.coalesce(func.sum(case((and_(began, own), 1), else_=0)), 0),
                func.coalesce(added_up(case((began, row.input_tokens), else_=0)), 0),
                func.coalesce(added_up(case((began, row.output_tokens), else_=0)), 0),
            ]
        earliest = min(starts)
        found: dict[str, list[WindowUsage]] = {}
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                for at in range(0, len(external_ids), _CHUNK_ROWS):
                    chunk = list(external_ids[at : at + _CHUNK_ROWS])
                    query = (
                        select(row.external_id, *columns)
                        .where(row.external_id.in_(chunk), row.finished_at >= earliest, row.started_at >= earliest)
                        .group_by(row.external_id)
                    )
                    for user, *sums in (await session.execute(query)).all():
                        found[user] = [
                            WindowUsage(int(sums[i]), summed(sums[i + 1]), summed(sums[i + 2]))
                            for i in range(0, len(sums), 3)
                        ]
        return found

    async def recorded(self, request_ids: Collection[str]) -> set[str]:
        """Those of `request_ids` the ledger holds a row of, one query per 500."""
        ids = sorted(request_ids)
        found: set[str] = set()
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                for at in range(0, len(ids), _CHUNK_ROWS):
                    query = select(UsageLedgerRow.request_id).where(UsageLedgerRow.request_id.in_(ids[at : at + _CHUNK_ROWS]))
                    found |= set((await session.scalars(query)).all())
        return found

    async def users_since(self, start: datetime) -> dict[str, str | None]:
        """The users with requests started since `start` in the ledger, each with the name of the plan
        assigned to them (None: the default plan — no `users` row, or one naming no plan), in one
        query (bounded by the `finished_at` index)."""
        row = UsageLedgerRow
        query = (
            select(row.external_id, User.plan_name)
            .outerjoin(User, User.external_id == row.external_id)
            .where(row.finished_at >= start, row.started_at >= start)
            .distinct()
        )
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                return {user: plan for user, plan in (await session.execute(query)).all()}

    async def default_plan_users_since(self, start: datetime) -> list[str]:
        """Those of `users_since(start)` on the default plan."""
        return [user for user, plan in (await self.users_since(start)).items() if plan is None]

    async def plans_among(self, external_ids: Collection[str]) -> dict[str, str | None]:
        """Each of `external_ids` with the name of the plan assigned to them (None: the default plan,
        as `users_since`), one query per 500."""
        ids = sorted(external_ids)
        found: dict[str, str | None] = dict.fromkeys(ids)
        with database_errors("usage ledger unavailable"):
            async with self._sessions() as session:
                for at in range(0, len(ids), _CHUNK_ROWS):
                    chunk = ids[at : at + _CHUNK_ROWS]
                    query = select(User.external_id, User.plan_name).where(
                        User.external_id.in_(chunk), User.plan_name.is_not(None))
                    found.update((await session.execute(query)).tuples().all())
        return found

    async def default_plan_users_among(self, external_ids: Collection[str]) -> set[str]:
        """Those of `external_ids` on the default plan (`plans_among`)."""
        return {user for user, plan in (await self.plans_among(external_ids)).items() if plan is None}


class SqlLedgerSink:
    """The built-in ledger as the deliverer's usage sink: exactly-once thanks to the unique request id."""

    name = "builtin"

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        """Record the batch (already-recorded request ids are skipped). When the database refuses it
        for a reason that is no outage (a value it cannot store), each record is tried on its own and
        the ones it still refuses are handed back as refused: one bad record must not keep the
        others out of the ledger (the outbox keeps the refused ones, counted and logged). Every
        record of a batch refused is handed back too, never a failure: a failure keeps the batch
        under its key and the deliverer on it, and two bad records refused together come back
        together (the deliverer pauses after such a batch instead). A statement the database
        cannot run at all (a schema not migrated: `ProgrammingError`) is no record's fault: an
        outage, retried whole."""
        try:
            await self.ledger.record_batch(records)
            return []
        except ProgrammingError as exc:
            raise GovernanceUnavailable(f"the ledger cannot store usage: {type(exc).__name__}") from None
        except (SQLAlchemyError, ValueError, OverflowError, *REFUSED_VALUES) as exc:  # (SqliteWriter: outages as such)
            if len(records) == 1:
                log.error("the ledger refused a usage record", extra={"request_id": records[0].request_id,
                                                                     "error": type(exc).__name__})
                return [records[0].request_id]
        refused: list[str] = []
        for record in records:
            refused += await self.deliver([record], idempotency_key)
        return refused
