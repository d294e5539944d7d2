"""The usage deliverer, one cycle at a time (`deliver_once`, `drain`): batches, backoff on
failure, partial refusal, settle failures, orphans; and the loop's start/stop. No sleeps: the
backoff policy and the clock are injected. (Batch identity end to end: test_deliverer_batches.py.)"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.backoff import Backoff
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, UsageBatchRefused
from sentinel.governance.ledger import SqlLedger, SqlLedgerSink
from sentinel.observability.metrics import Metrics
from sentinel.quota.batch import Batch, is_batch_key
from sentinel.quota.deliverer import MAX_SINK_WAIT, UsageDeliverer, delivery_backoff
from sentinel.quota.outbox import RESCUE_AT_ONCE, DurableOutbox, RedisStreamOutbox, SqlOutbox
from tests.support.clock import FakeClock
from tests.support.metrics import counted
from tests.support.outbox import OutboxPart, usage_record
from tests.support.outbox_worlds import age_redis_stream
from tests.support.waiting import reached, until


class Sink:
    """A usage sink the test controls: `down`, `refuse` (request ids), `hang`, `crash_once`."""

    name = "fake"

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.keys: list[str] = []
        self.down = False
        self.refuse: set[str] = set()
        self.hang = False
        self.crash_once = False
        self.asks: float | None = None  # while down, the wait it asks for (`resend_after`)

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        if self.crash_once:
            self.crash_once = False
            raise RuntimeError("a bug in the sink")
        if self.hang:
            await asyncio.Event().wait()
        self.keys.append(idempotency_key)
        if self.down:
            raise GovernanceUnavailable("ledger unavailable", resend_after=self.asks)
        self.delivered += [r.request_id for r in records if r.request_id not in self.refuse]
        return [r.request_id for r in records if r.request_id in self.refuse]


class CountingBackoff(Backoff):
    """The real policy's shape with a delay of `retry` seconds, so the test can tell retries apart."""

    def delay(self, retry: int) -> float:
        return float(retry)


class Setup:
    def __init__(self, *, batch_size: int = 500, interval: float = 3600) -> None:
        self.part = OutboxPart("sql")
        self.outbox = DurableOutbox(self.part)  # type: ignore[arg-type]
        self.sink = Sink()
        self.metrics = Metrics()
        self.clock = FakeClock()
        self.deliverer = UsageDeliverer(
            self.outbox, self.sink, self.metrics, interval=interval, batch_size=batch_size,
            backoff=CountingBackoff(base=1, cap=30), clock=self.clock,
        )

    async def put(self, *ids: str) -> None:
        for rid in ids:
            await self.outbox.put(usage_record(rid))

    def deliveries(self, result: str) -> float:
        return counted(self.metrics, "sentinel_usage_deliveries_total", result=result)


async def test_a_batch_is_delivered_then_acknowledged() -> None:
    s = Setup()
    await s.put("r1", "r2", "r3")
    assert await s.deliverer.deliver_once() == 3
    assert s.sink.delivered == ["r1", "r2", "r3"] and s.part.acked == ["r1", "r2", "r3"]
    assert await s.outbox.depth() == 0
    assert s.deliveries("success") == 1
    assert counted(s.metrics, "sentinel_usage_delivered_records_total") == 3
    assert await s.deliverer.deliver_once() == 0  # nothing left


async def test_drain_delivers_batch_after_batch() -> None:
    s = Setup(batch_size=2)
    await s.put("r1", "r2", "r3", "r4", "r5")
    await s.deliverer.drain()
    assert s.sink.delivered == ["r1", "r2", "r3", "r4", "r5"]
    assert len(s.sink.keys) == 3


async def test_each_batch_has_a_fresh_recognisable_key() -> None:
    s = Setup(batch_size=2)
    await s.put("r1", "r2", "r3")
    await s.deliverer.drain()
    assert len(set(s.sink.keys)) == 2 and all(is_batch_key(k) for k in s.sink.keys)


async def test_a_failed_delivery_backs_off_longer_each_time_and_keeps_the_batch() -> None:
    s = Setup()
    await s.put("r1", "r2")
    s.sink.down = True
    assert await s.deliverer.deliver_once() == 0
    for delay in (1, 2):  # CountingBackoff: retry n waits n seconds
        s.clock.advance(delay - 0.001)
        assert await s.deliverer.deliver_once() == 0
        assert len(s.sink.keys) == delay  # not due yet: the sink was not called again
        s.clock.advance(0.001)
        assert await s.deliverer.deliver_once() == 0
        assert len(s.sink.keys) == delay + 1
    assert s.deliverer.failures == 3 and s.deliveries("failure") == 3
    assert s.part.acked == [] and s.part.retried == [] and await s.outbox.depth() == 2
    s.sink.down = False
    s.clock.advance(3)
    assert await s.deliverer.deliver_once() == 2
    assert s.deliverer.failures == 0  # the next outage starts from the shortest delay again
    s.sink.down = True
    await s.put("r3")
    await s.deliverer.deliver_once()
    s.clock.advance(1)
    await s.deliverer.deliver_once()
    assert s.sink.keys[-1] == s.sink.keys[-2] and len(set(s.sink.keys)) == 2


async def test_a_retried_batch_keeps_its_idempotency_key_and_records() -> None:
    s = Setup()
    await s.put("r1", "r2")
    s.sink.down = True
    await s.deliverer.deliver_once()
    await s.put("r3")  # arrives meanwhile: not part of the batch being retried
    s.sink.down = False
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 2
    assert len(s.sink.keys) == 2 and s.sink.keys[0] == s.sink.keys[1]
    assert await s.deliverer.deliver_once() == 1
    assert s.sink.delivered == ["r1", "r2", "r3"] and s.sink.keys[2] != s.sink.keys[0]


async def test_a_batch_the_outbox_no_longer_holds_is_let_go_not_sent_again() -> None:
    """Renewing finds nothing under its key: another deliverer took it over and settled it (whole, or
    apart after a refusal of that key — sent whole again, a sink remembering no refusal applied it
    twice). The retry sends nothing and the deliverer claims afresh."""
    s = Setup()
    await s.put("r1")
    s.sink.down = True
    await s.deliverer.deliver_once()
    s.part.held.clear()
    s.part.items.pop("r1")  # (settled by the other)
    s.sink.down = False
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 0
    assert s.sink.delivered == [] and len(s.sink.keys) == 1 and s.deliverer.held is None


async def test_a_drain_goes_on_past_a_batch_it_let_go() -> None:
    """Letting go of a batch another deliverer settled is no "nothing left": the next batch goes in
    the same cycle. It returned 0 there, and a shutdown's drain (until a cycle delivers nothing)
    stopped with batches left (durable, sent after the restart)."""
    s = Setup(batch_size=1)
    await s.put("r1", "r2", "r3")
    s.sink.down = True
    await s.deliverer.deliver_once()  # r1's batch fails: held for its retry
    s.part.held.clear()  # its lease ran out: another deliverer took it over and settled it
    s.part.items.pop("r1")
    s.sink.down = False
    await s.deliverer.drain()
    assert s.sink.delivered == ["r2", "r3"] and await s.outbox.depth() == 0


async def test_records_refused_one_by_one_wait_the_longest_delay_the_rest_are_settled() -> None:
    s = Setup()
    await s.put("r1", "r2", "r3")
    s.sink.refuse = {"r2"}
    assert await s.deliverer.deliver_once() == 2
    assert s.part.acked == ["r1", "r3"]
    assert s.part.retried == [("r2", 30.0)]  # the backoff's cap
    assert s.deliveries("partial") == 1 and s.deliverer.failures == 0


async def test_a_settle_that_fails_is_retried_without_delivering_again() -> None:
    s = Setup()
    await s.put("r1")
    s.part.settle_down = True
    assert await s.deliverer.deliver_once() == 0
    assert s.sink.delivered == ["r1"] and await s.outbox.depth() == 1
    s.part.settle_down = False
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 1
    assert s.sink.delivered == ["r1"] and await s.outbox.depth() == 0


async def test_orphans_are_stored_before_the_next_claim() -> None:
    s = Setup()
    s.part.down = True
    await s.put("r1")
    assert [r.request_id for r in s.outbox.orphans] == ["r1"]
    s.part.down = False
    assert await s.deliverer.deliver_once() == 1
    assert s.outbox.orphans == [] and s.sink.delivered == ["r1"]


async def test_the_loop_delivers_at_once_and_stop_drains_the_rest() -> None:
    s = Setup(interval=3600)
    await s.put("r1", "r2")
    s.deliverer.start()
    await until(lambda: len(s.sink.delivered) == 2)
    await s.put("r3")  # arrives while the loop waits out its (long) interval
    await asyncio.wait_for(s.deliverer.stop(drain_timeout=5), 5)
    assert s.sink.delivered == ["r1", "r2", "r3"]
    assert counted(s.metrics, "sentinel_usage_outbox_depth") == 0


async def test_the_loop_survives_a_crashing_cycle(caplog: pytest.LogCaptureFixture) -> None:
    """A bug outside the sink (here the outbox's claim) crashes one cycle, logged; the next delivers.
    (A sink's own failure, whatever it is, is a delivery failure with backoff: tested above.)"""
    s = Setup(interval=0.001)
    await s.put("r1")
    claim = s.outbox.claim
    crashes = [RuntimeError("a bug in the outbox")]

    async def claim_once(limit: int) -> Any:
        if crashes:
            raise crashes.pop()
        return await claim(limit)

    s.outbox.claim = claim_once  # type: ignore[method-assign]
    s.deliverer.start()
    await until(lambda: s.sink.delivered == ["r1"])  # the cycle after the crash delivered
    await asyncio.wait_for(s.deliverer.stop(), 5)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["usage deliverer cycle crashed"]
    assert s.sink.delivered == ["r1"] and await s.outbox.depth() == 0


async def test_stop_gives_up_draining_after_its_timeout() -> None:
    s = Setup()
    s.sink.hang = True
    await s.put("r1")
    await asyncio.wait_for(s.deliverer.stop(drain_timeout=0.01), 5)
    assert await s.outbox.depth() == 1  # left for the next start


async def test_stop_cuts_a_delivery_still_under_way_at_its_timeout_and_keeps_what_memory_holds() -> None:
    """SIGTERM while the loop waited on the sink (a database or Zion that does not answer): `stop`
    awaited that cycle with no bound, so shutdown overran its timeout, the records only memory held
    were never stored (the process is killed first) and nothing closed after the deliverer ran. The
    cycle is cut at the timeout: its batch stays in the outbox under its key."""
    s = Setup(interval=0.001)
    s.sink.hang = True
    await s.put("r1")
    s.deliverer.start()
    await until(lambda: s.deliverer.held is not None)  # the loop is stuck in the sink's call
    s.part.down = True
    await s.put("r2")  # kept in memory meanwhile
    s.part.down = False
    await asyncio.wait_for(s.deliverer.stop(drain_timeout=0.05), 2)
    assert sorted(s.part.items) == ["r1", "r2"] and s.outbox.orphans == []  # r1 undelivered, r2 stored


async def test_the_real_outbox_reaches_the_real_ledger_exactly_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    outbox = DurableOutbox(SqlOutbox(sessions, lease_seconds=0))
    ledger = SqlLedger(sessions)
    deliverer = UsageDeliverer(outbox, SqlLedgerSink(ledger), Metrics(), batch_size=7)
    for i in range(20):
        await outbox.put(usage_record(f"r{i}", tokens=i))
    await deliverer.drain()
    assert await outbox.depth() == 0
    await deliverer.drain()  # nothing is delivered twice
    (totals,) = await ledger.totals("alice")
    assert (totals["requests"], totals["input_tokens"]) == (20, sum(range(20)))


async def test_a_sink_failing_in_a_way_that_is_no_outage_backs_off_the_same_way() -> None:
    """Odd JSON from Zion (a TypeError), a bug: the batch used to be re-sent every cycle, with no
    backoff and a traceback each time (carrying the batch's records)."""
    s = Setup()
    await s.put("r1")
    s.sink.crash_once = True
    assert await s.deliverer.deliver_once() == 0
    assert (s.deliverer.failures, s.deliveries("failure"), s.sink.keys) == (1, 1, [])
    s.clock.advance(0.999)
    assert await s.deliverer.deliver_once() == 0 and s.sink.keys == []  # not due yet
    s.clock.advance(0.001)
    assert await s.deliverer.deliver_once() == 1 and s.sink.delivered == ["r1"]


async def test_a_record_the_ledger_cannot_store_is_refused_alone(sessions: async_sessionmaker[AsyncSession]) -> None:
    """One record the database refuses (here a count past 64 bits) made the whole batch fail, every
    time: its neighbours never reached the ledger and the deliverer was stuck on it. It is refused on
    its own (it stays in the outbox) and the rest is recorded, exactly once."""
    outbox = DurableOutbox(SqlOutbox(sessions, lease_seconds=0))
    for record in ONE_BAD:
        await outbox.put(record)
    await assert_the_good_recorded_the_bad_kept(sessions, outbox)


ONE_BAD = (usage_record("ok1", tokens=1), usage_record("bad", tokens=2**63), usage_record("ok2", tokens=2))


async def assert_the_good_recorded_the_bad_kept(
    sessions: async_sessionmaker[AsyncSession], outbox: DurableOutbox
) -> None:
    """Deliver what `outbox` holds of ONE_BAD: the two good records reach the ledger, the bad one stays."""
    ledger = SqlLedger(sessions)
    await UsageDeliverer(outbox, SqlLedgerSink(ledger), Metrics(), batch_size=10).drain()
    (totals,) = await ledger.totals("alice")
    assert (totals["requests"], totals["input_tokens"]) == (2, 3)
    assert await outbox.depth() == 1  # the refused record, kept


async def test_a_record_the_ledger_cannot_store_loses_none_written_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Straight to the ledger (one process, built-in ledger), records of concurrent requests share
    one write: one the database refuses used to fail the others' requests and lose every record of
    the group. The others are recorded; the group is kept in the outbox table (delivered again, each
    request once) and the request is not failed."""
    from sentinel.quota.outbox import LedgerOutbox

    table = SqlOutbox(sessions, lease_seconds=0)
    outbox = DurableOutbox(table, ledger=LedgerOutbox(SqlLedgerSink(SqlLedger(sessions))))
    await asyncio.gather(*(outbox.put(record) for record in ONE_BAD))  # one group; none raises
    await assert_the_good_recorded_the_bad_kept(sessions, outbox)


async def test_a_batch_whose_every_record_is_refused_hands_each_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Every record refused one by one was a failure: the batch stayed under its key with this
    deliverer on it for ever (`test_records_the_ledger_refuses_never_hold_up_the_records_after_them`).
    They are refused, each (the deliverer pauses after such a batch: tested below)."""
    sink = SqlLedgerSink(SqlLedger(sessions))
    bad = [usage_record("bad1", tokens=2**63), usage_record("bad2", tokens=2**63)]
    assert await sink.deliver(bad, "key") == ["bad1", "bad2"]


async def test_a_statement_the_database_cannot_run_is_a_failure_not_refusals() -> None:
    """A schema not migrated (PostgreSQL: `ProgrammingError`, an undefined table or column) is no
    record's fault: the batch is retried whole under its key, with backoff, never refused record by
    record (each then waited for a new key, with an error line each)."""
    from sqlalchemy.exc import ProgrammingError

    class Unmigrated(SqlLedger):
        def __init__(self) -> None:
            self.calls = 0

        async def record_batch(self, records: list[UsageRecord]) -> int:
            self.calls += 1
            raise ProgrammingError("INSERT INTO usage_ledger ...", {}, Exception("column does not exist"))

    ledger = Unmigrated()
    with pytest.raises(GovernanceUnavailable):
        await SqlLedgerSink(ledger).deliver([usage_record("r1"), usage_record("r2")], "key")
    assert ledger.calls == 1


async def test_after_a_batch_refused_whole_the_next_claim_waits_a_backoff() -> None:
    """A sink that refuses every record (a database that takes no row) is asked at the backoff's
    pace, growing while it refuses whole batches, not once an interval; a batch it takes ends the
    pause, and so does one record refused alone (that says nothing of the next)."""
    s = Setup()
    s.sink.refuse = {"r1", "r2", "r3"}
    await s.put("r1", "r2")
    assert await s.deliverer.deliver_once() == 0 and len(s.sink.keys) == 1
    assert s.part.retried == [("r1", 30.0), ("r2", 30.0)]  # settled: waiting for a new batch, not held
    await s.put("r3")
    assert await s.deliverer.deliver_once() == 0 and len(s.sink.keys) == 1  # paused: nothing claimed
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 0 and len(s.sink.keys) == 2  # r1, r2, r3: refused
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 0 and len(s.sink.keys) == 2  # the second pause is longer
    s.clock.advance(1)
    await s.put("r4")
    assert await s.deliverer.deliver_once() == 1 and s.sink.delivered == ["r4"]
    await s.put("r5")
    assert await s.deliverer.deliver_once() == 1 and len(s.sink.keys) == 4  # no pause after a batch it took
    s2 = Setup()
    s2.sink.refuse = {"r1"}
    await s2.put("r1")
    assert await s2.deliverer.deliver_once() == 0
    await s2.put("r2")
    assert await s2.deliverer.deliver_once() == 1  # r1 (refused again) and r2: no pause after r1 alone


async def test_orphans_are_stored_while_a_batch_waits_for_its_retry() -> None:
    """They were rescued only when no batch was held: during a long outage of the sink they stayed
    in memory, lost at the next restart."""
    s = Setup()
    await s.put("r1")
    s.sink.down = True
    assert await s.deliverer.deliver_once() == 0  # r1's batch is held, waiting for its retry
    s.part.down = True
    await s.put("r2")  # stored nowhere durable: in memory
    s.part.down = False
    await s.deliverer.deliver_once()  # not due yet: the batch waits, but r2 is stored
    assert s.outbox.orphans == [] and "r2" in s.part.items


async def test_stop_stores_what_only_memory_holds_or_logs_it_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    from sentinel.quota.outbox import MemoryOutbox

    s = Setup()
    s.part.down = True
    await s.put("r1", "r2")  # in memory only
    s.sink.down = True
    await s.deliverer.deliver_once()  # claims r1, r2 from memory, fails: held
    assert s.deliverer.held is not None and s.deliverer.held.backend == MemoryOutbox.backend
    s.part.down = False
    await s.deliverer.stop(drain_timeout=1)
    assert sorted(s.part.items) == ["r1", "r2"] and s.outbox.orphans == []  # durable before exit
    s2 = Setup()
    s2.part.down = s2.sink.down = True  # nothing durable, no sink: at exit, r3 is lost, loudly
    await s2.put("r3")
    with caplog.at_level("ERROR", logger="sentinel.deliverer"):
        await s2.deliverer.stop(drain_timeout=1)
    assert any(getattr(r, "request_ids", None) == ["r3"] for r in caplog.records)


async def test_stop_keeps_in_memory_only_the_parts_of_a_batch_delivered_apart_the_sink_did_not_take() -> None:
    """A batch claimed from memory that the sink refused whole is delivered apart; at shutdown, with
    one part delivered (applied under its part key) and another still failing, only the undelivered
    record goes back to be stored: putting the delivered one back too sent it again after the
    restart under a new batch key, which the sink counted a second time."""
    from sentinel.errors import UsageBatchRefused

    class SplitSink(Sink):
        async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
            if len(records) > 1:
                raise UsageBatchRefused("refused whole (400)")
            if records[0].request_id == "r2":
                raise GovernanceUnavailable("the part of r2 fails")
            return await super().deliver(records, idempotency_key)

    s = Setup()
    s.deliverer.sink = SplitSink()
    s.part.down = True
    await s.put("r1", "r2")  # in memory only
    assert await s.deliverer.deliver_once() == 0  # refused whole, delivered apart: r1 taken, r2 failed
    assert s.deliverer.sink.delivered == ["r1"]  # type: ignore[attr-defined]
    s.part.down = False
    await s.deliverer.stop(drain_timeout=1)
    assert sorted(s.part.items) == ["r2"] and s.outbox.orphans == []  # r1 was delivered: not kept again


async def test_a_batch_held_in_memory_goes_to_the_table_under_its_key_at_its_next_failure() -> None:
    """A batch claimed from memory (no outbox took its records) stayed there until the sink answered,
    however long the table had been back: a crash meanwhile lost it. At a failure it is stored under
    its key, due when its retry would have been, and taken over from there under the same key."""
    s = Setup()
    s.part.down = True
    await s.put("r1", "r2")
    s.sink.down = True
    assert await s.deliverer.deliver_once() == 0  # claimed from memory, failed, the table down: held
    held = s.deliverer.held
    assert held is not None and held.backend == "memory" and s.part.adopted == []
    s.part.down = False
    s.clock.advance(1)  # its retry is due
    assert await s.deliverer.deliver_once() == 0  # failed again: stored, due 2 s later (the backoff)
    assert s.part.adopted == [(held.key, 2.0)] and s.outbox.orphans == [] and s.deliverer.held is None
    assert sorted(s.part.items) == ["r1", "r2"]
    s.sink.down = False
    assert await s.deliverer.deliver_once() == 2
    assert s.sink.keys == [held.key] * 3 and s.part.items == {}


async def test_stop_stores_a_batch_held_in_memory_under_its_key() -> None:
    """At shutdown, a batch claimed from memory whose delivery is cut short is stored under its key:
    sent after the restart under a new one, a sink that had applied it counted it twice."""
    s = Setup()
    s.part.down = True
    await s.put("r1", "r2")
    s.sink.down = True
    await s.deliverer.deliver_once()
    held = s.deliverer.held
    assert held is not None and held.backend == "memory"
    s.part.down = s.sink.down = False
    s.sink.hang = True  # the drain's attempt never answers: cut short
    await asyncio.wait_for(s.deliverer.stop(drain_timeout=0.05), 2)
    assert s.part.adopted == [(held.key, 0.0)] and sorted(s.part.items) == ["r1", "r2"]
    assert s.outbox.orphans == []


async def test_stop_stores_a_memory_batch_elsewhere_when_the_table_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storing the batch under its key waits on the table: one that never answers (a hung database)
    took the whole time left to keep what memory holds, and the records were lost though the stream
    could take them. It gets half; the records then go to the stream (under a new key)."""
    from sentinel.quota import deliverer as module

    class HungTable(OutboxPart):
        async def adopt(self, batch: Batch, retry_in: float) -> None:
            self._check(self.down)
            await asyncio.Event().wait()  # up, and never answering

    monkeypatch.setattr(module, "KEEP_TIMEOUT", 0.2)  # (the real one is 5 s)
    stream, table = OutboxPart("redis"), HungTable("sql")
    outbox = DurableOutbox(table, stream)  # type: ignore[arg-type]
    sink = Sink()
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=CountingBackoff(base=1, cap=30), clock=FakeClock())
    stream.down = table.down = sink.down = True
    await outbox.put(usage_record("r1"))
    await deliverer.deliver_once()  # claimed from memory, failed; nothing durable takes it
    assert deliverer.held is not None and deliverer.held.backend == "memory"
    stream.down = table.down = False
    sink.down, sink.hang = False, True
    await asyncio.wait_for(deliverer.stop(drain_timeout=0.05), 5)
    assert list(stream.items) == ["r1"] and outbox.orphans == []


def test_a_held_batch_is_retried_well_inside_its_lease() -> None:
    """Retries waited up to 30 s, the lease's own length: another replica took the batch over while
    its holder still sent it."""
    from sentinel.quota.deliverer import delivery_backoff

    for lease in (30.0, 6.0, 90.0):
        backoff = delivery_backoff(lease)
        assert max(backoff.delay(n) for n in range(1, 40)) <= lease / 3
    assert delivery_backoff(300.0).cap == 30.0


def test_the_backoff_survives_any_number_of_retries() -> None:
    """2.0 ** 1024 overflowed: after ~2 hours of a sink outage every cycle crashed, and `stop` raised
    before keeping what only memory held."""
    from sentinel.quota.deliverer import delivery_backoff

    assert delivery_backoff(30.0).delay(5000) <= 10.0
    assert Backoff(base=0.5, cap=30.0).delay(10**9) <= 30.0


async def test_a_rescue_cut_short_loses_no_record() -> None:
    """The records left memory before they were stored: a rescue cancelled (a shutdown deadline)
    between the two lost them."""

    class SlowPart(OutboxPart):
        def __init__(self) -> None:
            super().__init__("sql")
            self.gate = asyncio.Event()
            self.waiting = False
            self.puts: list[str] = []

        async def put(self, record: UsageRecord) -> None:
            self._check(self.down)
            self.waiting = True
            self.puts.append(record.request_id)
            await self.gate.wait()
            await super().put(record)

    part = SlowPart()
    outbox = DurableOutbox(part)  # type: ignore[arg-type]
    part.down = True
    for rid in ("r1", "r2", "r3"):
        await outbox.put(usage_record(rid))
    part.down = False
    rescue = asyncio.ensure_future(outbox.rescue_orphans())
    await until(lambda: part.waiting)  # blocked on the first record's put
    rescue.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rescue
    assert sorted(r.request_id for r in outbox.orphans) == ["r1", "r2", "r3"]
    await outbox.rescue_orphans()  # their writes are still under way: not stored a second time
    part.gate.set()
    await until(lambda: not outbox.orphans)  # each left memory once its write ended
    assert sorted(part.items) == ["r1", "r2", "r3"] and sorted(part.puts) == ["r1", "r2", "r3"]


async def test_a_record_whose_rescue_is_under_way_is_not_delivered_from_memory_too() -> None:
    """A rescue cut short (a shutdown's drain timeout) leaves the writes it began running, their
    records in memory until each ends; the drain's claim then took them from memory and sent them
    under a new batch key while their writes still stored them in the outbox, from where they were
    sent again: counted twice by Zion, whose increments carry no id. They are not claimed from memory
    while their writes are under way."""

    class SlowPart(OutboxPart):
        def __init__(self) -> None:
            super().__init__("sql")
            self.gate = asyncio.Event()
            self.waiting = False

        async def put(self, record: UsageRecord) -> None:
            self._check(self.down)
            self.waiting = True
            await self.gate.wait()
            await super().put(record)

    part = SlowPart()
    outbox = DurableOutbox(part)  # type: ignore[arg-type]
    sink = Sink()
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=CountingBackoff(base=1, cap=30), clock=FakeClock())
    part.down = True
    for rid in ("r1", "r2"):
        await outbox.put(usage_record(rid))
    part.down = False
    rescue = asyncio.ensure_future(outbox.rescue_orphans())
    await until(lambda: part.waiting)
    rescue.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rescue
    assert await deliverer.deliver_once() == 0  # nothing claimed from memory: their writes go on
    assert sink.delivered == [] and deliverer.held is None
    part.gate.set()
    await until(lambda: not outbox.orphans)
    while await deliverer.deliver_once():
        pass
    assert sorted(sink.delivered) == ["r1", "r2"]


async def test_a_record_no_outbox_takes_stays_in_memory_without_stopping_the_deliverer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error that is no outage, raised storing one orphan, escaped every cycle before the claim:
    this replica delivered nothing more."""

    class PickyPart(OutboxPart):
        async def put(self, record: UsageRecord) -> None:
            if record.request_id == "odd":
                raise ValueError("a value the outbox cannot store")
            await super().put(record)

    part = PickyPart("sql")
    outbox = DurableOutbox(part)  # type: ignore[arg-type]
    outbox.memory._waiting.append((0.0, usage_record("odd")))
    sink = Sink()
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=CountingBackoff(base=1, cap=30), clock=FakeClock())
    await outbox.put(usage_record("r1"))
    with caplog.at_level("ERROR", logger="sentinel.outbox"):
        assert await deliverer.deliver_once() == 1  # r1 delivered all the same
    assert [r.request_id for r in outbox.orphans] == ["odd"] and sink.delivered == ["r1"]


@pytest.fixture(params=["table", pytest.param("redis-stream", marks=pytest.mark.redis)])
async def poison_outbox(
    request: pytest.FixtureRequest, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[DurableOutbox, Callable[[float], Awaitable[None]]]]:
    """A durable outbox (the table alone, or a real Redis stream in front of it) and how to let
    `seconds` pass for what waits in it (rows' retry times, stream entries' idle times)."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    table = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    if request.param == "table":

        async def age(seconds: float) -> None:
            now[0] += timedelta(seconds=seconds)

        yield DurableOutbox(table), age
        return
    from sentinel.store.redis import RedisStore

    store = RedisStore(request.getfixturevalue("redis_url"), timeout=5.0)
    yield DurableOutbox(table, RedisStreamOutbox(store, lease_seconds=30)), lambda s: age_redis_stream(store, s)
    await store.close()


async def test_records_the_ledger_refuses_never_hold_up_the_records_after_them(
    sessions: async_sessionmaker[AsyncSession],
    poison_outbox: tuple[DurableOutbox, Callable[[float], Awaitable[None]]],
) -> None:
    """Two records the ledger cannot store, refused together, came back together in a batch of their
    own; every record of it refused made it a failure, retried under its key for ever, and this
    deliverer never claimed another batch: on one replica, no usage reached the ledger again. They
    are refused (kept in the outbox), and the next records are delivered."""
    outbox, age = poison_outbox
    ledger = SqlLedger(sessions)
    clock = FakeClock()
    deliverer = UsageDeliverer(outbox, SqlLedgerSink(ledger), Metrics(), backoff=CountingBackoff(base=1, cap=30),
                               clock=clock)
    for record in (usage_record("bad1", tokens=2**63), usage_record("bad2", tokens=2**63), usage_record("ok1")):
        await outbox.put(record)
    assert await deliverer.deliver_once() == 1  # ok1; the two bad ones go back, under a new key
    await age(31)
    assert await deliverer.deliver_once() == 0  # the two bad ones alone: refused again
    await outbox.put(usage_record("ok2"))
    clock.advance(3600)
    assert await deliverer.deliver_once() == 1  # ok2: the deliverer is not stuck on them
    (totals,) = await ledger.totals("alice")
    assert totals["requests"] == 2
    assert await outbox.depth() == 2  # the bad ones, kept


async def test_a_long_rescue_keeps_the_held_batch_leased(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Records memory holds (both outboxes were down) are stored at the top of every cycle, also while
    a batch waits for its retry; 100,000 of them can take longer than the lease (one by one they
    took ~80 s on SQLite). The held batch's lease was renewed only before its retry, after the
    rescue: it ran out meanwhile, another replica took the batch over, and both sent it (a Zion
    that ignores keys counts it twice). Time moves only as records are stored (10 s a write)."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    clock = FakeClock()

    def tick() -> None:
        now[0] += timedelta(seconds=10)
        clock.advance(10)

    sql = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    outbox = DurableOutbox(sql)
    sink = Sink()
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=delivery_backoff(30), clock=clock)
    await outbox.put(usage_record("held"))
    sink.down = True
    assert await deliverer.deliver_once() == 0 and deliverer.held is not None  # waits for its retry
    held = deliverer.held
    for n in range(4 * RESCUE_AT_ONCE):  # kept in memory while no outbox could take them
        await outbox.memory.put(usage_record(f"orphan{n}"))
    other = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])  # another replica's
    taken: list[Batch | None] = []
    write = sql._write

    async def slow_write(records: list[UsageRecord]) -> None:
        await write(records)
        tick()
        taken.append(await other.claim(500))

    sql._group._write = slow_write  # type: ignore[method-assign]
    await deliverer.deliver_once()
    assert outbox.orphans == []
    assert [b.key for b in taken if b is not None and b.key == held.key] == []  # nobody else took it


async def test_a_wait_the_sink_asks_for_outlasting_the_lease_keeps_the_batch(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A sink asking for a wait longer than the lease (Zion's Retry-After: 120, a lease of 30 s): the
    lease is renewed every third of a lease while the deliverer waits, never the sink called; else
    another replica took the batch over and sent it at once, Retry-After or not."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    clock = FakeClock()
    sql = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])
    other = SqlOutbox(sessions, lease_seconds=30, clock=lambda: now[0])  # another replica's
    sink = Sink()
    deliverer = UsageDeliverer(DurableOutbox(sql), sink, Metrics(), backoff=delivery_backoff(30), clock=clock)
    await sql.put(usage_record("r1"))
    sink.down, sink.asks = True, 120.0
    assert await deliverer.deliver_once() == 0
    for _ in range(11):  # 110 s, a cycle every 10 s
        now[0] += timedelta(seconds=10)
        clock.advance(10)
        assert await deliverer.deliver_once() == 0
        assert await other.claim(10) is None  # still this deliverer's
    assert len(sink.keys) == 1
    sink.down = False
    now[0] += timedelta(seconds=10)
    clock.advance(10)
    assert await deliverer.deliver_once() == 1
    assert sink.keys == [sink.keys[0]] * 2 and await sql.depth() == 0


async def test_a_wait_the_sink_asks_for_holds_back_every_batch_and_is_at_least_the_backoff() -> None:
    """While the sink's wait lasts nothing is sent to it: not the held batch, nor — once a batch
    claimed from memory is stored under its key and let go of — any other; a wait shorter than the
    backoff (`Retry-After: 0`) is the backoff's, never a deliverer calling the sink every cycle."""
    s = Setup()
    s.part.down = True
    await s.put("r1")
    s.sink.down, s.sink.asks = True, 0.0
    assert await s.deliverer.deliver_once() == 0  # claimed from memory, failed, the table down: held
    assert await s.deliverer.deliver_once() == 0  # the backoff's 1 s: no call
    assert len(s.sink.keys) == 1
    s.clock.advance(1)
    s.sink.asks = 60.0
    s.part.down = False
    assert await s.deliverer.deliver_once() == 0  # failed again, asked for 60 s: stored, let go of
    assert s.deliverer.held is None and sorted(s.part.items) == ["r1"]
    await s.put("r2")
    s.sink.down = False
    s.clock.advance(59.5)
    assert await s.deliverer.deliver_once() == 0
    await s.deliverer.drain()  # nor at shutdown
    assert len(s.sink.keys) == 2
    s.clock.advance(0.5)
    await s.deliverer.drain()
    assert sorted(s.sink.delivered) == ["r1", "r2"]


@pytest.mark.redis
async def test_a_wait_the_sink_asked_one_replica_for_is_honoured_by_every_replica(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    """Zion's Retry-After (or a timed-out call) was honoured by the deliverer it was told to only: the
    other replicas' deliverers (other processes on the same Redis) went on sending their own new
    batches, a burst at a Zion that had just asked for none. The wait is kept in the shared store
    and read once a cycle: the second replica sends nothing before it is over (at most MAX_SINK_WAIT)."""
    from sentinel.store.redis import RedisStore

    store = RedisStore(redis_url, timeout=5.0)
    sink = Sink()

    def replica(clock: FakeClock) -> tuple[DurableOutbox, UsageDeliverer]:
        outbox = DurableOutbox(SqlOutbox(sessions, lease_seconds=30), RedisStreamOutbox(store, lease_seconds=30))
        return outbox, UsageDeliverer(outbox, sink, Metrics(), backoff=delivery_backoff(30), clock=clock)

    try:
        first_outbox, first = replica(FakeClock())
        clock = FakeClock()
        second_outbox, second = replica(clock)
        await first_outbox.put(usage_record("r1"))
        sink.down, sink.asks = True, 60.0
        assert await first.deliver_once() == 0  # the first replica is told to wait 60 s
        sink.down = False
        await second_outbox.put(usage_record("r2"))
        assert await second.deliver_once() == 0
        clock.advance(50)
        assert await second.deliver_once() == 0
        assert sink.keys == [sink.keys[0]] and sink.delivered == []  # the first replica's call alone
        left = await store.ttl(RedisStreamOutbox.QUIET_KEY)
        assert left is not None and 0 < left <= 60
        await store.delete(RedisStreamOutbox.QUIET_KEY)  # (as its expiry, once the wait is over)
        clock.advance(11)
        assert await second.deliver_once() == 1
        assert sink.delivered == ["r2"]
        sink.down, sink.asks = True, 86_400.0  # Zion may ask for a day: shared for MAX_SINK_WAIT at most
        await second_outbox.put(usage_record("r3"))
        assert await second.deliver_once() == 0
        left = await store.ttl(RedisStreamOutbox.QUIET_KEY)
        assert left is not None and 0 < left <= MAX_SINK_WAIT
    finally:
        await store.close()


async def test_a_store_that_does_not_answer_never_stops_delivery_after_a_wait() -> None:
    """The shared wait lives in the store: while it does not answer (Redis down, the records in the
    table), the wait is neither read nor told — the deliverer honours its own, then delivers."""
    stream, table = OutboxPart("redis"), OutboxPart("sql")
    stream.down = True
    outbox = DurableOutbox(table, stream)  # type: ignore[arg-type]
    sink, clock = Sink(), FakeClock()
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=CountingBackoff(base=1, cap=30), clock=clock)
    await outbox.put(usage_record("r1"))
    sink.down, sink.asks = True, 60.0
    assert await deliverer.deliver_once() == 0
    sink.down = False
    clock.advance(59)
    assert await deliverer.deliver_once() == 0 and len(sink.keys) == 1
    clock.advance(1)
    assert await deliverer.deliver_once() == 1 and sink.delivered == ["r1"]


async def test_a_batch_held_in_memory_and_stored_at_shutdown_keeps_the_wait_the_sink_asked_for() -> None:
    """The sink asked for a wait (a timed-out batch it may still be applying, Zion's Retry-After) while
    the table was down: the batch stayed in memory. Stored under its key at shutdown it was due at
    once (`retry_in` 0): the next process took it and sent it while the sink was still applying it,
    which counted it twice. It is due when the wait ends, as a batch stored at its failure is."""
    s = Setup()
    s.part.down = True
    await s.put("r1")
    s.sink.down, s.sink.asks = True, 60.0
    assert await s.deliverer.deliver_once() == 0  # claimed from memory, timed out: held, the table down
    assert s.deliverer.held is not None and s.part.adopted == []
    s.part.down = False
    s.clock.advance(10)
    await s.deliverer.stop(drain_timeout=1)
    assert len(s.sink.keys) == 1  # not sent again at shutdown
    ((key, retry_in),) = s.part.adopted
    assert key == s.sink.keys[0] and retry_in == pytest.approx(50.0)


class Sleeps:
    """An injected `sleep` that returns only when the test says (`wake`): a lease keeper's ticks."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []

    async def __call__(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        await future

    async def wake(self) -> None:
        # (`reached`, not `until`'s loop turns: the renewal in between is a SQL statement, which
        # aiosqlite runs in a thread and asyncpg over a socket — on a loaded machine it outlasted
        # 10,000 turns)
        assert await reached(lambda: bool(self.waiting))
        self.waiting.pop(0).set_result(None)
        assert await reached(lambda: bool(self.waiting))  # asleep again: the renewal in between is done


async def test_a_delivery_longer_than_the_lease_keeps_its_batch(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The lease was renewed only before each retry: a sink call longer than the lease (a Zion call
    with its own retries takes up to ~13 s; USAGE_LEASE_SECONDS of 20 s or less) let another replica
    take the batch over and send it too while this one still sent it. Now a task renews it every
    third of a lease while the delivery runs, and stops with it."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    sql = SqlOutbox(sessions, lease_seconds=6, clock=lambda: now[0])
    other = SqlOutbox(sessions, lease_seconds=6, clock=lambda: now[0])  # another replica's
    answered = asyncio.Event()

    class SlowSink(Sink):
        async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
            await answered.wait()
            return await super().deliver(records, idempotency_key)

    sink, sleeps = SlowSink(), Sleeps()
    deliverer = UsageDeliverer(DurableOutbox(sql), sink, Metrics(), backoff=delivery_backoff(6), sleep=sleeps)
    await sql.put(usage_record("r1"))
    delivery = asyncio.ensure_future(deliverer.deliver_once())
    for _ in range(5):  # 10 s of a sink call: five thirds of the lease
        now[0] += timedelta(seconds=2)
        await sleeps.wake()
        assert await other.claim(10) is None  # still this deliverer's
    answered.set()
    assert await delivery == 1
    assert sink.delivered == ["r1"] and await sql.depth() == 0
    await until(lambda: all(f.cancelled() for f in sleeps.waiting))  # the keeper stopped with the delivery


async def test_records_memory_holds_are_stored_together(sessions: async_sessionmaker[AsyncSession]) -> None:
    """They were stored one by one, a transaction each: ~0.8 ms a record on SQLite, so 100,000 (the
    default SENTINEL_MAX_UNSTORED_RECORDS) took ~80 s — metered requests refused (503) meanwhile,
    and a shutdown, which gives this 5 s, stored ~6,000 and lost the rest. Stored RESCUE_AT_ONCE at
    a time, the table's group commit writes each group in one transaction (100,000: ~4 s)."""
    sql = SqlOutbox(sessions)
    outbox = DurableOutbox(sql)
    for n in range(1000):
        await outbox.memory.put(usage_record(f"r{n}"))
    writes: list[int] = []
    write = sql._write

    async def counted_write(records: list[UsageRecord]) -> None:
        writes.append(len(records))
        await write(records)

    sql._group._write = counted_write  # type: ignore[method-assign]
    await outbox.rescue_orphans()
    assert outbox.orphans == [] and await sql.depth() == 1000 and sum(writes) == 1000
    assert len(writes) <= 8, writes


async def test_the_lease_keeper_never_renews_during_or_after_the_settlement() -> None:
    """A renewal the keeper has begun ends before the batch is settled (not cut short and left to run
    on: a stream's renewal claims the batch's entries for its key, and run after the settlement it
    took the refused ones back from their new batch)."""
    events: list[str] = []
    gate, answered = asyncio.Event(), asyncio.Event()

    class Part(OutboxPart):
        async def renew(self, batch: Batch, hold: float = 0.0) -> bool:
            events.append("renew")
            await gate.wait()
            events.append("renewed")
            return await super().renew(batch, hold)

        async def settle(self, batch: Batch, refused: Collection[str], retry_in: float) -> None:
            events.append("settle")
            await super().settle(batch, refused, retry_in)

    class SlowSink(Sink):
        async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
            await answered.wait()
            return await super().deliver(records, idempotency_key)

    part, sink, sleeps = Part("redis"), SlowSink(), Sleeps()
    sink.refuse = {"r2"}
    outbox = DurableOutbox(part)  # type: ignore[arg-type]
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=delivery_backoff(30), sleep=sleeps)
    for rid in ("r1", "r2"):
        await outbox.put(usage_record(rid))
    delivery = asyncio.ensure_future(deliverer.deliver_once())
    await until(lambda: bool(sleeps.waiting))
    sleeps.waiting.pop(0).set_result(None)
    await until(lambda: events == ["renew"])  # the keeper's renewal is under way
    answered.set()
    await until(lambda: sink.delivered == ["r1"])
    for _ in range(100):
        await asyncio.sleep(0)
    assert events == ["renew"]  # the settlement waits for it
    gate.set()
    assert await delivery == 1
    assert events == ["renew", "renewed", "settle"] and part.retried == [("r2", 10.0)]


class WholeRefusingSink(Sink):
    """Zion refusing a batch whole (400) for one value it rejects, and that record alone for good;
    `sent_at`: when (`clock`) a call held it."""

    def __init__(self, poison: str, clock: FakeClock) -> None:
        super().__init__()
        self.refuse = {poison}
        self.poison = poison
        self.clock = clock
        self.calls = 0
        self.sent_at: list[float] = []

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        self.calls += 1
        if any(r.request_id == self.poison for r in records):
            self.sent_at.append(self.clock())
            if len(records) > 1:
                raise UsageBatchRefused("Zion refused the usage batch whole (400)")
        return await super().deliver(records, idempotency_key)


@pytest.mark.parametrize("backend", ["sql", "memory"])
async def test_a_record_refused_for_good_is_retried_less_and_less_often(
    sessions: async_sessionmaker[AsyncSession], backend: str
) -> None:
    """A record the sink refuses for good waited the same third of a lease before every retry, for
    ever: batched again with the records that came meanwhile, it made Zion refuse each such batch
    whole, every 10 s, and each record with it was then sent on its own — under steady traffic a
    split of a whole batch every 10 s, for as long as the record stayed. Its waits now double, up to
    a cap; every other record is still delivered, once, as it comes."""
    clock = FakeClock()
    start, t0 = datetime(2030, 1, 1, tzinfo=UTC), clock()
    table = SqlOutbox(sessions, lease_seconds=30, clock=lambda: start + timedelta(seconds=clock() - t0))
    if backend == "sql":
        outbox = DurableOutbox(table)
    else:  # no outbox table reachable: the records, and the refused one, wait in memory
        down = OutboxPart("sql")
        down.down = True
        outbox = DurableOutbox(down)  # type: ignore[arg-type]
    outbox.memory.clock = clock
    sink = WholeRefusingSink("poison", clock)
    deliverer = UsageDeliverer(outbox, sink, Metrics(), backoff=delivery_backoff(30), clock=clock)
    await outbox.put(usage_record("poison"))
    for n in range(360):  # an hour, a new record every 10 s
        await outbox.put(usage_record(f"r{n}"))
        assert await deliverer.deliver_once() == 1, n  # the refused record never holds up the others
        clock.advance(10)
    assert sorted(sink.delivered) == sorted(f"r{n}" for n in range(360))  # each once
    tries = sorted(set(sink.sent_at))  # each try: the batch refused whole, then the record alone
    waits = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert waits[1] >= 2 * waits[0] and waits[2] >= 2 * waits[1], waits
    assert len(tries) < 20, waits  # were 360: every 10 s


async def test_a_record_refused_with_a_wait_holds_back_the_parts_not_yet_sent() -> None:
    """Of a batch delivered apart, a record Zion refuses with a Retry-After: the parts not yet sent
    went on at once, calls to a Zion that had just asked for none. They now go after the wait,
    under their part keys; the refused record waits for a new batch."""

    class PartWaitSink(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[tuple[str, ...]] = []

        async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
            self.sent.append(tuple(r.request_id for r in records))
            if len(records) > 1:
                raise UsageBatchRefused("Zion refused the usage batch whole (400)")
            if records[0].request_id == "r0":
                raise UsageBatchRefused("Zion refused the usage batch whole (400)", resend_after=60.0)
            return await super().deliver(records, idempotency_key)

    s = Setup(batch_size=10)
    s.sink = sink = PartWaitSink()
    s.deliverer.sink = sink
    for n in range(10):
        await s.outbox.put(usage_record(f"r{n}"))
    assert await s.deliverer.deliver_once() == 0
    assert len(sink.sent) == 1 + 8  # the batch whole, then the first parts together
    s.clock.advance(59)
    assert await s.deliverer.deliver_once() == 0
    assert len(sink.sent) == 9
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() == 9
    assert sorted(sink.delivered) == sorted(f"r{n}" for n in range(1, 10))  # each once
    assert len(set(sink.keys)) == 9, sink.keys  # each under its own part key


async def test_a_wait_asked_with_a_refusal_of_the_last_parts_holds_back_the_next_batch() -> None:
    """Of a batch delivered apart, a record of the last parts sent refused with a Retry-After: the
    wait was dropped (it only held back parts not yet sent), and the next batch went at once, to a
    Zion that had just asked for none. Nothing goes before the wait is over."""

    class PartWaitSink(Sink):
        async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
            self.keys.append(idempotency_key)
            if len(records) > 1:
                raise UsageBatchRefused("Zion refused the usage batch whole (400)")
            if records[0].request_id == "r0":
                raise UsageBatchRefused("Zion refused the usage batch whole (400)", resend_after=60.0)
            self.delivered.append(records[0].request_id)
            return []

    s = Setup(batch_size=10)
    s.sink = sink = PartWaitSink()
    s.deliverer.sink = sink
    await s.put("r0", "r1")
    assert await s.deliverer.deliver_once() == 1  # r1; r0 refused, with a wait
    assert len(sink.keys) == 3  # the batch whole, then its two parts
    await s.put("r2")
    s.clock.advance(59)
    assert await s.deliverer.deliver_once() == 0
    assert len(sink.keys) == 3
    s.clock.advance(1)
    assert await s.deliverer.deliver_once() > 0
    assert "r2" in sink.delivered
