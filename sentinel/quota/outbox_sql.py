"""The SQL usage outbox: the `usage_outbox` table, with group commit for puts and keyed batches.

A row waits with `batch_key` NULL. `claim` runs one transaction: first it takes over a batch
whose lease (`next_attempt_at`) ran out — every row with that key, so the batch is re-sent whole
under the same key — and otherwise gives a new key and a lease to up to `limit` waiting rows.
Each step is a single statement whose WHERE re-checks the lease, so two deliverers racing for
one batch cannot both get it: on PostgreSQL the loser waits for the winner's row locks and then
finds the lease renewed (new rows are picked FOR UPDATE SKIP LOCKED, so claimers of fresh rows
never wait for each other); SQLite runs one writer at a time.

With `idle_recheck` (`sentinel.quiet`), a claim that found nothing due makes the next claims (and
`depth`, while it was 0) answer from memory for that long, unless this process puts a record
meanwhile: the table is written only when a stream or the ledger could not be (or by an earlier
configuration), so it is empty nearly always. What another replica writes there meanwhile is that
replica's to deliver; a batch whose holder died is taken over at most `idle_recheck` later.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta

import orjson
from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import UsageLedgerRow, UsageOutboxRow, utcnow
from sentinel.db.queries import insert_ignoring, picked_once
from sentinel.domain.usage import UsageRecord
from sentinel.quiet import QuietWindow
from sentinel.quota.batch import (
    Batch,
    Claimed,
    decode_record,
    new_batch_key,
    refused_wait,
    split_key,
    started_since,
)
from sentinel.quota.group_commit import GroupCommit

Row = UsageOutboxRow


class SqlOutbox:
    """The outbox table (see the module docstring). `clock` is injectable for lease and quiet-window tests."""

    backend = "sql"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        idle_recheck: float = 0.0,
    ) -> None:
        self._sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.clock = clock
        self.quiet = QuietWindow(idle_recheck, lambda: self.clock().timestamp())
        self._last_depth: int | None = None
        self._group: GroupCommit[UsageRecord] = GroupCommit(self._write)

    async def put(self, record: UsageRecord) -> None:
        self.quiet.touched()
        await self._group.submit(record)

    async def _write(self, records: list[UsageRecord]) -> None:
        rows = [{"request_id": r.request_id, "payload": orjson.dumps(r.to_json()).decode()} for r in records]
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                # executemany with one cached statement (not a fresh multi-VALUES compile per batch)
                await session.execute(insert_ignoring(session, UsageOutboxRow, ["request_id"]), rows)
                await session.commit()

    async def waiting_since(self, start: datetime) -> list[UsageRecord]:
        """The records waiting in the table whose request started at or after `start` and that the
        built-in ledger does not hold yet (no `usage_ledger` row of their request id, checked in the
        same statement), read in pages of 1,000 rows: the usage a seed from the ledger misses
        (`WindowSeeder`). A row that cannot be read is skipped (the deliverer reports it)."""
        waiting: list[UsageRecord] = []
        after = 0
        in_ledger = exists().where(UsageLedgerRow.request_id == Row.request_id)
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                while True:
                    rows = (await session.execute(
                        select(Row.id, Row.payload).where(Row.id > after, ~in_ledger).order_by(Row.id).limit(1000)
                    )).all()
                    waiting += started_since((payload for _, payload in rows), start)
                    if len(rows) < 1000:
                        return waiting
                    after = rows[-1][0]

    async def adopt(self, batch: Batch, retry_in: float) -> None:
        """Store the records of `batch` (a batch another backend held: this process's memory) as one
        batch under its key, whose lease runs out `retry_in` seconds from now: it is then taken over
        whole and sent again under the same key, here or by another process. A request id already
        stored here keeps its row. GovernanceUnavailable when the table cannot be written (nothing was)."""
        self.quiet.touched()
        lease_end = self.clock() + timedelta(seconds=max(retry_in, 0.0))
        rows = [
            {"request_id": c.record.request_id, "payload": orjson.dumps(c.record.to_json()).decode(),
             "batch_key": batch.key, "next_attempt_at": lease_end, "attempts": 1}
            for c in batch.items
        ]
        if not rows:
            return
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                await session.execute(insert_ignoring(session, UsageOutboxRow, ["request_id"]), rows)
                await session.commit()

    async def claim(self, limit: int) -> Batch | None:
        if limit <= 0 or self.quiet.active:
            return None
        now, poll = self.clock(), self.quiet.poll()
        lease_end = now + self.lease
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                # A whole batch is locked row by row in id order, never SKIP LOCKED: skipping would
                # let two takers each lock a part of it (or deadlock on each other's parts). The
                # loser waits for the winner, then finds the lease renewed and takes nothing.
                first_expired = (
                    select(Row.batch_key)
                    .where(Row.batch_key.is_not(None), Row.next_attempt_at <= now)
                    .order_by(Row.id)
                    .limit(1)
                    .scalar_subquery()
                )
                members = picked_once(
                    session,
                    select(Row.id)
                    .where(Row.batch_key == first_expired, Row.next_attempt_at <= now)
                    .order_by(Row.id),
                    "expired",
                    skip_locked=False,
                )
                result = await session.execute(
                    update(Row)
                    .where(Row.id.in_(select(members.c.id)), Row.next_attempt_at <= now)
                    .values(next_attempt_at=lease_end, attempts=Row.attempts + 1)
                    .returning(Row.id, Row.batch_key, Row.payload)
                )
                taken = result.all()
                rows = [(row_id, payload) for row_id, _, payload in taken]
                key = str(taken[0][1]) if taken else new_batch_key()
                if not rows:
                    due = picked_once(
                        session,
                        select(Row.id)
                        .where(
                            Row.batch_key.is_(None),
                            or_(Row.next_attempt_at.is_(None), Row.next_attempt_at <= now),
                        )
                        .order_by(Row.id)
                        .limit(limit),
                        "due",
                        skip_locked=True,  # rows without a batch are independent of each other
                    )
                    fresh = await session.execute(
                        update(Row)
                        .where(Row.id.in_(select(due.c.id)), Row.batch_key.is_(None))
                        .values(batch_key=key, next_attempt_at=lease_end, attempts=Row.attempts + 1)
                        .returning(Row.id, Row.payload)
                    )
                    rows = [(row_id, payload) for row_id, payload in fresh.all()]
                await session.commit()
        if not rows:
            self.quiet.found_nothing(poll)
            return None
        rows.sort()
        decoded = [(i, decode_record(p, f"usage_outbox row {i}")) for i, p in rows]
        items = tuple(Claimed("sql", str(i), record) for i, record in decoded if record is not None)
        if unreadable := [i for i, record in decoded if record is None]:
            with database_errors("usage outbox unavailable"):
                async with self._sessions() as session:
                    await session.execute(delete(Row).where(Row.id.in_(unreadable), Row.batch_key == key))
                    await session.commit()
        return Batch("sql", key, items) if items else None

    async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
        """As `OutboxBackend.renew`: the lease (`next_attempt_at`) ends `hold` seconds from now when
        that is longer, so a takeover after a crash honours the wait too."""
        lease = max(self.lease, timedelta(seconds=max(hold, 0.0)))
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                result = await session.execute(
                    update(Row)
                    .where(Row.batch_key == batch.key)
                    .values(next_attempt_at=self.clock() + lease)
                    .returning(Row.id)
                )
                renewed = len(result.all())
                await session.commit()
        return renewed > 0

    async def split_up(self, batch: Batch) -> Batch:
        apart = Batch(batch.backend, split_key(batch.key), batch.items)
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                await session.execute(
                    update(Row)
                    .where(Row.id.in_([int(c.ref) for c in batch.items]), Row.batch_key == batch.key)
                    .values(batch_key=apart.key, next_attempt_at=self.clock() + self.lease)
                )
                await session.commit()
        return apart

    async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
        accepted, declined = batch.split(refused)
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                if accepted:
                    # Only rows still in this batch: a holder settling late (another took the batch
                    # over and settled it) must not delete a newer record that got a deleted row's
                    # id — SQLite hands the highest deleted id out again, and this table is nearly
                    # always empty.
                    await session.execute(
                        delete(Row).where(Row.id.in_([int(c.ref) for c in accepted]), Row.batch_key == batch.key)
                    )
                if declined:
                    # Each waits by how often it was batched (`attempts`): refused again and again,
                    # longer each time (`refused_wait`). Written first, then read back (RETURNING):
                    # a read first and a write after it, SQLite refuses the write at once when
                    # another connection committed in between.
                    now = self.clock()
                    released = await session.execute(
                        update(Row)
                        .where(Row.id.in_([int(c.ref) for c in declined]), Row.batch_key == batch.key)
                        .values(batch_key=None, next_attempt_at=now + timedelta(seconds=retry_in))
                        .returning(Row.id, Row.attempts)
                    )
                    longer: dict[float, list[int]] = {}
                    for row_id, attempts in released.all():
                        if (wait := refused_wait(retry_in, attempts)) != retry_in:
                            longer.setdefault(wait, []).append(row_id)
                    for wait, ids in longer.items():  # (still this transaction's: nobody claimed them)
                        await session.execute(
                            update(Row)
                            .where(Row.id.in_(ids), Row.batch_key.is_(None))
                            .values(next_attempt_at=now + timedelta(seconds=wait))
                        )
                await session.commit()

    async def depth(self) -> int:
        if self._last_depth == 0 and self.quiet.active:
            return 0
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                self._last_depth = int(await session.scalar(select(func.count()).select_from(Row)) or 0)
        return self._last_depth
