"""SQLite's hot write path: the ledger's inserts through a private connection read back exactly as
SQLAlchemy writes them, once per request id; a batch is written on the event loop while the file is
free, in the writer's thread while another connection holds it (the loop runs on meanwhile), and the
WAL is checkpointed from the thread; a broken database is GovernanceUnavailable."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.db.models import UsageLedgerRow
from sentinel.db.sqlite_writer import SqliteWriter
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.rollups import TABLES

T0 = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)


def record(request_id: str, external_id: str = "alice") -> UsageRecord:
    return UsageRecord(
        request_id=request_id, external_id=external_id, email="a@example.com", model="gpt-4o-mini",
        provider="openai", endpoint="chat", input_tokens=12, output_tokens=7, usage_source="measured",
        status=200, started_at=T0, finished_at=T0 + timedelta(milliseconds=250), cost_usd=0.00012,
        cache_write_tokens=2, cache_read_tokens=3,
    )


@pytest.fixture
async def migrated(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, SqliteWriter]]:
    """A migrated SQLite file, its engine and a writer for it (closed after the test)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = create_engine(url)
    await migrate(engine)
    writer = SqliteWriter.for_url(url)
    assert writer is not None
    try:
        yield engine, writer
    finally:
        await writer.close()
        await engine.dispose()


async def test_the_fast_path_writes_what_sqlalchemy_reads_back_once(
    migrated: tuple[AsyncEngine, SqliteWriter],
) -> None:
    engine, writer = migrated
    fast, plain = SqlLedger(session_factory(engine), writer), SqlLedger(session_factory(engine))
    assert await fast.record_batch([record("r1"), record("r2"), record("r1")]) == 2
    assert await fast.record_batch([record("r2"), record("r3")]) == 1  # r2 is there already
    assert (writer.inline_commits, writer.thread_commits) == (2, 0)  # the file was free: no thread hop
    assert await plain.record_batch([record("r4")]) == 1  # the two paths share one table
    rows = await plain.totals("alice")
    assert rows == [{"model": "gpt-4o-mini", "requests": 4, "input_tokens": 48, "output_tokens": 28}]
    assert await plain.roll_up() == 4  # rows written by the fast path wait for the rollups too
    async with session_factory(engine)() as session:
        stored = (await session.execute(select(UsageLedgerRow).order_by(UsageLedgerRow.request_id))).scalars().all()
    for row in stored:  # the same values, timestamps included, whichever path wrote them
        assert (row.started_at, row.finished_at) == (T0, T0 + timedelta(milliseconds=250))
        assert (row.cost_usd, row.cache_write_tokens, row.cache_read_tokens, row.rolled_up) == (0.00012, 2, 3, True)


# Latencies in µs: bucket bounds and either side of them, 1001 ms (1000 through float seconds), a
# finish at .999556 s after T0's .123456 (SQLite's own clock would round it up to the next second),
# a finish before the start (0 ms).
LATENCIES_US = (0, 999, 5_000, 5_999, 40_000, 250_000, 876_100, 876_544, 1_001_000, 30_000_000, -500)


async def test_the_writer_rolls_up_what_sqlalchemy_rolls_up(tmp_path: Path) -> None:
    """The same records, recorded and rolled up through the writer in one file and through
    SQLAlchemy in another, leave the same rollup tables; each row is rolled up once."""
    rng = random.Random(3)
    records = [
        replace(
            record(f"r{n}", rng.choice(["alice", "bob"])),
            model=rng.choice(["gpt-4o-mini", "o3", None]), status=rng.choice([200, 200, 500]),
            cost_usd=rng.choice([None, 0.25, 1.5]), input_tokens=rng.randrange(500),
            started_at=T0 + timedelta(seconds=n * 997),
            finished_at=T0 + timedelta(seconds=n * 997, microseconds=latency),
        )
        for n, latency in enumerate(rng.choice(LATENCIES_US) for _ in range(60))
    ]  # fmt: skip
    for n, r in enumerate(records):
        if r.model is None:
            records[n] = replace(r, provider=None)
    tables: list[list[tuple[object, ...]]] = []
    for name, with_writer in (("fast", True), ("plain", False)):
        url = f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
        engine = create_engine(url)
        await migrate(engine)
        writer = SqliteWriter.for_url(url) if with_writer else None
        ledger = SqlLedger(session_factory(engine), writer)
        try:
            assert await ledger.record_batch(records[:40]) == 40
            assert [await ledger.roll_up(limit=25), await ledger.roll_up(limit=25)] == [25, 15]
            assert await ledger.record_batch(records[30:]) == 20  # 10 of them were there already
            assert [await ledger.roll_up(limit=25), await ledger.roll_up(limit=25)] == [20, 0]
            if writer is not None:
                assert writer.thread_commits == 4  # the roll-ups ran in the writer's thread
            async with engine.connect() as conn:
                tables.append([
                    tuple((await conn.execute(select(table).order_by(*table.__table__.primary_key))).all())
                    for table, _, _ in TABLES
                ])  # fmt: skip
        finally:
            if writer is not None:
                await writer.close()
            await engine.dispose()
    fast, plain = tables
    assert all(fast) and fast == plain


async def test_a_locked_database_is_written_from_the_thread_while_the_loop_runs_on(
    tmp_path: Path, migrated: tuple[AsyncEngine, SqliteWriter]
) -> None:
    engine, writer = migrated
    ledger = SqlLedger(session_factory(engine), writer)
    holder = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer (a CLI command, another process) holds the file
        write = asyncio.ensure_future(ledger.record_batch([record("r1"), record("r2")]))
        for _ in range(50):
            await asyncio.sleep(0)  # the event loop keeps turning: the write is not waiting on it
        assert not write.done()
        holder.execute("COMMIT")
        assert await write == 2
        assert (writer.inline_commits, writer.thread_commits) == (0, 1)
        assert await ledger.record_batch([record("r3")]) == 1  # free again: back on the loop
        assert writer.inline_commits == 1
        assert [r["requests"] for r in await ledger.totals("alice")] == [3]
    finally:
        holder.close()


async def test_the_wal_is_checkpointed_from_the_thread(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()  # the last connection out checkpoints: the schema is in the main file
    engine = create_engine(url)
    writer = SqliteWriter(tmp_path / "ledger.db", checkpoint_every=2)
    ledger = SqlLedger(session_factory(engine), writer)

    def rows_in_the_main_file() -> int:  # what a copy of the database file alone (no WAL) holds
        shutil.copyfile(tmp_path / "ledger.db", tmp_path / "copy.db")
        with sqlite3.connect(tmp_path / "copy.db") as copy:
            return int(copy.execute("SELECT count(*) FROM usage_ledger").fetchone()[0])

    try:
        assert await ledger.record_batch([record("r1")]) == 1
        await writer.drain()
        assert (writer.checkpoints, rows_in_the_main_file()) == (0, 0)  # in the WAL only: never checkpointed inline
        assert await ledger.record_batch([record("r2")]) == 1
        await writer.drain()
        assert (writer.checkpoints, rows_in_the_main_file()) == (1, 2)
        assert writer.thread_commits == 0
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_broken_database_is_governance_unavailable(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not a database" * 100)
    writer = SqliteWriter(tmp_path / "not-a-db")
    try:
        with pytest.raises(GovernanceUnavailable):
            await writer.executemany("INSERT INTO t VALUES (?)", [(1,)])
        with pytest.raises(GovernanceUnavailable):
            await writer.transact(lambda connection: connection.execute("SELECT * FROM t").fetchall())
    finally:
        await writer.close()


def test_only_sqlite_files_get_a_writer() -> None:
    assert SqliteWriter.for_url("postgresql+asyncpg://u@h/db") is None
    assert SqliteWriter.for_url("sqlite+aiosqlite:///:memory:") is None


async def test_the_wal_shrinks_back_once_a_long_reader_is_gone(tmp_path: Path) -> None:
    """A read transaction held open (a backup, an operator's `sqlite3` shell) stops checkpoints, so
    the WAL grows by every commit meanwhile. It never shrank afterwards: reused from its start, the
    file kept its high-water mark for as long as the server ran (90 MB after 6,000 requests served
    while one `sqlite3` session held a read; the database itself was 0.2 MB)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    engine = create_engine(url)
    limit = 64 * 1024
    writer = SqliteWriter(tmp_path / "ledger.db", checkpoint_every=1, wal_size_limit=limit)
    ledger = SqlLedger(session_factory(engine), writer)
    wal = tmp_path / "ledger.db-wal"
    reader = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM usage_ledger").fetchone()  # its snapshot holds the WAL
        for n in range(300):
            await ledger.record_batch([record(f"r{n}")])
            await writer.drain()
        grown = wal.stat().st_size
        assert grown > 4 * limit
        reader.execute("COMMIT")
        for n in range(2):  # a checkpoint that now completes, then a commit that starts the WAL afresh
            await ledger.record_batch([record(f"after{n}")])
            await writer.drain()
        assert wal.stat().st_size <= limit < grown
    finally:
        reader.close()
        await writer.close()
        await engine.dispose()
