"""The SQL usage ledger (exactly-once by request id) and the UsageRecord it stores."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.db.models import UsageLedgerRow
from sentinel.domain.plans import parse_limits
from sentinel.domain.usage import Usage, UsageRecord, capped_cache, new_request_id
from sentinel.governance.ledger import SqlLedger, WindowUsage
from sentinel.governance.plans import PlanRepository

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


def record(
    request_id: str,
    *,
    external_id: str = "alice",
    model: str | None = "gpt-4o",
    inp: int = 10,
    out: int = 5,
    finished: datetime = T0,
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        external_id=external_id,
        email=f"{external_id}@example.com",
        model=model,
        provider="openai",
        endpoint="/v1/chat/completions",
        input_tokens=inp,
        output_tokens=out,
        usage_source="measured",
        status=200,
        started_at=finished - timedelta(seconds=2),
        finished_at=finished,
    )


# --- UsageRecord -------------------------------------------------------------------------------
def test_record_json_round_trip_through_orjson() -> None:
    original = record("r1")
    with_cost = UsageRecord(**{**original.to_json(), "started_at": T0, "finished_at": T0, "cost_usd": 0.25})
    for rec in (original, with_cost):
        data = orjson.loads(orjson.dumps(rec.to_json()))
        assert data["finished_at"] == rec.finished_at.isoformat()
        assert UsageRecord.from_json(data) == rec


def test_record_normalises_timestamps_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    rec = UsageRecord.from_json(
        {
            **record("r1").to_json(),
            "started_at": "2030-03-01T14:00:00+02:00",
            "finished_at": "2030-03-01T12:00:01",
        }
    )
    assert rec.started_at == datetime(2030, 3, 1, 12, 0, tzinfo=UTC) and rec.started_at.tzinfo is UTC
    assert rec.finished_at == datetime(2030, 3, 1, 12, 0, 1, tzinfo=UTC)
    assert record("r2", finished=T0.astimezone(plus_two)).finished_at.tzinfo is UTC


def test_record_validates() -> None:
    with pytest.raises(ValueError):
        UsageRecord(
            **{**record("r1").to_json(), "started_at": T0, "finished_at": T0, "usage_source": "guess"}
        )
    with pytest.raises(ValueError):
        UsageRecord(**{**record("r1").to_json(), "started_at": T0, "finished_at": T0, "request_id": ""})


def test_cache_figures_never_exceed_the_input() -> None:
    """Prompt-cache writes and reads are part of the input: a Usage or a record (read back from a row or
    an outbox entry written before the cap, too) holds at most the input between them, reads first."""
    assert Usage(10, 5, 0, 10**12) == Usage(10, 5, 0, 10)
    assert Usage(10, 5, 8, 6) == Usage(10, 5, 4, 6)
    assert Usage(10, 5, 3, 6) == Usage(10, 5, 3, 6)  # within the input: untouched
    assert Usage(0, 5, 7, 7) == Usage(0, 5, 0, 0)
    stored = {**record("r1").to_json(), "cache_write_tokens": 5, "cache_read_tokens": 10**12}
    rec = UsageRecord.from_json(stored)
    assert (rec.input_tokens, rec.cache_write_tokens, rec.cache_read_tokens) == (10, 0, 10)
    assert capped_cache(10, 4, 3) == (4, 3) and capped_cache(10, 9, 9) == (1, 9)


def test_new_request_ids_sort_by_time_and_stay_apart_within_a_millisecond() -> None:
    t0 = int(T0.timestamp() * 1_000_000_000)
    same_ms = [new_request_id(t0 + n) for n in range(1000)]  # one millisecond, 1,000 ids
    assert len(set(same_ms)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in same_ms)
    assert {i[:12] for i in same_ms} == {f"{t0 // 1_000_000:012x}"}
    later = [new_request_id(t0 + ms * 1_000_000) for ms in (1, 2, 1_000, 86_400_000)]
    assert sorted([same_ms[0], *later]) == [same_ms[0], *later]
    assert min(later) > max(same_ms)


# --- SqlLedger ----------------------------------------------------------------------------------
@pytest.fixture
def ledger(sessions: async_sessionmaker[AsyncSession]) -> SqlLedger:
    return SqlLedger(sessions)


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM usage_ledger"))).scalar_one())


async def test_duplicate_request_ids_are_recorded_once(ledger: SqlLedger, db_engine: AsyncEngine) -> None:
    assert await ledger.record_batch([]) == 0
    assert await ledger.record_batch([record("r1"), record("r2")]) == 2
    assert await ledger.record_batch([record("r1"), record("r2")]) == 0, "a retried batch adds nothing"
    assert await ledger.record_batch([record("r2"), record("r3"), record("r3", inp=999)]) == 1
    assert await count_rows(db_engine) == 3
    totals = await ledger.totals("alice")
    assert totals == [{"model": "gpt-4o", "requests": 3, "input_tokens": 30, "output_tokens": 15}]


async def test_large_batches_span_several_statements(ledger: SqlLedger, db_engine: AsyncEngine) -> None:
    batch = [record(f"r{i}", inp=1, out=2) for i in range(1234)]
    assert await ledger.record_batch(batch[:700]) == 700
    assert await ledger.record_batch(batch) == 534
    assert await count_rows(db_engine) == 1234
    assert await ledger.totals("alice") == [
        {"model": "gpt-4o", "requests": 1234, "input_tokens": 1234, "output_tokens": 2468}
    ]


async def test_concurrent_overlapping_batches_count_each_request_once(
    ledger: SqlLedger, db_engine: AsyncEngine
) -> None:
    batches = [[record(f"r{i}") for i in range(start, start + 50)] for start in range(0, 200, 25)]
    inserted = await asyncio.gather(*(ledger.record_batch(b) for b in batches))
    assert sum(inserted) == 225
    assert await count_rows(db_engine) == 225


async def test_totals_by_model_user_and_time(ledger: SqlLedger) -> None:
    await ledger.record_batch(
        [
            record("a1", model="gpt-4o", inp=100, out=10, finished=T0 - timedelta(days=2)),
            record("a2", model="gpt-4o", inp=200, out=20, finished=T0),
            record("a3", model="claude-3", inp=7, out=3, finished=T0 + timedelta(minutes=5)),
            record("a4", model=None, inp=0, out=0, finished=T0),
            record("b1", external_id="bob", model="gpt-4o", inp=5000, out=5000, finished=T0),
        ]
    )
    assert await ledger.totals("alice") == [
        {"model": "claude-3", "requests": 1, "input_tokens": 7, "output_tokens": 3},
        {"model": "gpt-4o", "requests": 2, "input_tokens": 300, "output_tokens": 30},
        {"model": None, "requests": 1, "input_tokens": 0, "output_tokens": 0},
    ]
    since = (T0 - timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))  # same instant, other zone
    assert await ledger.totals("alice", since) == [
        {"model": "claude-3", "requests": 1, "input_tokens": 7, "output_tokens": 3},
        {"model": "gpt-4o", "requests": 1, "input_tokens": 200, "output_tokens": 20},
        {"model": None, "requests": 1, "input_tokens": 0, "output_tokens": 0},
    ]
    assert await ledger.totals("alice", T0, until=T0 + timedelta(minutes=1)) == [
        {"model": "gpt-4o", "requests": 1, "input_tokens": 200, "output_tokens": 20},
        {"model": None, "requests": 1, "input_tokens": 0, "output_tokens": 0},
    ]
    assert await ledger.totals("nobody") == []


async def test_usage_since_each_window_start_by_user(ledger: SqlLedger) -> None:
    """What a plan change seeds a new window's counters from: per user, since each start, the
    requests (rows, a part's `#<n>` row none) and the tokens of requests started since it."""
    hour, day = T0 - timedelta(minutes=30), T0 - timedelta(hours=12)
    await ledger.record_batch([
        record("a1", inp=100, out=10, finished=T0 - timedelta(hours=2)),  # in the day only
        record("a2", inp=200, out=20, finished=T0),
        record("a2#1", inp=7, out=3, finished=T0),  # a part of a2: tokens, no request
        record("a0", inp=9, out=9, finished=T0 - timedelta(days=2)),  # before both
        record("b1", external_id="bob", inp=5, out=5, finished=T0),
        record("c1", external_id="carol", inp=1, out=1, finished=T0),  # not asked about
        # started before the hour began, finished in it: the previous hour's counter has it
        record("a3", inp=50, out=5, finished=hour + timedelta(seconds=1)),
    ])
    found = await ledger.usage_since(["alice", "bob", "nobody"], [hour, day])
    assert found == {
        "alice": [WindowUsage(1, 207, 23), WindowUsage(3, 357, 38)],
        "bob": [WindowUsage(1, 5, 5), WindowUsage(1, 5, 5)],
    }
    assert found["alice"][1].of("input_tokens") == 357
    assert await ledger.usage_since([], [hour]) == {} and await ledger.usage_since(["alice"], []) == {}
    many = [f"user-{i}" for i in range(1200)] + ["bob"]  # several statements' worth
    assert await ledger.usage_since(many, [day]) == {"bob": [WindowUsage(1, 5, 5)]}


async def test_default_plan_users_and_recorded_ids(ledger: SqlLedger, sessions: async_sessionmaker[AsyncSession]) -> None:
    """What a DEFAULT_PLAN changed by a restart seeds (`WindowSeeder`): the users with requests since a
    start who have no plan assigned (no row, or a row naming none), and which request ids the ledger holds."""
    await PlanRepository(sessions).set_plan("team", parse_limits("requests=9/1h"))
    await PlanRepository(sessions).set_user_plan("bob", "team")
    await PlanRepository(sessions).set_user_plan("carol", "team")
    await PlanRepository(sessions).set_user_plan("carol", None)  # back on the default plan
    await ledger.record_batch([
        record("a1"), record("b1", external_id="bob"), record("c1", external_id="carol"),
        record("d0", external_id="dave", finished=T0 - timedelta(days=2)),  # before the start
    ])
    since = T0 - timedelta(hours=1)
    assert sorted(await ledger.default_plan_users_since(since)) == ["alice", "carol"]
    assert await ledger.default_plan_users_among({"bob", "carol", "erin"}) == {"carol", "erin"}
    assert await ledger.default_plan_users_among(set()) == set()
    assert await ledger.recorded(["a1", "c1", "x9", *(f"r{i}" for i in range(1200))]) == {"a1", "c1"}


async def test_rows_keep_every_field(ledger: SqlLedger, sessions: async_sessionmaker[AsyncSession]) -> None:
    rec = UsageRecord(**{**record("r1").to_json(), "started_at": T0, "finished_at": T0, "cost_usd": 0.125})
    await ledger.record_batch([rec])
    async with sessions() as session:
        row = (await session.scalars(select(UsageLedgerRow))).one()
    assert UsageRecord.from_json({c: getattr(row, c) for c in rec.to_json()}) == rec
    assert row.finished_at.tzinfo is not None


async def test_a_model_name_no_store_holds_is_kept_replaced(
    ledger: SqlLedger, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A provider names the model (an eval run's per_model_usage): a NUL, which PostgreSQL's text
    # refuses, or a lone surrogate, which no UTF-8 holds, lost the row of usage already charged.
    named = {"nul": "gpt\x00-4o", "surrogate": "gpt-\ud800", "pair": "gpt-\ud83d\ude00"}
    records = [record(key, model=name) for key, name in named.items()]
    for rec in records:
        assert UsageRecord.from_json(orjson.loads(orjson.dumps(rec.to_json()))) == rec  # the outbox's JSON
    assert await ledger.record_batch(records) == 3
    async with sessions() as session:
        rows = {row.request_id: row.model for row in await session.scalars(select(UsageLedgerRow))}
    assert rows == {"nul": "gpt\ufffd-4o", "surrogate": "gpt-\ufffd", "pair": "gpt-\ufffd\ufffd"}
