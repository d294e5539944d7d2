"""The durable usage outbox: `SqlOutbox` on SQLite and PostgreSQL (group commit, batches under
leases, settling), and `DurableOutbox`'s fallback from one part to the next and to memory.
(Batch identity across retries, takeovers and races: test_outbox_batches.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageOutboxRow
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.ledger import SqlLedger
from sentinel.quota.batch import REFUSED_RETRY_CAP, Batch, Claimed, is_batch_key, refused_wait
from sentinel.quota.outbox import DurableOutbox, SqlOutbox
from tests.support.outbox import T0, OutboxPart, usage_record


def record(request_id: str, tokens: int = 10) -> UsageRecord:
    return usage_record(request_id, tokens)


def ids(batch: Batch | None) -> list[str]:
    return [] if batch is None else [c.record.request_id for c in batch.items]


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
    batch = await outbox.claim(10)
    assert batch is not None and batch.records == [record("r1"), record("r2", tokens=20)]
    assert batch.backend == "sql" and is_batch_key(batch.key)
    assert all(c.backend == "sql" for c in batch.items) and len({c.ref for c in batch.items}) == 2
    assert await outbox.depth() == 2  # claimed is not delivered: rows stay until settled


async def test_waiting_since_reads_what_the_ledger_does_not_hold_yet(sessions: async_sessionmaker[AsyncSession]) -> None:
    """What a window's seed adds to the ledger's figures (`WindowSeeder`): records of requests started
    since a time, but those whose request id the ledger holds already (delivered, row not deleted)."""
    outbox = SqlOutbox(sessions)
    early = dataclasses.replace(record("early"), started_at=T0 - timedelta(hours=2))
    for waiting in (record("r1"), record("r2"), early):
        await outbox.put(waiting)
    await SqlLedger(sessions).record_batch([record("r2")])
    assert [r.request_id for r in await outbox.waiting_since(T0 - timedelta(hours=1))] == ["r1"]
    assert sorted(r.request_id for r in await outbox.waiting_since(T0 - timedelta(days=1))) == ["early", "r1"]


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
    batch = await outbox.claim(10)
    assert batch is not None and [r.input_tokens for r in batch.records] == [10]


async def test_a_claim_takes_a_lease_until_it_runs_out(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions, lease_seconds=30)
    for i in range(3):
        await outbox.put(record(f"r{i}"))
    first = await outbox.claim(2)
    second = await outbox.claim(10)
    assert (ids(first), ids(second)) == (["r0", "r1"], ["r2"])
    assert await outbox.claim(10) is None  # everything is leased
    await expire_leases(sessions)  # a crashed deliverer's leases ran out
    again, again2 = await outbox.claim(10), await outbox.claim(10)
    # Each batch comes back whole, under its own key, one per claim.
    assert first is not None and second is not None and again is not None and again2 is not None
    assert {(b.key, tuple(ids(b))) for b in (again, again2)} == {
        (first.key, ("r0", "r1")), (second.key, ("r2",))
    }
    async with sessions() as session:
        attempts = (await session.execute(select(UsageOutboxRow.attempts).order_by(UsageOutboxRow.id))).scalars()
        assert list(attempts) == [2, 2, 2]


async def test_an_adopted_batch_is_taken_over_whole_under_its_key_once_its_retry_is_due(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A batch another backend held (memory) is stored under its key, due `retry_in` from now: it is
    then claimed whole under that key, never batched afresh; a request id already here keeps its row."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    outbox = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    await outbox.put(record("r0", tokens=7))  # already here, waiting
    held = Batch("memory", "sentinel-usage-" + "a" * 32, tuple(
        Claimed("memory", rid, record(rid)) for rid in ("r0", "r1", "r2")
    ))
    await outbox.adopt(held, retry_in=5)
    fresh = await outbox.claim(10)
    assert ids(fresh) == ["r0"] and fresh is not None and fresh.records[0].input_tokens == 7
    assert await outbox.claim(10) is None  # the adopted batch waits for its retry
    now[0] += timedelta(seconds=5)
    taken = await outbox.claim(1)  # whole, though the claim asks for fewer
    assert taken is not None and (taken.key, ids(taken)) == (held.key, ["r1", "r2"])


async def test_concurrent_claimers_never_share_a_row(sessions: async_sessionmaker[AsyncSession]) -> None:
    writer = SqlOutbox(sessions)
    await asyncio.gather(*(writer.put(record(f"r{i}")) for i in range(40)))
    a, b = SqlOutbox(sessions), SqlOutbox(sessions)
    claims = await asyncio.gather(a.claim(15), b.claim(15), a.claim(15), b.claim(15))
    got = [rid for batch in claims for rid in ids(batch)]
    assert sorted(got) == sorted(f"r{i}" for i in range(40))  # every row claimed, none twice
    batches = [batch for batch in claims if batch is not None]
    assert all(len(ids(batch)) <= 15 for batch in batches)
    # Rows a concurrent claimer holds are skipped (SKIP LOCKED on PostgreSQL), so a batch claimed
    # beside another may come out short: 40 rows in 3 batches, or 4 when two claims overlapped.
    assert len({batch.key for batch in batches}) == len(batches) in (3, 4)


async def test_settle_deletes_what_was_accepted_and_rebatches_the_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    outbox = SqlOutbox(sessions)
    for i in range(3):
        await outbox.put(record(f"r{i}"))
    batch = await outbox.claim(10)
    assert batch is not None
    await outbox.settle(batch, {"r1"}, retry_in=0)
    assert await outbox.depth() == 1
    again = await outbox.claim(10)  # no lease to wait for: the refused row waits only retry_in
    assert again is not None and ids(again) == ["r1"] and again.key != batch.key
    await outbox.settle(again, (), retry_in=0)
    assert await outbox.depth() == 0


async def test_refused_rows_wait_retry_in(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    outbox = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    await outbox.put(record("late"))
    await outbox.put(record("soon"))
    batch = await outbox.claim(10)
    assert batch is not None
    await outbox.settle(batch, {"late"}, retry_in=3600)
    await outbox.put(record("new"))
    new = await outbox.claim(10)
    assert new is not None and ids(new) == ["new"]
    await outbox.settle(new, (), retry_in=0)
    now[0] += timedelta(seconds=3599)
    assert await outbox.claim(10) is None
    now[0] += timedelta(seconds=1)
    assert ids(await outbox.claim(10)) == ["late"]


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


async def test_an_empty_outbox_is_asked_again_only_after_the_quiet_window(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    counting = CountingSessions(sessions)
    outbox = SqlOutbox(counting, clock=lambda: now[0], idle_recheck=5)  # type: ignore[arg-type]
    assert await outbox.depth() == 0 and await outbox.claim(10) is None
    asked = counting.opened
    await SqlOutbox(sessions).put(record("other"))  # another replica's record
    now[0] += timedelta(seconds=4.9)
    assert await outbox.claim(10) is None and await outbox.depth() == 0
    assert counting.opened == asked  # both answered without a transaction
    now[0] += timedelta(seconds=0.1)
    assert await outbox.depth() == 1
    assert ids(await outbox.claim(10)) == ["other"]


async def test_a_record_put_here_is_claimed_at_once_despite_the_quiet_window(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    outbox = SqlOutbox(sessions, idle_recheck=3600)
    assert await outbox.claim(10) is None
    await SqlOutbox(sessions).put(record("other"))
    await outbox.put(record("mine"))
    assert ids(await outbox.claim(10)) == ["other", "mine"]


async def test_without_a_quiet_window_every_claim_asks(sessions: async_sessionmaker[AsyncSession]) -> None:
    outbox = SqlOutbox(sessions)
    assert await outbox.claim(10) is None
    await SqlOutbox(sessions).put(record("other"))
    assert ids(await outbox.claim(10)) == ["other"]


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


async def test_memory_is_full_at_its_limit_yet_keeps_every_record_and_reports_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`full` (the meter then refuses new requests) once memory holds `max_unstored` records; a
    record of a request admitted before still goes to memory, past the limit: none is dropped. The
    count (waiting records and batches being delivered from memory) is reported on every change."""
    caplog.set_level(logging.INFO, "sentinel.outbox")
    redis, sql = OutboxPart("redis"), OutboxPart("sql")
    counts: list[int] = []
    outbox = DurableOutbox(sql, redis, max_unstored=2, on_unstored=counts.append)  # type: ignore[arg-type]
    redis.down = sql.down = True
    await outbox.put(record("r1"))
    assert not outbox.full
    await outbox.put(record("r2"))
    assert outbox.full
    await outbox.put(record("r3"))  # admitted before the limit was reached: kept all the same
    assert [r.request_id for r in outbox.orphans] == ["r1", "r2", "r3"] and outbox.unstored == 3
    batch = await outbox.claim(2)  # delivered from memory (the sink is up): still held meanwhile
    assert batch is not None and batch.backend == "memory" and outbox.unstored == 3 and outbox.full
    await outbox.settle(batch, {"r2"}, retry_in=0.0)  # r1 delivered, r2 refused: waits again
    assert outbox.unstored == 2 and outbox.full
    sql.down = False
    await outbox.rescue_orphans()
    assert outbox.unstored == 0 and not outbox.full and sorted(sql.items) == ["r2", "r3"]
    assert counts == [1, 2, 3, 2, 0]
    assert "below SENTINEL_MAX_UNSTORED_RECORDS again" in caplog.text


async def test_without_a_limit_memory_is_never_full() -> None:
    outbox, redis, sql = durable()
    redis.down = sql.down = True
    for i in range(3):
        await outbox.put(record(f"r{i}"))
    assert outbox.unstored == 3 and not outbox.full


async def test_claims_take_one_batch_from_one_part_in_turn() -> None:
    outbox, redis, sql = durable()
    for i in range(3):
        await outbox.put(record(f"a{i}"))
    redis.down = True
    for i in range(3):
        await outbox.put(record(f"b{i}"))
    redis.down = False
    claims = [await outbox.claim(2) for _ in range(4)]
    # Never a mix of backends in one batch, and neither backend starves the other.
    assert [(b.backend, ids(b)) for b in claims if b is not None] == [
        ("redis", ["a0", "a1"]), ("sql", ["b0", "b1"]), ("redis", ["a2"]), ("sql", ["b2"])
    ]
    for batch in claims:
        assert batch is not None
        await outbox.settle(batch)
    redis.down = True  # a part that is down is skipped
    await outbox.put(record("b3"))
    batch = await outbox.claim(10)
    assert batch is not None and (batch.backend, ids(batch)) == ("sql", ["b3"])


async def test_settle_goes_to_the_batch_backend_and_depth_tolerates_a_part_that_is_down() -> None:
    outbox, redis, sql = durable()
    await outbox.put(record("r1"))
    await outbox.put(record("r2"))
    batch = await outbox.claim(10)
    assert batch is not None and batch.backend == "redis"
    sql.down = True
    await outbox.settle(batch, {"r2"}, retry_in=5.0)
    assert (redis.acked, redis.retried, sql.acked) == (["r1"], [("r2", 5.0)], [])
    assert await outbox.depth() == 1


async def test_an_unreadable_row_is_logged_and_taken_out_not_holding_its_batch(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    """An entry that cannot be read raised after the claim: the batch stayed claimed, every lease it
    was taken over and crashed again, and the good records claimed with it never left."""
    outbox = SqlOutbox(sessions)
    await outbox.put(record("r1"))
    async with sessions() as session:
        session.add(UsageOutboxRow(request_id="broken", payload='{"request_id": "broken"'))
        await session.commit()
    await outbox.put(record("r2"))
    with caplog.at_level("ERROR", logger="sentinel.outbox"):
        batch = await outbox.claim(10)
    assert ids(batch) == ["r1", "r2"]
    assert any("broken" in str(getattr(r, "stored", "")) for r in caplog.records)  # kept in the log
    async with sessions() as session:
        left = (await session.execute(select(UsageOutboxRow.request_id))).scalars().all()
    assert sorted(left) == ["r1", "r2"]


async def test_a_row_refused_again_waits_twice_as_long_up_to_the_cap(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    outbox = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    await outbox.put(record("refused"))
    batch = await outbox.claim(10)
    waits = []
    for _ in range(8):
        assert batch is not None and ids(batch) == ["refused"]
        await outbox.settle(batch, {"refused"}, retry_in=10)
        waited = 0
        while (batch := await outbox.claim(10)) is None:  # not due yet: time passes, 10 s at a time
            now[0] += timedelta(seconds=10)
            waited += 10
        waits.append(waited)
    assert waits == [10, 20, 40, 80, 160, 320, REFUSED_RETRY_CAP, REFUSED_RETRY_CAP]


def test_refused_waits_double_from_retry_in_to_the_cap_never_below_retry_in() -> None:
    assert [refused_wait(10, tries) for tries in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]
    assert refused_wait(0, 5) == 0  # a shutdown's settlement: due at once, however often refused
    assert refused_wait(3600, 4) == 3600  # never below what the caller asks
    assert refused_wait(10, 10**9) == REFUSED_RETRY_CAP  # no overflow
