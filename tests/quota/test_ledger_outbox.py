"""The built-in ledger on one process: records go straight to the ledger, concurrent ones together."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
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


class _DownSql:
    backend = "sql"

    async def put(self, record: UsageRecord) -> None:
        raise GovernanceUnavailable("database down")


@pytest.fixture
def sessions(tmp_path):  # type: ignore[no-untyped-def]
    from sentinel.db.engine import create_engine, session_factory

    return session_factory(create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db"))
