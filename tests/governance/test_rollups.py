"""The ledger's rollups hold exactly what the ledger holds (SQLite and PostgreSQL), and the read
queries over them: series buckets with latency histograms, top users/models, recent requests."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.backoff import Backoff
from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.db.models import (
    LATENCY_BOUNDS_MS,
    UsageDailyModelRow,
    UsageDailyUserRow,
    UsageHourlyModelRow,
    UsageHourlyUserRow,
    UsageHourRow,
    UsageLedgerRow,
    UsageMinuteRow,
)
from sentinel.domain.numbers import MAX_INT64, MAX_TOKENS
from sentinel.domain.usage import UsageRecord, latency_ms
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.rollups import TABLES, Rollup, RollupWorker, latency_bucket, percentile
from sentinel.governance.usage_stats import UsageStats
from sentinel.services.admin_usage import _point
from tests.support.accounts import record_and_roll_up
from tests.support.clock import FakeClock
from tests.support.waiting import until

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
MINUTE0 = int(T0.timestamp()) // 60
DAY0 = int(T0.timestamp()) // 86400


def rec(rid: str, *, user: str = "alice", model: str | None = "gpt-4o", at: datetime = T0, ms: int = 120,
        inp: int = 10, out: int = 5, status: int = 200, cost: float | None = 0.5) -> UsageRecord:
    return UsageRecord(rid, user, None, model, "openai" if model else None, "chat", inp, out, "measured", status,
                       at - timedelta(milliseconds=ms), at, cost)


# --- pure parts ----------------------------------------------------------------------------------
def test_a_batch_rolls_up_as_its_records_one_by_one() -> None:
    """`Rollup.of` counts each record once under (minute, user, model, provider) and adds those
    sums to every table; the result is what counting each record under each table's key gives."""
    rng = random.Random(7)
    records = [
        rec(f"r{n}", user=rng.choice(["alice", "bob", "carol"]), model=rng.choice(["gpt-4o", "o3", None]),
            at=T0 + timedelta(seconds=rng.randrange(-2 * 86400, 2 * 86400)), ms=rng.choice([0, 3, 150, 9000, 10**7]),
            inp=rng.randrange(1000), out=rng.randrange(1000), status=rng.choice([200, 200, 429, 502]),
            cost=rng.choice([None, 0.25, 1.5]))
        for n in range(600)
    ]  # fmt: skip
    expected: list[dict[tuple[object, ...], dict[str, float]]] = [{} for _ in TABLES]
    for r in records:
        seconds = int(r.finished_at.timestamp())
        model, provider = r.model or "", r.provider or ""
        keys = ((seconds // 60,), (seconds // 3600,), (seconds // 3600, r.external_id),
                (seconds // 3600, model, provider), (seconds // 86400, r.external_id),
                (seconds // 86400, model, provider))  # fmt: skip
        ms = max(0, int((r.finished_at - r.started_at).total_seconds() * 1000))
        for table, key, (_, _, series) in zip(expected, keys, TABLES, strict=True):
            sums = table.setdefault(key, {})
            add = {"requests": 1, "errors": int(r.status >= 400), "input_tokens": r.input_tokens,
                   "output_tokens": r.output_tokens, "cost_usd": r.cost_usd or 0.0}  # fmt: skip
            if series:
                add |= {"latency_ms_sum": ms, f"lat_{latency_bucket(ms):02d}": 1}
            for name, value in add.items():
                sums[name] = sums.get(name, 0) + value
    got = Rollup.of(records).rows()
    assert sum(len(t) for t in expected) > 6 * 2  # several keys per table: the test can tell them apart
    for rows, want, (_, names, _) in zip(got, expected, TABLES, strict=True):
        assert [tuple(row[n] for n in names) for row in rows] == sorted(want)  # key order
        for row in rows:
            sums = want[tuple(row[n] for n in names)]
            assert {k: v for k, v in row.items() if k not in names and v} == pytest.approx(
                {k: v for k, v in sums.items() if v}
            )
    one_by_one = Rollup()
    for r in records:
        one_by_one.add(r)
    assert one_by_one.rows() == got


def test_latency_buckets_are_upper_bounds() -> None:
    assert latency_bucket(0) == 0 and latency_bucket(LATENCY_BOUNDS_MS[0]) == 0
    assert latency_bucket(LATENCY_BOUNDS_MS[0] + 1) == 1
    assert latency_bucket(LATENCY_BOUNDS_MS[-1]) == len(LATENCY_BOUNDS_MS) - 1
    assert latency_bucket(10**9) == len(LATENCY_BOUNDS_MS)


def test_a_latency_is_whole_milliseconds_truncated_exactly() -> None:
    """Integer arithmetic: through float seconds, 1,001 ms (and 23 more values up to 3 s) came out a
    millisecond short — and in the bucket below when the bound is 1,000 ms."""
    for micros in (0, 999, 1_000, 5_000, 5_999, 1_001_000, 1_003_000, 2_999_999, 10**9):
        assert latency_ms(T0, T0 + timedelta(microseconds=micros)) == micros // 1000, micros
    assert latency_ms(T0 + timedelta(microseconds=1), T0) == 0  # a finish before the start
    assert latency_bucket(latency_ms(T0, T0 + timedelta(milliseconds=1001))) == latency_bucket(1001) != latency_bucket(1000)


def test_percentiles_interpolate_within_the_bucket() -> None:
    width = len(LATENCY_BOUNDS_MS) + 1
    assert percentile([0] * width, 0.5) is None
    one = [0] * width
    one[latency_bucket(150)] = 1  # (100, 200]
    assert percentile(one, 0.5) == pytest.approx(150)
    assert 100 <= (percentile(one, 0.99) or 0) <= 200
    spread = [0] * width
    spread[0], spread[latency_bucket(2500)] = 99, 1  # 99 fast, 1 slow
    assert (percentile(spread, 0.5) or 0) <= LATENCY_BOUNDS_MS[0]
    assert 2000 < (percentile(spread, 0.999) or 0) <= 3000
    slowest = [0] * width
    slowest[-1] = 3
    assert percentile(slowest, 0.99) == LATENCY_BOUNDS_MS[-1]  # the open bucket reports its lower bound


def test_percentile_estimate_is_within_one_bucket_of_the_truth() -> None:
    rnd = random.Random(7)
    values = [int(rnd.lognormvariate(5, 1)) for _ in range(5000)]
    histogram = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for v in values:
        histogram[latency_bucket(v)] += 1
    for q in (0.5, 0.99):
        true = sorted(values)[int(q * len(values)) - 1]
        estimate = percentile(histogram, q) or 0
        index = latency_bucket(true)
        low = 0 if index == 0 else LATENCY_BOUNDS_MS[index - 1]
        high = LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
        assert low <= estimate <= high, (q, true, estimate)


# --- the write path ------------------------------------------------------------------------------
async def _sum(sessions: async_sessionmaker[AsyncSession], column: object) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.coalesce(func.sum(column), 0))) or 0)  # type: ignore[call-overload]


async def test_rollups_equal_the_ledger_also_when_batches_are_delivered_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ledger = SqlLedger(sessions)
    rnd = random.Random(3)
    batch = [
        rec(f"r{i}", user=f"u{i % 7}", model=rnd.choice(["gpt-4o", "gpt-4o-mini", None]),
            at=T0 + timedelta(seconds=rnd.randint(0, 3 * 86400)), ms=rnd.randint(1, 20000),
            inp=rnd.randint(0, 500), out=rnd.randint(0, 90), status=rnd.choice([200, 200, 200, 502, 499]))
        for i in range(600)
    ]
    assert await ledger.record_batch(batch[:400]) == 400
    assert await ledger.record_batch(batch) == 200  # 400 again: nothing new for them
    assert await ledger.record_batch(batch[100:300]) == 0
    while await ledger.roll_up(100):  # in batches, as the worker takes them
        pass
    tables = (UsageMinuteRow, UsageHourRow, UsageHourlyUserRow, UsageHourlyModelRow, UsageDailyUserRow,
              UsageDailyModelRow)
    for column in ("input_tokens", "output_tokens"):
        total = await _sum(sessions, getattr(UsageLedgerRow, column))
        for table in tables:
            assert await _sum(sessions, getattr(table, column)) == total, (table, column)
    for table in tables:
        assert await _sum(sessions, table.requests) == 600
        assert await _sum(sessions, table.errors) == sum(1 for r in batch if r.status >= 400)
    for table in (UsageMinuteRow, UsageHourRow):
        assert sum([await _sum(sessions, getattr(table, f"lat_{i:02d}")) for i in range(20)]) == 600


async def test_concurrent_overlapping_batches_roll_up_each_request_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ledger = SqlLedger(sessions)
    batches = [[rec(f"r{i}", at=T0 + timedelta(seconds=i)) for i in range(start, start + 50)] for start in range(0, 200, 25)]
    await asyncio.gather(*(ledger.record_batch(b) for b in batches))
    await asyncio.gather(*(ledger.roll_up(50) for _ in range(20)))  # concurrent workers: each row once
    while await ledger.roll_up():
        pass
    assert await _sum(sessions, UsageMinuteRow.requests) == 225
    assert await _sum(sessions, UsageDailyUserRow.requests) == 225


async def test_a_roll_up_that_found_nothing_quiets_the_next_ones_until_rows_are_recorded_here(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = [0.0]
    ledger = SqlLedger(sessions, idle_recheck=5, clock=lambda: clock[0])
    assert await ledger.roll_up() == 0
    await SqlLedger(sessions).record_batch([rec("other")])  # another process's row
    assert await ledger.roll_up() == 0  # quiet: not asked
    assert await _sum(sessions, UsageMinuteRow.requests) == 0
    await ledger.record_batch([rec("mine", at=T0 + timedelta(seconds=1))])
    assert await ledger.roll_up() == 2  # its own row ended the window; the other's comes along
    assert await ledger.roll_up() == 0
    await SqlLedger(sessions).record_batch([rec("later")])
    clock[0] += 5
    assert await ledger.roll_up() == 1  # the window is over: asked again
    assert await _sum(sessions, UsageMinuteRow.requests) == 3


# --- the read side ------------------------------------------------------------------------------
async def test_series_buckets_sum_minutes_and_merge_histograms(sessions: async_sessionmaker[AsyncSession]) -> None:
    await record_and_roll_up(sessions, [
        rec("a", at=T0 + timedelta(seconds=5), ms=3, inp=1, out=1, cost=0.25),
        rec("b", at=T0 + timedelta(minutes=4, seconds=59), ms=150, inp=2, out=2, status=502, cost=None),
        rec("c", at=T0 + timedelta(minutes=5), ms=150, inp=4, out=4),
        rec("d", at=T0 + timedelta(minutes=20), ms=9000, inp=8, out=8),  # outside the range
    ])
    buckets = await UsageStats(sessions).series(MINUTE0, MINUTE0 + 10, 5)
    assert [(b.index, b.requests, b.errors, b.input_tokens) for b in buckets] == [(0, 2, 1, 3), (1, 1, 0, 4)]
    assert buckets[0].cost_usd == pytest.approx(0.25)
    assert buckets[0].histogram[latency_bucket(3)] == 1 and buckets[0].histogram[latency_bucket(150)] == 1
    assert sum(buckets[1].histogram) == 1 and buckets[0].latency_ms_sum == 153
    hours = await UsageStats(sessions).series(MINUTE0 - MINUTE0 % 60, MINUTE0 - MINUTE0 % 60 + 120, 60)  # per-hour rollup
    assert [(b.index, b.requests, b.input_tokens) for b in hours] == [(0, 4, 15)]
    assert sum(hours[0].histogram) == 4 and hours[0].histogram[latency_bucket(9000)] == 1


async def test_top_users_and_models_from_the_ledger_and_from_the_daily_rollups(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rows = [rec(f"b{i}", user="bob", model="gpt-4o-mini", at=T0 - timedelta(days=3)) for i in range(5)]
    rows += [rec(f"a{i}", user="alice", at=T0 - timedelta(minutes=i)) for i in range(3)]
    rows += [rec("c0", user="carol", model=None, at=T0, status=500)]
    await record_and_roll_up(sessions, rows)
    stats = UsageStats(sessions)
    recent = await stats.top_users(since=T0 - timedelta(hours=1))
    assert [(r.name, r.requests, r.errors) for r in recent] == [("alice", 3, 0), ("carol", 1, 1)]
    monthly = await stats.top_users(first_day=DAY0 - 29, limit=2)
    assert [(r.name, r.requests) for r in monthly] == [("bob", 5), ("alice", 3)]
    hourly = await stats.top_users(first_hour=int(T0.timestamp()) // 3600 - 1)
    assert [(r.name, r.requests, r.errors) for r in hourly] == [("alice", 3, 0), ("carol", 1, 1)]
    hourly_models = await stats.top_models(first_hour=int(T0.timestamp()) // 3600 - 100)
    assert [(m.name, m.requests) for m in hourly_models] == [("gpt-4o-mini", 5), ("gpt-4o", 3), ("", 1)]
    totals = await stats.user_totals("bob", DAY0 - 29)
    assert (totals.requests, totals.input_tokens, totals.cost_usd) == (5, 50, pytest.approx(2.5))
    assert (await stats.user_totals("bob", DAY0)).requests == 0
    models = await stats.top_models(since=T0 - timedelta(hours=1))
    assert [(m.name, m.provider, m.requests) for m in models] == [("gpt-4o", "openai", 3), ("", None, 1)]
    daily = await stats.top_models(first_day=DAY0 - 29)
    assert [(m.name, m.requests, m.input_tokens) for m in daily][:2] == [("gpt-4o-mini", 5, 50), ("gpt-4o", 3, 30)]


async def test_recent_requests_newest_first_with_latency(sessions: async_sessionmaker[AsyncSession]) -> None:
    await record_and_roll_up(sessions, [rec(f"r{i}", at=T0 + timedelta(seconds=i), ms=100 + i) for i in range(30)])
    found = await UsageStats(sessions).recent_requests("alice", limit=5)
    assert [r.request_id for r in found] == ["r29", "r28", "r27", "r26", "r25"]
    assert found[0].latency_ms == 129
    assert await UsageStats(sessions).recent_requests("nobody") == []


# --- the worker -------------------------------------------------------------------------------------
class FlakyRollUp:
    """A roll-up that raises `failures` unexpected errors first, then takes nothing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, limit: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("a bug")
        return 0


async def test_the_worker_outlives_an_unexpected_failure_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    """Only GovernanceUnavailable was caught: any other exception ended the worker's task for good
    (the console's roll-ups stale until restart), and its stop() raised it at shutdown."""
    roll_up = FlakyRollUp(failures=2)
    worker = RollupWorker(roll_up, interval=0, backoff=Backoff(base=0, cap=0))
    worker.start()
    await until(lambda: roll_up.calls >= 4)
    await worker.stop()
    assert worker.failures == 0  # the later roll-ups succeeded
    failed = [r for r in caplog.records if r.message == "rollups failed; retrying"]
    assert len(failed) == 2 and all(r.exc_info for r in failed)


async def test_after_an_unexpected_failure_the_worker_backs_off() -> None:
    roll_up = FlakyRollUp(failures=1)
    worker = RollupWorker(roll_up, interval=0, backoff=Backoff(base=3600, cap=3600))
    worker.start()
    await until(lambda: roll_up.calls == 1 and worker.failures == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert roll_up.calls == 1  # waiting its backoff (an interval of 0 would have called again by now)
    await worker.stop()  # stopping does not wait the backoff out
    assert roll_up.calls == 2 and worker.failures == 0


class StuckRollUp:
    """A roll-up whose calls from `stuck_from` on wait on a database that never answers; the ones
    before find a full batch (a backlog)."""

    def __init__(self, stuck_from: int, batch: int) -> None:
        self.stuck_from = stuck_from
        self.batch = batch
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, limit: int) -> int:
        self.calls += 1
        if self.calls < self.stuck_from:
            await asyncio.sleep(0)
            return self.batch
        try:
            await asyncio.Event().wait()  # the database's answer, never coming
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


async def test_stop_cuts_a_roll_up_still_under_way_at_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM while the loop waited on the database (a lock, a database that does not answer):
    `stop` awaited that roll-up with no bound, so shutdown overran its timeout and nothing that
    closes after the worker (the HTTP client, the SQLite writer, the engine, the store) ran before
    the process was killed. The roll-up is cut at the timeout; its rows wait for the next start."""
    roll_up = StuckRollUp(stuck_from=1, batch=10)
    worker = RollupWorker(roll_up, interval=0, batch=10)
    worker.start()
    await until(lambda: roll_up.calls == 1)  # the loop is stuck in the database's call
    await asyncio.wait_for(worker.stop(drain_timeout=0.05), 5)
    assert roll_up.cancelled == 1 and roll_up.calls == 1  # cut short, and no catching up started after
    assert "a roll-up was still under way at shutdown" in caplog.text


async def test_stop_bounds_the_catching_up_after_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    """After the loop stops, what is waiting is rolled up — within the same timeout: a backlog whose
    last roll-up hangs is cut short too."""
    roll_up = StuckRollUp(stuck_from=3, batch=10)
    worker = RollupWorker(roll_up, interval=3600, batch=10)  # not started: stop only catches up
    await asyncio.wait_for(worker.stop(drain_timeout=0.05), 5)
    assert roll_up.calls == 3 and roll_up.cancelled == 1  # two full batches, then the stuck one, cut
    assert "rollups not caught up at shutdown" in caplog.text


async def test_a_database_down_is_logged_once_a_minute_not_once_a_roll_up(
    caplog: pytest.LogCaptureFixture, pg_url: str
) -> None:
    """The worker tries again every second while the database is down: each attempt wrote a
    warning, 3,600 lines an hour per process. Now the first, then one a minute (counting the
    others), and one line when the roll-ups run again."""
    from sqlalchemy.engine import make_url

    from tests.support.servers import free_port

    caplog.set_level(logging.INFO, "sentinel.rollups")
    down = create_engine(make_url(pg_url).set(port=free_port()), timeout=0.5)  # nothing listens there
    clock = FakeClock()
    worker = RollupWorker(SqlLedger(session_factory(down)).roll_up, clock=clock)
    try:
        for _ in range(5):
            assert await worker.run_once() == 0
        clock.advance(61)
        assert await worker.run_once() == 0
    finally:
        await down.dispose()
    delayed = [r for r in caplog.records if r.message.startswith("rollups delayed")]
    assert len(delayed) == 2
    assert getattr(delayed[1], "suppressed", None) == 4
    up = create_engine(pg_url)
    try:
        await migrate(up)
        worker.roll_up = SqlLedger(session_factory(up)).roll_up  # the database is back
        await worker.run_once()
    finally:
        await up.dispose()
    assert [r.message for r in caplog.records].count("rollups resumed") == 1


async def test_a_sum_past_what_its_column_holds_stays_at_the_largest_and_never_stops_the_roll_ups(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A count a provider reports is believed up to MAX_TOKENS (10**12), so 9.2 million such records
    in one day of one model (~107 a second from a broken provider) overflowed that day's BIGINT sum:
    on PostgreSQL each roll-up failed and was retried for ever, and no request was rolled up again —
    the console's figures stopped for everyone; on SQLite the sum turned into an inexact REAL. A sum
    now stops at the largest value its column holds."""
    ledger = SqlLedger(sessions)
    await ledger.record_batch([rec("r1", inp=MAX_TOKENS, out=MAX_TOKENS)])
    assert await ledger.roll_up() == 1
    tables = [table for table, _, _ in TABLES]
    async with sessions() as session:  # what 9.2 million such records leave behind
        for table in tables:
            await session.execute(update(table).values(input_tokens=MAX_INT64 - 1))
        await session.commit()
    await ledger.record_batch([rec("r2", inp=MAX_TOKENS, out=3)])
    assert await ledger.roll_up() == 1
    for table in tables:
        async with sessions() as session:
            assert (await session.execute(select(table.input_tokens, table.output_tokens))).all() == [
                (MAX_INT64, MAX_TOKENS + 3)
            ], table


async def test_reports_add_up_sums_past_what_a_column_holds(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Rows that each hold the most a column can (a roll-up's sum stops there) summed past it: on
    SQLite `sum()` raised "integer overflow" and the report was a 503 for good (PostgreSQL sums
    BIGINT as NUMERIC). The sum stops at the largest too (`summed`): past 2^64 it was no integer a
    JSON answer carries (orjson refused it: the admin API's report was a 500)."""
    ledger = SqlLedger(sessions)
    await ledger.record_batch([rec("r1", at=T0), rec("r2", at=T0 + timedelta(days=1))])
    assert await ledger.roll_up() == 2
    async with sessions() as session:
        for table in (UsageLedgerRow, UsageDailyUserRow, UsageHourRow):
            await session.execute(update(table).values(input_tokens=MAX_INT64))
        await session.commit()
    stats = UsageStats(sessions)
    assert (await stats.user_totals("alice", DAY0)).input_tokens == MAX_INT64
    (totals,) = await ledger.totals("alice")
    assert totals["input_tokens"] == MAX_INT64 and orjson.dumps(totals)
    (bucket,) = await stats.series(MINUTE0, MINUTE0 + 2 * 1440, 2 * 1440)
    assert bucket.input_tokens == MAX_INT64
    point = _point(T0, [bucket, bucket], [])  # buckets added up for a series' total
    assert point.input_tokens == MAX_INT64 and orjson.dumps(point.input_tokens)
