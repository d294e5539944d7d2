"""Batch identity in every outbox backend: a batch is claimed once under a key and comes back —
after its holder died — whole, with the same records and the same key; two takers racing for it
never both get it; refused records leave it for a new batch under a new key; settling is final.

Each test runs on SQLite, PostgreSQL, the memory store's stream (the twin), a real Redis and a real
Redis Cluster (`tests/support/outbox_worlds.py`); time is moved, never waited for.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from sentinel.backoff import Backoff
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.quota.batch import REFUSED_RETRY_CAP, Batch, is_batch_key
from sentinel.quota.deliverer import UsageDeliverer
from sentinel.quota.outbox import DurableOutbox, RedisStreamOutbox, SqlOutbox
from tests.support.clock import FakeClock
from tests.support.lost_replies import read_twice_once
from tests.support.outbox import OutboxPart, usage_record
from tests.support.outbox_worlds import LEASE, STREAM_KINDS, World, age_redis_stream, world, world_kind
from tests.support.redis_cluster import redis_cluster, redis_cluster_url

__all__ = ["redis_cluster", "redis_cluster_url", "world", "world_kind"]


def ids(batch: Batch | None) -> list[str]:
    return [] if batch is None else [c.record.request_id for c in batch.items]


async def put(world: World, *request_ids: str) -> None:
    outbox = world.outbox()
    for rid in request_ids:
        await outbox.put(usage_record(rid))


async def test_a_dead_holders_batch_is_taken_over_whole_under_its_key(world: World) -> None:
    await put(world, "r1", "r2", "r3", "r4")
    dead = await world.outbox().claim(3)  # this deliverer dies holding it
    assert dead is not None and ids(dead) == ["r1", "r2", "r3"] and is_batch_key(dead.key)
    other = world.outbox()
    # Within the lease, others get only what nobody holds.
    fresh = await other.claim(10)
    assert fresh is not None and ids(fresh) == ["r4"] and fresh.key != dead.key
    await other.settle(fresh, (), retry_in=0)
    assert await other.claim(10) is None
    await put(world, "r5")  # arrives meanwhile: never merged into the old batch
    await world.age(LEASE - 1)
    newer = await other.claim(10)
    assert newer is not None and ids(newer) == ["r5"]
    await other.settle(newer, (), retry_in=0)
    await world.age(1)
    taken = await other.claim(10)
    assert taken is not None
    assert (taken.key, ids(taken), taken.records) == (dead.key, ids(dead), dead.records)
    # Taking over starts a new lease: nobody else takes it meanwhile.
    assert await world.outbox().claim(10) is None
    await other.settle(taken, (), retry_in=0)
    assert await other.depth() == 0 and await other.claim(10) is None


async def test_takeover_never_takes_a_smaller_part_of_a_batch(world: World) -> None:
    await put(world, *(f"r{i}" for i in range(6)))
    dead = await world.outbox().claim(6)
    assert dead is not None
    await world.age(LEASE)
    taken = await world.outbox().claim(2)  # a deliverer with a smaller batch size
    assert taken is not None and (taken.key, ids(taken)) == (dead.key, ids(dead))


async def test_two_takers_racing_for_an_expired_batch_only_one_gets_it(world: World) -> None:
    for round_ in range(4):
        await put(world, f"a{round_}", f"b{round_}")
        dead = await world.outbox().claim(10)
        assert dead is not None
        await world.age(LEASE)
        first, second = world.outbox(), world.outbox()
        got = await asyncio.gather(first.claim(10), second.claim(10))
        winners = [batch for batch in got if batch is not None]
        assert [(b.key, ids(b)) for b in winners] == [(dead.key, ids(dead))], (round_, got)
        await first.settle(winners[0], (), retry_in=0)
    assert await world.outbox().depth() == 0


async def test_refused_records_leave_the_batch_for_a_new_key(world: World) -> None:
    await put(world, "r1", "r2", "r3")
    outbox = world.outbox()
    batch = await outbox.claim(10)
    assert batch is not None
    await outbox.settle(batch, {"r2"}, retry_in=LEASE)
    assert await outbox.depth() == 1
    await world.age(LEASE)
    again = await outbox.claim(10)
    assert again is not None and ids(again) == ["r2"]
    assert again.key != batch.key and is_batch_key(again.key)
    await outbox.settle(again, (), retry_in=0)
    await world.age(10 * LEASE)
    assert await outbox.claim(10) is None and await outbox.depth() == 0  # the accepted never come back



async def test_records_a_sink_keeps_refusing_never_starve_new_ones(world: World) -> None:
    """Zion refuses a record of an email it does not know, every time. On the stream each refused
    record waits in a batch of its own that is due again one lease later, and a claim took those
    over before reading anything new: enough of them and no new record was ever delivered."""
    outbox = world.outbox()
    for i in range(5):
        await put(world, f"dead{i}")
        batch = await outbox.claim(1)
        assert batch is not None and ids(batch) == [f"dead{i}"]
        await outbox.settle(batch, {f"dead{i}"}, retry_in=LEASE)
    await world.age(LEASE)  # every refused record is due again
    await put(world, "good")
    seen: list[str] = []
    for _ in range(2):  # the table takes them all in one batch, the stream alternates
        batch = await outbox.claim(10)
        assert batch is not None
        seen += ids(batch)
        await outbox.settle(batch, set(ids(batch)) - {"good"}, retry_in=LEASE)
        if "good" in seen:
            break
    assert "good" in seen, seen


async def test_a_stale_holder_settling_after_a_takeover_changes_nothing(world: World) -> None:
    await put(world, "r1", "r2")
    stale = world.outbox()
    batch = await stale.claim(10)
    assert batch is not None
    await world.age(LEASE)
    taker = world.outbox()
    taken = await taker.claim(10)
    assert taken is not None and taken.key == batch.key
    # Both sent the batch under its key and got the same answer: r2 refused.
    await taker.settle(taken, {"r2"}, retry_in=LEASE)
    await stale.settle(batch, {"r2"}, retry_in=LEASE)
    await world.age(REFUSED_RETRY_CAP)  # (r2 was batched twice: it waits longer than LEASE on a table)
    retry = await taker.claim(10)
    assert retry is not None and ids(retry) == ["r2"] and retry.key != batch.key
    assert await world.outbox().claim(10) is None  # r2 is in exactly one batch
    await taker.settle(retry, (), retry_in=0)
    assert await taker.depth() == 0


async def test_a_stale_holder_settling_after_a_takeover_never_removes_a_newer_record(world: World) -> None:
    """SQLite gives a new row the id of the highest row deleted (no AUTOINCREMENT), and the outbox
    table is nearly always empty, so ids come round again at once. A holder that settled late —
    after its lease ran out, another deliverer took the batch over and settled it — deleted its
    accepted records by row id alone: the new record that had got one of those ids was deleted
    with them, never delivered."""
    await put(world, "r1")
    stale = world.outbox()
    batch = await stale.claim(10)
    assert batch is not None
    await world.age(LEASE)
    taker = world.outbox()
    taken = await taker.claim(10)
    assert taken is not None and taken.key == batch.key
    await taker.settle(taken, (), retry_in=0)
    await put(world, "r2")  # (on SQLite: r1's row id)
    await stale.settle(batch, (), retry_in=0)  # the same answer, late
    assert await world.outbox().depth() == 1
    fresh = await world.outbox().claim(10)
    assert fresh is not None and ids(fresh) == ["r2"]


async def test_renew_keeps_a_slow_holders_lease_and_tells_it_when_settled(world: World) -> None:
    await put(world, "r1")
    slow = world.outbox()
    batch = await slow.claim(10)
    assert batch is not None
    await world.age(LEASE - 1)
    assert await slow.renew(batch) is True
    await world.age(LEASE - 1)  # past the first lease, within the renewed one
    assert await world.outbox().claim(10) is None
    await world.age(1)
    taker = world.outbox()
    taken = await taker.claim(10)
    assert taken is not None and taken.key == batch.key
    await taker.settle(taken, (), retry_in=0)
    assert await slow.renew(batch) is False  # settled by the taker: the slow holder lets it go


@pytest.mark.parametrize("world_kind", STREAM_KINDS, indirect=True)
async def test_a_read_that_ran_twice_leaves_one_set_of_records_per_key(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's entries stayed pending under the batch key of the second run's: sent under
    that key after a lease, a sink honouring keys replayed its answer and never applied them."""
    await put(world, "r1", "r2", "r3", "r4", "r5")
    read_twice_once(world.store, monkeypatch)
    outbox = world.outbox()
    batch = await outbox.claim(2)
    assert batch is not None and ids(batch) == ["r3", "r4"]
    await outbox.settle(batch, (), retry_in=0)  # the sink applied r3, r4 under batch.key
    fresh = await outbox.claim(10)
    assert fresh is not None and ids(fresh) == ["r5"]  # r1, r2 are held (a lease) under their own key
    await outbox.settle(fresh, (), retry_in=0)
    await world.age(LEASE)
    taken = await outbox.claim(10)
    assert taken is not None and ids(taken) == ["r1", "r2"]
    assert taken.key not in (batch.key, fresh.key) and is_batch_key(taken.key)
    await outbox.settle(taken, (), retry_in=0)
    assert await outbox.depth() == 0


@pytest.mark.parametrize("world_kind", STREAM_KINDS, indirect=True)
async def test_an_empty_read_that_ran_twice_leaves_the_first_runs_entries_under_its_unsent_key(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(world, "r1", "r2")
    read_twice_once(world.store, monkeypatch)
    outbox = world.outbox()
    assert await outbox.claim(2) is None  # the retry found nothing new; r1, r2 wait under that key
    await world.age(LEASE)
    taken = await outbox.claim(10)
    assert taken is not None and ids(taken) == ["r1", "r2"]  # never sent before: whole, once
    await outbox.settle(taken, (), retry_in=0)
    assert await outbox.depth() == 0


@pytest.mark.redis
async def test_stream_entries_read_under_another_name_are_batched_afresh(redis_url: str) -> None:
    from sentinel.store.redis import RedisStore

    store = RedisStore(redis_url, timeout=5.0)
    outbox = RedisStreamOutbox(store, lease_seconds=LEASE)
    for i in range(5):
        await outbox.put(usage_record(f"r{i}"))
    client = aioredis.Redis.from_url(redis_url)
    try:
        # What an older Sentinel (or an operator) leaves behind: entries read under a host name.
        await client.xgroup_create(outbox.KEY, outbox.GROUP, id="0")
        await client.xreadgroup(outbox.GROUP, "old-host-1a2b3c4d", {outbox.KEY: ">"}, count=5)
        assert await outbox.claim(3) is None  # held, within the lease
        await age_redis_stream(store, LEASE)
        first, second = await outbox.claim(3), await outbox.claim(3)
        # Never sent under "old-host-…": re-batched under new keys, at most `limit` at a time.
        assert first is not None and second is not None
        assert (ids(first), ids(second)) == (["r0", "r1", "r2"], ["r3", "r4"])
        assert is_batch_key(first.key) and is_batch_key(second.key) and first.key != second.key
        await outbox.settle(first, (), retry_in=0)
        await outbox.settle(second, (), retry_in=0)
        consumers = await client.xinfo_consumers(outbox.KEY, outbox.GROUP)
        assert consumers == []  # the old name, the batches and the empty reads are all forgotten
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_stream_consumers_do_not_pile_up(redis_url: str) -> None:
    from sentinel.store.redis import RedisStore

    store = RedisStore(redis_url, timeout=5.0)
    outbox = RedisStreamOutbox(store)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(5):
            assert await outbox.claim(10) is None  # empty reads
        await outbox.put(usage_record("r1"))
        await outbox.put(usage_record("r2"))
        batch = await outbox.claim(10)
        assert batch is not None
        names = [c["name"].decode() for c in await client.xinfo_consumers(outbox.KEY, outbox.GROUP)]
        assert names == [batch.key]  # the batch in flight, nothing else
        await outbox.settle(batch, {"r2"}, retry_in=0)
        names = [c["name"].decode() for c in await client.xinfo_consumers(outbox.KEY, outbox.GROUP)]
        assert len(names) == 1 and names != [batch.key] and is_batch_key(names[0])  # r2's new batch
    finally:
        await client.aclose()
        await store.close()


def test_stream_replica_settings_default_off_and_must_fit_the_redis_timeout() -> None:
    from sentinel.config import ConfigError, load_settings

    settings = load_settings(_env_file=None)
    assert (settings.usage_stream_replicas, settings.usage_stream_replica_timeout_ms) == (0, 100)
    ok = load_settings(_env_file=None, USAGE_STREAM_REPLICAS="1", USAGE_STREAM_REPLICA_TIMEOUT_MS="150")
    assert ok.usage_stream_replicas == 1
    with pytest.raises(ConfigError, match="USAGE_STREAM_REPLICA_TIMEOUT_MS"):
        load_settings(_env_file=None, USAGE_STREAM_REPLICAS="1", USAGE_STREAM_REPLICA_TIMEOUT_MS="250")
    with pytest.raises(ConfigError, match="USAGE_STREAM_REPLICAS"):
        load_settings(_env_file=None, USAGE_STREAM_REPLICAS="-1")


@pytest.mark.redis
async def test_an_unreadable_stream_entry_is_logged_and_acknowledged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sentinel.store.redis import RedisStore

    store = RedisStore(redis_url, timeout=5.0)
    outbox = RedisStreamOutbox(store)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await outbox.put(usage_record("r1"))
        await client.xadd(outbox.KEY, {"r": b"{not json"})
        await client.xadd(outbox.KEY, {"other": b"no r field"})
        await outbox.put(usage_record("r2"))
        with caplog.at_level("ERROR", logger="sentinel.outbox"):
            batch = await outbox.claim(10)
        assert ids(batch) == ["r1", "r2"]
        assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2
        assert batch is not None
        pending = await client.xpending(outbox.KEY, outbox.GROUP)
        assert pending["pending"] == 2  # only the batch's two records are held
    finally:
        await client.aclose()
        await store.close()


class AskingSink:
    """A sink whose first answer asks for a wait (`asks` seconds, as Zion's Retry-After on a 503 or a
    timed-out call does); every attempt noted as (key, request ids)."""

    name = "zion"

    def __init__(self, asks: float) -> None:
        self.asks: float | None = asks
        self.attempts: list[tuple[str, tuple[str, ...]]] = []

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        self.attempts.append((idempotency_key, tuple(r.request_id for r in records)))
        if self.asks is not None:
            asked, self.asks = self.asks, None
            raise GovernanceUnavailable("Zion answered 503", resend_after=asked)
        return []


def deliverer_on(world: World, sink: AskingSink, clock: FakeClock) -> UsageDeliverer:
    """A deliverer (another process's) on the world's storage, on `clock`."""
    part = world.outbox()
    outbox = DurableOutbox(part) if isinstance(part, SqlOutbox) else DurableOutbox(OutboxPart("sql"), part)  # type: ignore[arg-type]
    return UsageDeliverer(outbox, sink, Metrics(), backoff=Backoff(base=0.0, cap=0.0), clock=clock)


async def test_a_batch_zion_asked_to_wait_for_is_not_taken_over_before_the_wait_is_over(world: World) -> None:
    """Zion asked for a wait longer than the lease (Retry-After: 120, or a timed-out batch it may
    still be applying), then the batch's holder died: another deliverer took the batch over once the
    lease ran out (30 s) and sent it at once. Now the batch is held for the wait, and goes after it
    under its key."""
    await put(world, "r1", "r2")
    clock, sink = FakeClock(), AskingSink(asks=120.0)
    assert await deliverer_on(world, sink, clock).deliver_once() == 0  # asked to wait; then it dies
    other = deliverer_on(world, sink, clock)
    for _ in range(3):  # 90 s: three leases, not yet the wait
        clock.advance(LEASE)
        await world.age(LEASE)
        assert await other.deliver_once() == 0
    assert len(sink.attempts) == 1, sink.attempts
    clock.advance(LEASE)
    await world.age(LEASE)
    assert await other.deliver_once() == 2
    assert len(sink.attempts) == 2 and len(set(sink.attempts)) == 1, sink.attempts  # whole, under its key
    assert await world.outbox().depth() == 0


async def test_a_record_refused_again_and_again_waits_longer_each_time(world: World) -> None:
    """A record the sink refuses for good (an email Zion does not know) waited one lease every time
    on the stream, for ever — on the table its wait already doubled. Now on each outbox it waits
    one lease (the table: the `retry_in` given) and longer each time it is refused again."""
    await put(world, "dead")
    outbox = world.outbox()
    batch = await outbox.claim(10)
    waits: list[float] = []
    for _ in range(4):
        assert batch is not None and ids(batch) == ["dead"]
        await outbox.settle(batch, {"dead"}, retry_in=LEASE)
        waited = 0.0
        while (batch := await outbox.claim(10)) is None:
            assert waited < 2 * REFUSED_RETRY_CAP, waits
            await world.age(LEASE / 2)
            waited += LEASE / 2
        waits.append(waited)
    assert waits[0] <= LEASE and waits[1] >= 2 * LEASE and waits[3] >= 8 * LEASE, waits


async def test_records_held_for_a_refusal_never_keep_a_dead_holders_batch_from_its_takeover(world: World) -> None:
    """Records Zion keeps refusing (an email it no longer knows) wait longer each time, held beside
    the stream. A takeover looked only at the oldest `limit` entries idle past their lease: once
    those were all held (a batch's worth of refused records: 500), no batch of a deliverer that had
    died was taken over, for as long as they kept being refused — its records never delivered. Now
    the takeover looks past them."""
    outbox = world.outbox()
    await put(world, "dead1", "dead2")
    batch = await outbox.claim(2)
    assert batch is not None and ids(batch) == ["dead1", "dead2"]
    await outbox.settle(batch, {"dead1", "dead2"}, retry_in=LEASE)
    await world.age(LEASE)
    batch = await outbox.claim(2)
    assert batch is not None and ids(batch) == ["dead1", "dead2"]
    await outbox.settle(batch, {"dead1", "dead2"}, retry_in=LEASE)  # refused again: held two leases
    await put(world, "live1", "live2")
    dead = await world.outbox().claim(2)  # its deliverer dies holding it
    assert dead is not None and ids(dead) == ["live1", "live2"]
    await world.age(LEASE)
    taken = await world.outbox().claim(2)
    assert taken is not None and (taken.key, ids(taken)) == (dead.key, ["live1", "live2"])
    await world.outbox().settle(taken, (), retry_in=0)
    await world.age(LEASE)  # the refused ones are due again once their wait is over
    again = await world.outbox().claim(2)
    assert again is not None and ids(again) == ["dead1", "dead2"]
