"""Counts of every API answer: counted in memory, flushed (adding across processes), read in buckets;
kept for the next flush while the database is down."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, session_factory
from sentinel.governance.request_stats import RequestStats, RequestStatsWriter
from sentinel.observability.outcomes import MAX_PENDING_MINUTES, Outcomes, RequestOutcomes
from tests.support.clock import FakeClock
from tests.support.waiting import until

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC).timestamp()
MINUTE0 = int(T0) // 60


def test_answers_are_counted_by_kind_and_minute() -> None:
    clock = FakeClock(T0)
    outcomes = RequestOutcomes(clock)
    for status in (200, 200, 401, 429, 502):
        outcomes.record(status)
    clock.advance(60)
    outcomes.record(504)
    taken = outcomes.take()
    assert taken == {MINUTE0: Outcomes(5, 2, 1, 1), MINUTE0 + 1: Outcomes(1, 0, 0, 1)}
    assert outcomes.take() == {}
    outcomes.give_back({m: Outcomes(1, 0, 0, 0) for m in range(MAX_PENDING_MINUTES + 10)})
    kept = outcomes.take()
    assert len(kept) == MAX_PENDING_MINUTES and min(kept) == 10  # the oldest were dropped


async def test_two_writers_add_up_and_series_read_minutes_and_hours(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock(T0)
    first, second = RequestOutcomes(clock), RequestOutcomes(clock)
    for status in (200, 429, 500):
        first.record(status)
        second.record(status)
    clock.advance(3 * 60)
    second.record(200)
    await RequestStatsWriter(sessions, first).flush()
    await RequestStatsWriter(sessions, second).flush()
    await RequestStatsWriter(sessions, first).flush()  # nothing new: adds nothing
    stats = RequestStats(sessions)
    buckets = await stats.series(MINUTE0, MINUTE0 + 10, 5)
    assert [(b.index, b.requests, b.client_errors, b.rate_limited, b.server_errors) for b in buckets] == [(0, 7, 2, 2, 2)]
    hours = await stats.series(MINUTE0, MINUTE0 + 120, 60)
    assert [(b.index, b.requests) for b in hours] == [(0, 7)]


async def test_counts_survive_a_database_outage() -> None:
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # nothing listens there
    outcomes = RequestOutcomes(FakeClock(T0))
    outcomes.record(503)
    try:
        await RequestStatsWriter(session_factory(engine), outcomes).flush()
    finally:
        await engine.dispose()
    assert outcomes.take() == {MINUTE0: Outcomes(1, 0, 0, 1)}


async def test_a_database_down_is_logged_once_a_minute_not_once_a_flush(
    caplog: pytest.LogCaptureFixture, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A flush every 5 s while the database is down wrote a warning each time (720 lines an hour per
    process). Now the first, then one a minute counting the others, and one line when it writes again."""
    caplog.set_level(logging.INFO, "sentinel.request_stats")
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # nothing listens there
    clock = FakeClock()
    outcomes = RequestOutcomes(FakeClock(T0))
    writer = RequestStatsWriter(session_factory(engine), outcomes, clock=clock)
    try:
        for _ in range(4):
            outcomes.record(200)
            await writer.flush()
        clock.advance(61)
        await writer.flush()
    finally:
        await engine.dispose()
    kept = [r for r in caplog.records if r.message.startswith("could not write request statistics")]
    assert len(kept) == 2 and getattr(kept[1], "suppressed", None) == 3
    writer._sessions = sessions  # the database is back
    await writer.flush()
    assert [r.message for r in caplog.records].count("request statistics written again") == 1
    assert outcomes.take() == {}  # every count written


async def test_counts_being_written_when_the_server_stops_are_written(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stop()` cancelled the loop: a flush under way at that moment had taken the counts from the
    counter, and its cancelled write lost them (the final flush found nothing). The loop now ends
    after its flush; the counts reach the table."""
    import sentinel.governance.request_stats as module

    gate, entered = asyncio.Event(), []
    write = module.upsert_adding

    async def gated(*args: Any, **kwargs: Any) -> None:
        entered.append(True)
        await gate.wait()
        await write(*args, **kwargs)

    monkeypatch.setattr(module, "upsert_adding", gated)
    outcomes = RequestOutcomes(FakeClock(T0))
    for status in (200, 200, 500):
        outcomes.record(status)
    writer = RequestStatsWriter(sessions, outcomes, interval=0)
    writer.start()
    await until(lambda: bool(entered))
    stopping = asyncio.create_task(writer.stop())
    for _ in range(10):
        await asyncio.sleep(0)  # loop turns: stop() has begun
    gate.set()
    await stopping
    buckets = await RequestStats(sessions).series(MINUTE0, MINUTE0 + 10, 5)
    assert [(b.requests, b.server_errors) for b in buckets] == [(3, 1)]
