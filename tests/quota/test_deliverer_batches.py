"""Usage batches keep their identity through the real deliverer, the real outbox and the real Zion
client, against the fake Zion over HTTP (which honours Idempotency-Key, as Zion should).

Every attempt for one batch carries the same request ids and the same key, whatever arrives in
between; a batch Zion applied but whose answer was lost is replayed, not applied again; refused
records come back under another key, accepted ones never; a deliverer that dies holding a batch
is replaced by one that sends the same batch under the same key. At the end Zion has counted every
record exactly once (each record has its own user, so a double count cannot hide in a total).

Only the public surface shared with earlier versions is used (UsageDeliverer, DurableOutbox,
SqlOutbox, RedisStreamOutbox, deliver_once), so these tests state the required behaviour, not
this implementation's shape. Outboxes: SQLite and PostgreSQL tables alone, and each with a stream
in front (a real Redis; the memory store's twin; for some tests a real Redis Cluster).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.backoff import Backoff
from sentinel.breaker import CircuitBreaker
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.zion import ZionClient
from sentinel.governance.zion_sources import ZionSink
from sentinel.observability.metrics import Metrics
from sentinel.quota.deliverer import MAX_SINK_WAIT, UsageDeliverer
from sentinel.quota.outbox import DurableOutbox, RedisStreamOutbox, SqlOutbox
from sentinel.store import MemoryStore, Store
from tests.support.clock import FakeClock
from tests.support.fake_zion import BATCH, FakeZion
from tests.support.lost_replies import LostClusterReply, read_twice_once
from tests.support.outbox_worlds import age_redis_stream
from tests.support.redis_cluster import redis_cluster, redis_cluster_url
from tests.support.servers import serving
from tests.support.waiting import reached

__all__ = ["redis_cluster", "redis_cluster_url"]

LEASE = 30.0
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NO_WAIT = Backoff(base=0.0, cap=0.0)  # retries are due at once: the tests drive every cycle


def record(n: int) -> UsageRecord:
    """Record n of user n (its own email, so Zion's per-user totals show each record's count)."""
    return UsageRecord(
        request_id=f"req-{n}", external_id=f"user-{n}", email=f"user-{n}@example.com", model="gpt-4o-mini",
        provider="openai", endpoint="chat", input_tokens=10 + n, output_tokens=5 + n, usage_source="measured",
        status=200, started_at=NOW, finished_at=NOW + timedelta(seconds=1),
    )


class RecordingSink:
    """ZionSink, noting every attempt: (idempotency key, request ids)."""

    name = "zion"

    def __init__(self, inner: ZionSink) -> None:
        self.inner = inner
        self.attempts: list[tuple[str, tuple[str, ...]]] = []

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        self.attempts.append((idempotency_key, tuple(r.request_id for r in records)))
        return await self.inner.deliver(records, idempotency_key)

    def attempts_with(self, request_id: str) -> list[tuple[str, tuple[str, ...]]]:
        return [a for a in self.attempts if request_id in a[1]]


class Rig:
    """One outbox storage (SQL, maybe a stream in front), the fake Zion, and deliverers on them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], store: Store | None, zion: FakeZion) -> None:
        self.sessions = sessions
        self.store = store
        self.zion = zion
        self.memory_clock: FakeClock | None = None
        self.client = ZionClient(
            zion.url, zion.api_key, timeout=2.0, backoff=Backoff(base=0.001, cap=0.002, attempts=3),
            breaker=CircuitBreaker(threshold=1000), usage_breaker=CircuitBreaker(threshold=1000),
        )
        self.sink = RecordingSink(ZionSink(self.client))

    def outbox(self, lease: float = LEASE) -> DurableOutbox:
        stream = RedisStreamOutbox(self.store, lease_seconds=lease) if self.store is not None else None  # type: ignore[arg-type]
        return DurableOutbox(SqlOutbox(self.sessions, lease_seconds=lease), stream)

    def deliverer(
        self, outbox: DurableOutbox, *, clock: FakeClock | None = None, sink: RecordingSink | None = None
    ) -> UsageDeliverer:
        if clock is None:
            return UsageDeliverer(outbox, sink or self.sink, Metrics(), batch_size=10, backoff=NO_WAIT)
        return UsageDeliverer(outbox, sink or self.sink, Metrics(), batch_size=10, backoff=NO_WAIT, clock=clock)

    async def age(self, seconds: float) -> None:
        """Let time pass for entries pending in the stream (rows' leases are not needed here)."""
        if self.memory_clock is not None:
            self.memory_clock.advance(seconds)
        elif self.store is not None:
            await age_redis_stream(self.store, seconds)

    async def deliver_all(self, deliverer: UsageDeliverer, outbox: DurableOutbox, *, cycles: int = 20) -> None:
        for _ in range(cycles):
            await deliverer.deliver_once()
            if await outbox.depth() == 0:
                return
            await self.age(LEASE)  # refused records wait a lease in a stream
        raise AssertionError(f"outbox not empty after {cycles} cycles: {await outbox.depth()}")

    def counted(self, n: int) -> int:
        user = self.zion.user(f"user-{n}@example.com")
        return 0 if user is None else user.used["aiRequests"]


@pytest.fixture
def zion() -> Iterator[FakeZion]:
    fake = FakeZion()
    for n in range(20):
        fake.add_user(f"tok-{n}", f"user-{n}", f"user-{n}@example.com")
    with serving(fake) as server:
        fake.url = server.url
        yield fake
        fake.hold_batches(False)  # release held requests before the server stops


@pytest.fixture(params=["table", pytest.param("redis-stream", marks=pytest.mark.redis), "memory-stream"])
async def rig(
    request: pytest.FixtureRequest,
    sessions: async_sessionmaker[AsyncSession],
    zion: FakeZion,
) -> AsyncIterator[Rig]:
    store: Store | None = None
    clock: FakeClock | None = None
    if request.param == "redis-stream":
        from sentinel.store.redis import RedisStore

        store = RedisStore(request.getfixturevalue("redis_url"), timeout=5.0)
    elif request.param == "cluster-stream":  # asked for by name (indirect parametrization) only
        from sentinel.store.cluster import RedisClusterStore

        store = RedisClusterStore(request.getfixturevalue("redis_cluster_url"), timeout=5.0)
    elif request.param == "memory-stream":
        clock = FakeClock()
        store = MemoryStore(clock=clock)
    built = Rig(sessions, store, zion)
    built.memory_clock = clock
    yield built
    await built.client.aclose()
    if store is not None:
        await store.close()


async def test_a_failing_batch_is_retried_with_the_same_records_and_key(rig: Rig) -> None:
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.fail_next(3 * 2)  # two whole deliveries fail (the client tries 3 times each)
    assert await deliverer.deliver_once() == 0
    await outbox.put(record(2))  # arrives between the attempts
    assert await deliverer.deliver_once() == 0
    await outbox.put(record(3))
    await rig.deliver_all(deliverer, outbox)
    first = rig.sink.attempts_with("req-0")
    assert len(first) == 3 and len(set(first)) == 1, rig.sink.attempts  # identical key and ids, 3 times
    key, ids = first[0]
    assert sorted(ids) == ["req-0", "req-1"]
    assert all(a[0] != key for a in rig.sink.attempts if a not in first)
    assert [rig.counted(n) for n in range(4)] == [1, 1, 1, 1]


async def test_a_batch_applied_whose_answer_was_lost_is_replayed_not_applied_again(rig: Rig) -> None:
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    for n in (0, 1, 2):
        await outbox.put(record(n))
    rig.zion.lose_batch_answers(3 * 2)  # applied by Zion, the client never hears: twice in a row
    assert await deliverer.deliver_once() == 0
    await outbox.put(record(3))
    await outbox.put(record(4))
    assert await deliverer.deliver_once() == 0
    await outbox.put(record(5))
    await rig.deliver_all(deliverer, outbox)
    assert rig.zion.lost_answers == 6
    first = rig.sink.attempts_with("req-0")
    assert len(set(first)) == 1 and sorted(first[0][1]) == ["req-0", "req-1", "req-2"], rig.sink.attempts
    assert [rig.counted(n) for n in range(6)] == [1] * 6


async def test_refused_records_come_back_under_a_new_key_accepted_ones_never(rig: Rig) -> None:
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    newcomer = replace(record(0), request_id="req-new", email="late@example.com")
    await outbox.put(newcomer)  # Zion does not know this user yet: refused one by one
    for n in (1, 2):
        await outbox.put(record(n))
    assert await deliverer.deliver_once() == 2
    (first,) = rig.sink.attempts
    rig.zion.add_user("tok-late", "late", "late@example.com")
    await rig.deliver_all(deliverer, outbox)
    later = rig.sink.attempts[1:]
    assert later and all(ids == ("req-new",) for _, ids in later), rig.sink.attempts
    assert all(key != first[0] for key, _ in later)
    assert [rig.counted(n) for n in (1, 2)] == [1, 1]
    late = rig.zion.user("late@example.com")
    assert late is not None and late.used["aiRequests"] == 1


async def test_a_dead_deliverers_batch_is_sent_again_under_its_key(rig: Rig) -> None:
    # Lease 0: the dead deliverer's batch may be taken over at once (what waiting out a lease does).
    first_outbox = rig.outbox(lease=0)
    dying = rig.deliverer(first_outbox)
    for n in (0, 1):
        await first_outbox.put(record(n))
    rig.zion.lose_batch_answers(3)
    assert await dying.deliver_once() == 0  # Zion applied it; then this deliverer dies
    del dying
    await first_outbox.put(record(2))  # arrives before the takeover
    successor_outbox = rig.outbox(lease=0)
    await rig.deliver_all(rig.deliverer(successor_outbox), successor_outbox)
    first = rig.sink.attempts_with("req-0")
    assert len(set(first)) == 1 and sorted(first[0][1]) == ["req-0", "req-1"], rig.sink.attempts
    assert [rig.counted(n) for n in range(3)] == [1, 1, 1]
    assert rig.zion.calls[BATCH] >= 3


def outboxes_unreachable(outbox: DurableOutbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every durable part of `outbox` refuses writes, as when neither Redis nor the database answers
    (claims find them empty): records go to memory (`monkeypatch.undo()` brings them back)."""

    async def unreachable(*_: object) -> None:
        raise GovernanceUnavailable("database unavailable")

    monkeypatch.setattr(outbox.sql, "put", unreachable)
    monkeypatch.setattr(outbox.sql, "adopt", unreachable, raising=False)
    if outbox.redis is not None:
        monkeypatch.setattr(outbox.redis, "put", unreachable)


async def test_a_batch_held_in_memory_survives_a_kill9_once_the_table_is_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written while no outbox answered are delivered from memory. Their batch failed; the
    outboxes came back, Zion did not: the batch stayed in memory until Zion answered, and a `kill -9`
    meanwhile lost it, however long the table had been back. It is stored under its key at its next
    failure, and the successor sends it under that key."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    outboxes_unreachable(outbox, monkeypatch)
    for n in (0, 1):
        await outbox.put(record(n))
    assert len(outbox.orphans) == 2
    rig.zion.fail_next(3)  # one delivery (the client tries 3 times)
    assert await deliverer.deliver_once() == 0  # claimed from memory (nothing else takes it): failed
    assert deliverer.held is not None and deliverer.held.backend == "memory"
    monkeypatch.undo()  # the outboxes are back; Zion is not
    rig.zion.fail_next(3)
    assert await deliverer.deliver_once() == 0
    assert outbox.orphans == []  # stored durably, under its key
    del deliverer, outbox  # kill -9: what memory held is gone
    successor = rig.outbox()
    await rig.deliver_all(rig.deliverer(successor), successor)
    assert [rig.counted(n) for n in (0, 1)] == [1, 1], rig.sink.attempts
    first = rig.sink.attempts_with("req-0")
    assert len(first) == 3 and len(set(first)) == 1 and sorted(first[0][1]) == ["req-0", "req-1"], first


async def test_a_batch_held_in_memory_is_stored_under_its_key_at_shutdown(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zion applied a batch delivered from memory and its answer was lost; the shutdown came before
    a retry answered. The batch was stored again without its key, and sent after the restart under
    a new one: Zion counted it twice. It is stored under its key: the restart's send is a replay."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    outboxes_unreachable(outbox, monkeypatch)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.lose_batch_answers(3)  # applied, then every answer of one delivery lost
    assert await deliverer.deliver_once() == 0
    assert [rig.counted(n) for n in (0, 1)] == [1, 1]
    monkeypatch.undo()
    rig.zion.fail_batches(503)  # Zion is down when the process stops
    await deliverer.stop(drain_timeout=5)
    assert outbox.orphans == []
    rig.zion.fail_batches(None)
    successor = rig.outbox()
    await rig.deliver_all(rig.deliverer(successor), successor)
    assert [rig.counted(n) for n in (0, 1)] == [1, 1], rig.sink.attempts
    assert len({key for key, _ in rig.sink.attempts_with("req-0")}) == 1, rig.sink.attempts


# --- a batch Zion refuses whole for one record's value -------------------------------------------
def keys_by_record(sink: RecordingSink) -> dict[str, set[str]]:
    """The keys each record was sent under on its own (a batch delivered apart)."""
    keys: dict[str, set[str]] = {}
    for key, ids in sink.attempts:
        if len(ids) == 1:
            keys.setdefault(ids[0], set()).add(key)
    return keys


async def test_a_batch_refused_whole_for_one_record_delivers_the_others_and_keeps_that_one(rig: Rig) -> None:
    """Zion answered 400 to the whole batch for one value it rejects (an attacker's model name, an
    id): the deliverer stayed on that batch for ever and nothing else of the replica reached Zion."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    rig.zion.refuse_batches_with("evil-model", 400)
    await outbox.put(record(0))
    await outbox.put(replace(record(1), model="evil-model"))
    await outbox.put(record(2))
    assert await deliverer.deliver_once() == 2
    assert [rig.counted(n) for n in range(3)] == [1, 0, 1]
    assert await outbox.depth() == 1  # the refused record is kept, retried later
    whole, *parts = rig.sink.attempts
    assert sorted(whole[1]) == ["req-0", "req-1", "req-2"]
    assert sorted(ids for _, ids in parts) == [("req-0",), ("req-1",), ("req-2",)]
    assert all(key.startswith(whole[0] + ".split:") for key, _ in parts), rig.sink.attempts
    assert len({key for key, _ in parts}) == 3
    # It never blocks what comes after it; once Zion accepts the value, it is counted once.
    for n in (3, 4):
        await outbox.put(record(n))
    for _ in range(3):
        await deliverer.deliver_once()
        await rig.age(LEASE)
    assert [rig.counted(n) for n in range(5)] == [1, 0, 1, 1, 1]
    rig.zion.refuse_batches_with("evil-model", None)
    await rig.deliver_all(deliverer, outbox)
    assert [rig.counted(n) for n in range(5)] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("status", [413, 422])
async def test_other_refusals_of_a_batch_for_its_content_are_delivered_apart(rig: Rig, status: int) -> None:
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    rig.zion.refuse_batches_with("evil-model", status)
    await outbox.put(record(0))
    await outbox.put(replace(record(1), model="evil-model"))
    assert await deliverer.deliver_once() == 1
    assert [rig.counted(n) for n in range(2)] == [1, 0]


@pytest.mark.parametrize("status", [401, 403, 408, 429])
async def test_a_batch_refused_for_sentinels_key_or_an_outage_is_kept_whole(
    rig: Rig, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """401/403 are about Sentinel's service key (the operator must fix it, told at error), 408/429
    are outages: never a reason to send the records apart, under other keys."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.fail_batches(status)
    for _ in range(3):
        assert await deliverer.deliver_once() == 0
    assert len(set(rig.sink.attempts)) == 1 and len(rig.sink.attempts) == 3, rig.sink.attempts
    key_errors = [r for r in caplog.records if "check ZION_API_KEY" in r.getMessage()]
    assert len(key_errors) == (3 if status in (401, 403) else 0)
    assert all(r.levelname == "ERROR" for r in key_errors)
    rig.zion.fail_batches(None)
    await rig.deliver_all(deliverer, outbox)
    assert len(set(rig.sink.attempts)) == 1, rig.sink.attempts  # still whole, under its key
    assert [rig.counted(n) for n in range(2)] == [1, 1]


@pytest.mark.parametrize(("status", "asked", "waited"), [
    (429, "120", 120.0), (503, "120", 120.0), (429, "86400", MAX_SINK_WAIT),
])
async def test_zion_asking_to_wait_gets_no_usage_call_before_the_wait_has_passed(
    rig: Rig, status: int, asked: str, waited: float
) -> None:
    """Zion's Retry-After on a usage batch (429, 503) is honoured, up to MAX_SINK_WAIT: nothing goes
    to the usage endpoint before it has passed — not the held batch, not a new one, not a drain at
    shutdown — while the rest of Zion is asked as usual. Then the same batch goes under its key.
    (Ignored, the 429's batch went again after the backoff's second, the 503's at once in the call.)"""
    clock = FakeClock()
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox, clock=clock)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.fail_next(1, status=status, retry_after=asked)
    assert await deliverer.deliver_once() == 0
    await outbox.put(record(2))
    clock.advance(waited - 0.5)
    assert await deliverer.deliver_once() == 0
    await deliverer.drain()
    assert rig.zion.attempts[BATCH] == 1
    assert await rig.client.me("tok-0") is not None  # for the usage sink only
    clock.advance(0.5)
    await rig.deliver_all(deliverer, outbox)
    first = rig.sink.attempts_with("req-0")
    assert len(first) == 2 and len(set(first)) == 1, rig.sink.attempts  # the same batch, under its key
    assert [rig.counted(n) for n in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_batch_refused_whole_with_a_wait_sends_no_part_before_the_wait_is_over(rig: Rig, status: int) -> None:
    """Zion refused the whole batch (400, 413, 422) and asked for a wait (Retry-After): its records
    went one by one at once, a burst of calls to a Zion that had just asked for none. Now nothing
    goes before the wait is over (not a drain either); then each record under its part key."""
    clock = FakeClock()
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox, clock=clock)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.fail_next(1, status=status, retry_after="120")
    assert await deliverer.deliver_once() == 0
    clock.advance(119.5)
    assert await deliverer.deliver_once() == 0
    await deliverer.drain()
    assert rig.zion.attempts[BATCH] == 1
    clock.advance(0.5)
    await rig.deliver_all(deliverer, outbox)
    whole, *parts = rig.sink.attempts
    assert sorted(ids for _, ids in parts) == [("req-0",), ("req-1",)], rig.sink.attempts
    assert all(key.startswith(whole[0] + ".split:") for key, _ in parts), rig.sink.attempts
    assert [rig.counted(n) for n in range(2)] == [1, 1]


async def test_a_batch_whose_call_timed_out_goes_again_only_after_the_timeout_once_more(rig: Rig) -> None:
    """A Zion slower than the usage timeout may still be applying the batch: sent again under its key
    right away (in the call, then at the deliverer's retry), each copy was counted by a Zion that
    looks a key up only once it has applied it. It goes again once the timeout has passed once more
    (by the deliverer's clock), and Zion, done by then, replays it."""
    client = ZionClient(
        # (The usage timeout is a wall-clock wait of the first delivery: 1 s, so that a loaded machine's
        # connect reaches Zion within it — at 0.2 s a CI run once timed out before the call arrived.)
        rig.zion.url, rig.zion.api_key, timeout=2.0, usage_timeout=1.0, backoff=Backoff(base=0.001, cap=0.002),
        breaker=CircuitBreaker(threshold=1000), usage_breaker=CircuitBreaker(threshold=1000),
    )
    sink = RecordingSink(ZionSink(client))
    clock = FakeClock()
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox, clock=clock, sink=sink)
    for n in (0, 1):
        await outbox.put(record(n))
    rig.zion.hold_batches(True)
    try:
        assert await deliverer.deliver_once() == 0  # timed out: Zion holds it
        clock.advance(0.5)
        assert await deliverer.deliver_once() == 0
        assert rig.zion.attempts[BATCH] == 1
        rig.zion.hold_batches(False)
        assert await reached(lambda: len(rig.zion.applied) == 2)
        clock.advance(0.6)
        await rig.deliver_all(deliverer, outbox)
    finally:
        await client.aclose()
    assert len(sink.attempts) == 2 and len(set(sink.attempts)) == 1, sink.attempts
    assert rig.zion.attempts[BATCH] == 2
    assert [rig.counted(n) for n in range(2)] == [1, 1]


class LosingSink(RecordingSink):
    """RecordingSink whose answer for one record sent on its own is lost once, after Zion applied it."""

    def __init__(self, inner: ZionSink, lose: str) -> None:
        super().__init__(inner)
        self.lose: str | None = lose

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        refused = await super().deliver(records, idempotency_key)
        if [r.request_id for r in records] == [self.lose]:
            self.lose = None
            raise GovernanceUnavailable("the answer was lost")
        return refused


async def test_a_part_that_fails_is_retried_under_its_part_key_the_answered_ones_not_sent_again(rig: Rig) -> None:
    rig.sink = LosingSink(rig.sink.inner, lose="req-2")
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    rig.zion.refuse_batches_with("evil-model", 400)
    await outbox.put(record(0))
    await outbox.put(replace(record(1), model="evil-model"))
    await outbox.put(record(2))
    assert await deliverer.deliver_once() == 0  # req-2's answer lost: the batch is not settled
    rig.zion.set_honour_idempotency(False)  # a replay would now be counted: none may happen
    assert await deliverer.deliver_once() == 2
    assert [rig.counted(n) for n in range(3)] == [1, 0, 2]  # req-2 sent again: the one resend
    parts = [(key, ids) for key, ids in rig.sink.attempts if len(ids) == 1]
    assert sorted(ids for _, ids in parts) == [("req-0",), ("req-1",), ("req-2",), ("req-2",)], parts
    assert all(len(found) == 1 for found in keys_by_record(rig.sink).values())
    assert await outbox.depth() == 1


async def test_a_crash_while_a_batch_is_delivered_apart_resends_each_record_under_its_part_key(rig: Rig) -> None:
    """The deliverer dies after some records went apart (one answer lost); Zion meanwhile accepts
    the value it refused. The successor finds the batch under its split key and sends each record
    under the same part key (replayed by Zion), never the batch whole under its first key again —
    which Zion, accepting it now, would apply: the records already applied counted twice."""
    rig.sink = LosingSink(rig.sink.inner, lose="req-2")
    first_outbox = rig.outbox(lease=0)
    dying = rig.deliverer(first_outbox)
    rig.zion.refuse_batches_with("evil-model", 400)
    await first_outbox.put(record(0))
    await first_outbox.put(replace(record(1), model="evil-model"))
    await first_outbox.put(record(2))
    await first_outbox.put(record(3))
    assert await dying.deliver_once() == 0  # req-2's answer lost: the batch is not settled
    assert [rig.counted(n) for n in range(4)] == [1, 0, 1, 1]
    del dying
    rig.zion.refuse_batches_with("evil-model", None)
    successor_outbox = rig.outbox(lease=0)
    await rig.deliver_all(rig.deliverer(successor_outbox), successor_outbox)
    assert [rig.counted(n) for n in range(4)] == [1, 1, 1, 1]
    (whole_key, _), *_ = rig.sink.attempts
    assert sum(1 for key, _ in rig.sink.attempts if key == whole_key) == 1, rig.sink.attempts
    keys = keys_by_record(rig.sink)
    assert sorted(keys) == ["req-0", "req-1", "req-2", "req-3"]
    assert all(len(found) == 1 for found in keys.values()), keys  # each record: one key, ever
    assert len([ids for _, ids in rig.sink.attempts if ids == ("req-0",)]) == 2  # sent again, replayed


async def test_a_batch_another_deliverer_delivered_apart_is_not_sent_whole_again_by_its_first_holder(
    rig: Rig,
) -> None:
    """The first holder's call failed and its lease ran out before its retry (a renewal the database
    did not take, a paused process); another deliverer took the batch over, Zion refused it whole
    for one value, and the taker delivered it apart and settled it. Zion then accepts the value. The
    first holder, finding the batch no longer held under its key, sent it whole under that key all
    the same — a key Zion had only refused, so it applied it: every record counted twice (the value
    it refused once more, later, under its new batch)."""
    first_outbox = rig.outbox(lease=0)  # (lease 0: the failed batch may be taken over at once)
    first = rig.deliverer(first_outbox)
    rig.zion.refuse_batches_with("evil-model", 400)
    await first_outbox.put(record(0))
    await first_outbox.put(replace(record(1), model="evil-model"))
    await first_outbox.put(record(2))
    rig.zion.fail_next(3)  # one delivery fails (the client tries 3 times), nothing applied
    assert await first.deliver_once() == 0
    assert first.held is not None
    key = first.held.key
    taker_outbox = rig.outbox(lease=0)
    assert await rig.deliverer(taker_outbox).deliver_once() == 2  # refused whole, delivered apart
    assert [rig.counted(n) for n in range(3)] == [1, 0, 1]
    rig.zion.refuse_batches_with("evil-model", None)
    # Its retry: the batch is another's now, let go; the cycle goes on with the next batch (the
    # refused record, under a batch of its own), and none is counted twice.
    await first.deliver_once()
    assert sum(1 for sent, _ in rig.sink.attempts if sent == key) == 2  # the failed call and the taker's
    await rig.deliver_all(first, first_outbox)
    assert first.held is None
    assert [rig.counted(n) for n in range(3)] == [1, 1, 1], rig.sink.attempts


# --- a Zion answer that does not name one result per increment -----------------------------------
async def test_an_answer_with_fewer_results_counting_all_applied_settles_each_record_once(rig: Rig) -> None:
    """`{"processed": 3, "failed": 0, "results": [<one>]}` (truncated, or one per email): the
    records without a result were marked failed and sent again under a new key — applied twice."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    for n in (0, 1, 2):
        await outbox.put(record(n))
    rig.zion.reshape_batch_results(lambda results: results[:1])
    await rig.deliver_all(deliverer, outbox)
    assert len({key for key, _ in rig.sink.attempts}) == 1, rig.sink.attempts
    assert [rig.counted(n) for n in range(3)] == [1, 1, 1]


async def test_an_answer_with_fewer_results_and_a_failure_is_sent_again_under_its_key(rig: Rig) -> None:
    """Which record failed is not said: the batch goes again, whole, under its key (Zion replays
    its answer), never split by guess; nothing is counted twice, nothing settled."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    rig.zion.reject_model("bad-model")
    await outbox.put(record(0))
    await outbox.put(replace(record(1), model="bad-model"))
    await outbox.put(record(2))
    rig.zion.reshape_batch_results(lambda results: results[:1])
    for _ in range(4):
        assert await deliverer.deliver_once() == 0
    assert len(set(rig.sink.attempts)) == 1, rig.sink.attempts  # the same key and records each time
    assert sorted(rig.sink.attempts[0][1]) == ["req-0", "req-1", "req-2"]
    assert [rig.counted(n) for n in range(3)] == [1, 0, 1]
    assert await outbox.depth() == 3


async def test_an_answer_with_more_results_than_records_never_settles_a_failed_one(rig: Rig) -> None:
    """An extra result (a per-email summary before the per-increment ones) was paired by email: the
    record Zion refused was marked applied and deleted from the outbox — lost."""
    outbox = rig.outbox()
    deliverer = rig.deliverer(outbox)
    rig.zion.reject_model("bad-model")
    await outbox.put(record(0))
    await outbox.put(replace(record(1), model="bad-model"))
    rig.zion.reshape_batch_results(
        lambda results: [{"email": results[-1]["email"], "success": True}, *results]
    )
    for _ in range(4):
        assert await deliverer.deliver_once() == 0
    assert len(set(rig.sink.attempts)) == 1, rig.sink.attempts
    assert [rig.counted(n) for n in range(2)] == [1, 0]
    assert await outbox.depth() == 2  # req-1 (refused by Zion) is still there


# --- a stream read whose reply was lost ----------------------------------------------------------
STREAM_RIGS = [
    "memory-stream",
    pytest.param("redis-stream", marks=pytest.mark.redis),
    pytest.param("cluster-stream", marks=pytest.mark.redis),
]


def one_set_of_records_per_key(sink: RecordingSink) -> bool:
    sets: dict[str, set[tuple[str, ...]]] = {}
    for key, ids in sink.attempts:
        sets.setdefault(key, set()).add(tuple(sorted(ids)))
    return all(len(found) == 1 for found in sets.values())


@pytest.mark.parametrize("rig", STREAM_RIGS, indirect=True)
async def test_a_stream_read_that_ran_twice_still_counts_every_record_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's records stayed under the batch key the second run's were sent with; taken
    over after a lease and sent under that key, Zion replayed its answer: never counted."""
    read_twice_once(rig.store, monkeypatch)
    outbox = rig.outbox()
    deliverer = UsageDeliverer(outbox, rig.sink, Metrics(), batch_size=3, backoff=NO_WAIT)
    for n in range(6):
        await outbox.put(record(n))
    await rig.deliver_all(deliverer, outbox)
    assert [rig.counted(n) for n in range(6)] == [1] * 6
    assert one_set_of_records_per_key(rig.sink), rig.sink.attempts


@pytest.mark.redis
@pytest.mark.parametrize("rig", ["cluster-stream"], indirect=True)
async def test_a_lost_stream_read_reply_on_a_cluster_still_counts_every_record_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real thing: redis-py's cluster client retried XREADGROUP after a read timeout (the first
    run had happened), under the same batch key."""
    lost = LostClusterReply(monkeypatch, "XREADGROUP")
    outbox = rig.outbox()
    deliverer = UsageDeliverer(outbox, rig.sink, Metrics(), batch_size=3, backoff=NO_WAIT)
    for n in range(6):
        await outbox.put(record(n))
    await rig.deliver_all(deliverer, outbox)
    assert not lost.armed
    assert [rig.counted(n) for n in range(6)] == [1] * 6
    assert one_set_of_records_per_key(rig.sink), rig.sink.attempts
