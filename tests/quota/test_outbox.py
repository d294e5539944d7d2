"""The durable usage outbox: `SqlOutbox` on SQLite and PostgreSQL (group commit, claim leases,
ack, retry_later), and `DurableOutbox`'s fallback from one part to the next and to memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageOutboxRow
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.quota.outbox import Claimed, DurableOutbox, SqlOutbox
from tests.support.outbox import OutboxPart, usage_record


def record(request_id: str, tokens: int = 10) -> UsageRecord:
    return usage_record(request_id, tokens)


class CountingSessions:
    """The session factory, counting how many sessions (transactions) the outbox opened."""

    def __init__(self, inner: async_sessionmaker[AsyncSession]) -> None:
        self.inner = inner
        self.opened = 0

    def __call__(self) -> AsyncSession:
        self.opened += 1
        return self.inner()


async def expire_leases(sessions: async_sessionmaker[AsyncSession]) -> None:
    """What time does to a lease: every row's next attempt is now due."""
    async with sessions() as session:
        await session.execute(update(UsageOutboxRow).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
        await session.commit()


# --- SqlOutbox -------------------------------------------------------------------------------------

async def test_a_record_comes_back_as_it_went_in(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions)
    await outbox.put(record("r1"))
    await outbox.put(record("r2", tokens=20))
    claimed = await outbox.claim(10)
    assert [c.record for c in claimed] == [record("r1"), record("r2", tokens=20)]
    assert all(c.backend == "sql" for c in claimed) and len({c.ref for c in claimed}) == 2
    assert await outbox.depth() == 2  # claimed is not delivered: rows stay until acknowledged


async def test_concurrent_puts_are_group_committed(sessions: async_sessionmaker[AsyncSession]) -> None:
    counting = CountingSessions(sessions)
    outbox = SqlOutbox(counting)  # type: ignore[arg-type]
    await asyncio.gather(*(outbox.put(record(f"r{i}")) for i in range(50)))
    assert counting.opened <= 2  # one transaction for everything that arrived meanwhile, not 50
    assert await outbox.depth() == 50
    counting.opened = 0
    await outbox.put(record("alone"))
    assert counting.opened == 1


async def test_a_request_id_is_stored_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions)
    await outbox.put(record("same"))
    await outbox.put(record("same", tokens=99))
    assert [c.record.input_tokens for c in await outbox.claim(10)] == [10]


async def test_a_claim_takes_a_lease_until_it_runs_out(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions, lease_seconds=30)
    for i in range(3):
        await outbox.put(record(f"r{i}"))
    first = await outbox.claim(2)
    assert [c.record.request_id for c in first] == ["r0", "r1"]
    assert [c.record.request_id for c in await outbox.claim(10)] == ["r2"]
    assert await outbox.claim(10) == []  # everything is leased
    await expire_leases(sessions)  # a crashed deliverer's lease ran out
    again = await outbox.claim(10)
    assert [c.record.request_id for c in again] == ["r0", "r1", "r2"]
    async with sessions() as session:
        attempts = (await session.execute(select(UsageOutboxRow.attempts).order_by(UsageOutboxRow.id))).scalars()
        assert list(attempts) == [2, 2, 2]


async def test_concurrent_claimers_never_share_a_row(sessions: async_sessionmaker[AsyncSession]) -> None:
    writer = SqlOutbox(sessions)
    await asyncio.gather(*(writer.put(record(f"r{i}")) for i in range(40)))
    a, b = SqlOutbox(sessions), SqlOutbox(sessions)
    claims = await asyncio.gather(a.claim(25), b.claim(25), a.claim(25), b.claim(25))
    ids = [c.record.request_id for batch in claims for c in batch]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))


async def test_ack_deletes_only_what_was_delivered(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions)
    for i in range(3):
        await outbox.put(record(f"r{i}"))
    claimed = await outbox.claim(10)
    foreign = Claimed("redis", "1-0", record("elsewhere"))
    await outbox.ack([claimed[0], claimed[2], foreign])
    assert await outbox.depth() == 1
    await expire_leases(sessions)
    assert [c.record.request_id for c in await outbox.claim(10)] == ["r1"]
    await outbox.ack([])  # nothing to do, no error


async def test_retry_later_postpones_by_the_delay(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions, lease_seconds=0)
    await outbox.put(record("late"))
    await outbox.put(record("soon"))
    late, soon = await outbox.claim(10)
    await outbox.retry_later([late], 3600)
    await outbox.retry_later([soon], 0)
    assert [c.record.request_id for c in await outbox.claim(10)] == ["soon"]


async def test_an_unreachable_database_fails_every_waiting_put(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/sentinel.db")
    try:
        outbox = SqlOutbox(session_factory(engine))
        results = await asyncio.gather(*(outbox.put(record(f"r{i}")) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, GovernanceUnavailable) for r in results), results
        with pytest.raises(GovernanceUnavailable):
            await outbox.claim(10)
    finally:
        await engine.dispose()


# --- DurableOutbox -------------------------------------------------------------------------------

def durable() -> tuple[DurableOutbox, OutboxPart, OutboxPart]:
    redis, sql = OutboxPart("redis"), OutboxPart("sql")
    return DurableOutbox(sql, redis), redis, sql  # type: ignore[arg-type]


async def test_records_go_to_redis_first_then_to_the_database_when_redis_is_down() -> None:
    outbox, redis, sql = durable()
    await outbox.put(record("r1"))
    redis.down = True
    await outbox.put(record("r2"))
    assert (list(redis.items), list(sql.items)) == (["r1"], ["r2"])
    assert outbox.orphans == []


async def test_records_stored_nowhere_are_kept_and_rescued(caplog: pytest.LogCaptureFixture) -> None:
    outbox, redis, sql = durable()
    redis.down = sql.down = True
    await outbox.put(record("r1"))
    await outbox.put(record("r2"))
    assert [r.request_id for r in outbox.orphans] == ["r1", "r2"]
    assert await outbox.depth() == 2  # orphans count as waiting
    assert [getattr(r, "record_id", None) for r in caplog.records if r.levelname == "ERROR"] == ["r1", "r2"]
    await outbox.rescue_orphans()  # still nowhere to go: kept
    assert len(outbox.orphans) == 2
    sql.down = False
    await outbox.rescue_orphans()
    assert outbox.orphans == [] and list(sql.items) == ["r1", "r2"]


async def test_claims_fill_up_from_every_reachable_part() -> None:
    outbox, redis, sql = durable()
    for i in range(3):
        await outbox.put(record(f"a{i}"))
    redis.down = True
    for i in range(3):
        await outbox.put(record(f"b{i}"))
    assert [c.record.request_id for c in await outbox.claim(10)] == ["b0", "b1", "b2"]  # redis down: skipped
    redis.down = False
    claimed = await outbox.claim(4)
    assert [(c.backend, c.record.request_id) for c in claimed] == [
        ("redis", "a0"), ("redis", "a1"), ("redis", "a2"), ("sql", "b0")
    ]
    await outbox.ack(claimed)
    assert (redis.acked, sql.acked) == (["a0", "a1", "a2"], ["b0"])
    assert await outbox.depth() == 2


async def test_retry_later_and_depth_tolerate_a_part_that_is_down() -> None:
    outbox, redis, sql = durable()
    await outbox.put(record("r1"))
    claimed: list[Any] = await outbox.claim(10)
    sql.down = True
    await outbox.retry_later(claimed, 5.0)
    assert redis.retried == [("r1", 5.0)]
    assert await outbox.depth() == 1
