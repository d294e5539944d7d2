"""The built-in ledger on one process: records go straight to the ledger, concurrent ones together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.db.sqlite_writer import SqliteWriter
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.ledger import SqlLedger, SqlLedgerSink
from sentinel.quota.outbox import DurableOutbox, LedgerOutbox, SqlOutbox
from tests.support.outbox import usage_record


class RecordingSink:
    name = "recording"

    def __init__(self, failing: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.failing = failing

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        await asyncio.sleep(0)  # a real write yields: others queue up behind it
        if self.failing:
            raise GovernanceUnavailable("ledger down")
        self.calls.append([r.request_id for r in records])
        return []


async def test_concurrent_records_are_written_together_and_each_exactly_once() -> None:
    sink = RecordingSink()
    outbox = LedgerOutbox(sink)
    await asyncio.gather(*(outbox.put(usage_record(f"r{i}")) for i in range(50)))
    written = [rid for call in sink.calls for rid in call]
    assert sorted(written) == sorted(f"r{i}" for i in range(50))
    assert len(sink.calls) < 50  # grouped: fewer writes than records
    assert await outbox.claim(10) is None and await outbox.depth() == 0


async def test_a_failed_ledger_write_keeps_the_record_in_memory_for_later(sessions) -> None:  # type: ignore[no-untyped-def]
    sink = RecordingSink(failing=True)
    durable = DurableOutbox(SqlOutbox(sessions), ledger=LedgerOutbox(sink))
    durable.sql = _DownSql()  # type: ignore[assignment]  # the same database: down too
    await durable.put(usage_record("kept"))
    assert [r.request_id for r in durable.orphans] == ["kept"]
    sink.failing = False
    durable.sql = None  # type: ignore[assignment]
    await durable.rescue_orphans()
    assert sink.calls == [["kept"]] and durable.orphans == []


@dataclass
class EmbeddedLedger:
    """The built-in ledger on a migrated SQLite file, as `serve` builds it."""

    engine: AsyncEngine
    writer: SqliteWriter
    sessions: async_sessionmaker[AsyncSession]
    sink: SqlLedgerSink
    durable: DurableOutbox  # its outbox table, and the ledger behind it


async def embedded_ledger(tmp_path: Path) -> EmbeddedLedger:
    """A new `EmbeddedLedger` in `tmp_path` (the caller closes its writer and disposes its engine)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    engine = create_engine(url)
    await migrate(engine)
    writer = SqliteWriter.for_url(url)
    assert writer is not None
    sessions = session_factory(engine)
    sink = SqlLedgerSink(SqlLedger(sessions, writer))
    return EmbeddedLedger(engine, writer, sessions, sink, DurableOutbox(SqlOutbox(sessions), ledger=LedgerOutbox(sink)))


class _DownSql:
    backend = "sql"

    async def put(self, record: UsageRecord) -> None:
        raise GovernanceUnavailable("database down")


@pytest.fixture
def sessions(tmp_path):  # type: ignore[no-untyped-def]
    return session_factory(create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db"))


async def test_a_ledger_closed_under_a_write_leaves_the_record_in_the_outbox_table(
    tmp_path, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    """Shutdown closes the SQLite writer: a record written after that raised RuntimeError, which
    `DurableOutbox.put` did not fall back on — the record was lost without a log. Any failure now
    moves on to the next backend (here the outbox table, delivered after restart), logged."""
    from sentinel.db.sqlite_writer import INLINE_MAX_ROWS

    ledger = await embedded_ledger(tmp_path)
    engine, writer, durable = ledger.engine, ledger.writer, ledger.durable
    try:
        await durable.put(usage_record("before"))
        await writer.close()
        late = [f"late-{n}" for n in range(INLINE_MAX_ROWS + 1)]  # together, a batch for the writer's thread
        await asyncio.gather(*(durable.put(usage_record(request_id)) for request_id in late))
        batch = await durable.sql.claim(1000)
        assert batch is not None and sorted(c.record.request_id for c in batch.items) == sorted(late)
        assert durable.orphans == []
        logged = {getattr(r, "record_id", None) for r in caplog.records if r.levelname == "ERROR" and r.exc_info}
        assert logged == set(late)
    finally:
        await engine.dispose()


class _BrokenPart:
    backend = "redis"

    async def put(self, record: UsageRecord) -> None:
        raise RuntimeError("a bug")


async def test_a_record_no_backend_takes_for_any_reason_is_kept_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    durable = DurableOutbox(_BrokenPart(), _BrokenPart())  # type: ignore[arg-type]
    await durable.put(usage_record("kept"))
    assert [r.request_id for r in durable.orphans] == ["kept"]
    assert "usage record kept in memory" in caplog.text


async def test_a_database_the_ledger_cannot_reach_is_not_tried_again_for_the_outbox_table(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On one process without Redis a record goes to the ledger, else the outbox table — in the same
    database. When the ledger could not reach it, the table was tried all the same: on a hung
    database a second full wait (the pooled connection's check, then a connect) before memory, for
    every answer. Now the record goes to memory at once (and reaches the ledger when it is back)."""
    from sqlalchemy.engine import make_url

    from tests.support.servers import free_port

    down = create_engine(make_url(pg_url).set(port=free_port()), timeout=0.5)  # nothing listens there
    sessions = session_factory(down)
    durable = DurableOutbox(SqlOutbox(sessions), ledger=LedgerOutbox(SqlLedgerSink(SqlLedger(sessions))))
    try:
        await durable.put(usage_record("kept"))
    finally:
        await down.dispose()
    assert [r.request_id for r in durable.orphans] == ["kept"]
    tried = {getattr(r, "args", ())[0] for r in caplog.records if r.msg == "usage outbox %s unavailable: %s"}
    assert tried == {"ledger"}


class _RefusingSink:
    name = "refusing"

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        return [r.request_id for r in records]  # a value the ledger cannot store


async def test_a_record_the_ledger_refuses_still_goes_to_the_outbox_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A refusal is no outage: the database answers, and the outbox table keeps the record."""
    from sentinel.db.engine import create_engine, migrate, session_factory

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    await migrate(engine)
    durable = DurableOutbox(SqlOutbox(session_factory(engine)), ledger=LedgerOutbox(_RefusingSink()))
    try:
        await durable.put(usage_record("refused"))
        batch = await durable.sql.claim(10)
        assert batch is not None and [c.record.request_id for c in batch.items] == ["refused"]
        assert durable.orphans == []
    finally:
        await engine.dispose()


async def test_a_record_the_sqlite_ledger_refuses_is_kept_not_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The embedded ledger's writer inserted with `INSERT OR IGNORE`, which skips a row breaking any
    constraint (NOT NULL, CHECK), not only a request id already recorded: such a record (a bug's) was
    dropped without a word and settled as delivered. It is refused now, as on PostgreSQL: the
    others of its batch are recorded, and it stays in the outbox table."""
    import dataclasses

    from sqlalchemy import select

    from sentinel.db.models import UsageLedgerRow
    from sentinel.db.sqlite_writer import INLINE_MAX_ROWS

    ledger = await embedded_ledger(tmp_path)
    engine, writer, sessions, sink, durable = ledger.engine, ledger.writer, ledger.sessions, ledger.sink, ledger.durable

    def unstorable(request_id: str) -> UsageRecord:
        record = dataclasses.replace(usage_record(request_id))
        object.__setattr__(record, "external_id", None)  # NOT NULL in the ledger
        return record

    async def recorded() -> set[str]:
        async with sessions() as session:
            return set((await session.scalars(select(UsageLedgerRow.request_id))).all())

    try:
        assert await sink.deliver([unstorable("bad1"), usage_record("ok1")], "key") == ["bad1"]
        many = [usage_record(f"m{n}") for n in range(INLINE_MAX_ROWS)]  # a batch for the writer's thread
        assert await sink.deliver([*many, unstorable("bad3")], "key") == ["bad3"]
        await asyncio.gather(durable.put(unstorable("bad2")), durable.put(usage_record("ok2")))
        assert await recorded() == {"ok1", "ok2"} | {r.request_id for r in many}
        batch = await durable.sql.claim(1000)
        assert batch is not None and "bad2" in {c.record.request_id for c in batch.items}
        assert durable.orphans == []
    finally:
        await writer.close()
        await engine.dispose()
