"""Standalone Redis specifics: replica confirmation (WAIT), error translation and the breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sentinel.breaker import CircuitBreaker
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.store import create_store
from sentinel.store.redis import RedisStore
from tests.conftest import REDIS_BIN
from tests.contract.test_store import CAS
from tests.support.clock import FakeClock
from tests.support.process import RedisServerProcess
from tests.support.servers import free_port

S = "sentinel:test:{stream}"


@pytest.fixture
def replica(redis_url: str, tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A second redis-server replicating the test Redis, in sync when yielded."""
    assert REDIS_BIN is not None
    primary = redis.Redis.from_url(redis_url)
    port = primary.connection_pool.connection_kwargs["port"]
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc:
        client = redis.Redis(port=proc.port)
        client.replicaof("127.0.0.1", port)
        deadline = time.monotonic() + 30
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synchronised"
            time.sleep(0.05)
        yield proc
        proc.thaw()
        client.close()
    primary.close()


def wait_replicated(primary_url: str) -> None:
    """Wait until the replica confirmed everything written to the primary so far."""
    deadline = time.monotonic() + 30
    with redis.Redis.from_url(primary_url) as primary:
        while True:
            info = primary.info("replication")
            if int(info["slave0"]["offset"]) >= int(info["master_repl_offset"]):
                return
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.05)


async def test_waiting_for_a_replica_that_does_not_exist_fails_and_withdraws(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    with pytest.raises(StoreUnavailable, match="not confirmed by 1 replica"):
        await store.stream_add(S, {"r": b"x"}, replicas=1, replica_timeout_ms=50)
    assert await store.stream_len(S) == 0  # withdrawn: the caller stores it elsewhere
    assert store.breaker.failures == 0  # the primary is fine: not an outage
    await store.close()


async def test_a_replica_confirms_and_holds_the_entry(redis_url: str, replica: RedisServerProcess) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    entry_id = await store.stream_add(S, {"r": b"kept"}, replicas=1, replica_timeout_ms=1000)
    with redis.Redis(port=replica.port) as on_replica:
        assert [eid.decode() for eid, _ in on_replica.xrange(S)] == [entry_id]
    await store.close()


async def test_wait_counts_this_write_not_an_older_one(redis_url: str, replica: RedisServerProcess) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    # 16 concurrent confirmed writes leave 16 pooled connections whose last write was confirmed;
    # 4 concurrent calls below leave 12 of them idle.
    await asyncio.gather(
        *(store.stream_add(S, {"r": b"before"}, replicas=1, replica_timeout_ms=1000) for _ in range(16))
    )
    wait_replicated(redis_url)
    # A frozen replica is still connected but confirms nothing new. A WAIT sent on another
    # connection than its XADD would count an older write and wrongly report success.
    replica.freeze()
    results = await asyncio.gather(
        *(store.stream_add(S, {"r": b"unconfirmed"}, replicas=1, replica_timeout_ms=100) for _ in range(4)),
        return_exceptions=True,
    )
    replica.thaw()
    assert all(isinstance(r, StoreUnavailable) and "not confirmed" in r.message for r in results)
    assert await store.stream_len(S) == 16
    await store.close()


async def test_command_errors_do_not_trip_the_breaker(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    await store.set(S, b"a string, not a stream")
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match="command failed"):
            await store.stream_add(S, {"r": b"x"})
        for call in (
            lambda: store.stream_read(S, "g", "c", 1),
            lambda: store.stream_idle(S, "g", min_idle_ms=0, count=1),
            lambda: store.stream_reclaim(S, "g", "c", ["1-0"], min_idle_ms=0),
            lambda: store.stream_settle(S, "g", "c", done=["1-0"]),
        ):
            with pytest.raises(StoreUnavailable, match="command failed"):
                await call()
    assert not store.breaker.is_open and store.breaker.failures == 0
    assert await store.get(S) == b"a string, not a stream"
    await store.close()


async def test_a_probe_met_by_a_command_error_closes_the_breaker(redis_url: str) -> None:
    """Redis answering a half-open breaker's probe with an error (bad data, not an outage) left the
    breaker half-open: every other caller was refused for one more cooldown. It answered: closed."""
    clock = FakeClock()
    store = RedisStore(redis_url, timeout=2.0, breaker=CircuitBreaker(threshold=1, cooldown=2.0, clock=clock))
    await store.set(S, b"a string, not a stream")
    store.breaker.failure()  # an outage seen a moment ago
    with pytest.raises(StoreUnavailable, match="circuit open"):
        await store.get("k")
    clock.advance(2.0)
    with pytest.raises(StoreUnavailable, match="command failed"):
        await store.stream_add(S, {"r": b"x"})  # the probe
    assert await store.get("k") is None  # not refused: the breaker closed
    assert not store.breaker.is_open
    await store.close()


async def test_a_pool_with_every_connection_busy_does_not_open_the_breaker(redis_url: str) -> None:
    """More commands at once than the pool has connections (SENTINEL_MAX_IN_FLIGHT is 1,024, the pool
    512): redis-py refuses the extra ones (MaxConnectionsError, a ConnectionError), which counted as
    an outage — three opened the breaker, and a healthy Redis refused every user for its cooldown
    (503 `quota_unavailable` in closed mode). The extra commands fail alone; the breaker stays shut."""
    store = RedisStore(redis_url, timeout=2.0, max_connections=2)
    answers = await asyncio.gather(*(store.get(f"k{i}") for i in range(20)), return_exceptions=True)
    refused = [a for a in answers if isinstance(a, BaseException)]
    assert refused and all(isinstance(a, StoreUnavailable) and "busy" in str(a) for a in refused), refused
    assert not store.breaker.is_open and store.breaker.failures == 0
    assert await store.get("k0") is None
    await store.close()


async def test_stream_calls_on_a_dead_redis_are_unavailable_and_open_the_breaker() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    calls = [
        lambda: store.stream_add(S, {"r": b"x"}),
        lambda: store.stream_read(S, "g", "c", 1),
        lambda: store.stream_idle(S, "g", min_idle_ms=0, count=1),
        lambda: store.stream_reclaim(S, "g", "c", ["1-0"], min_idle_ms=0),
        lambda: store.stream_settle(S, "g", "c", done=["1-0"]),
        lambda: store.stream_len(S),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()
    assert store.breaker.is_open
    await store.close()


async def test_the_replica_wait_must_fit_in_the_store_timeout() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1)
    with pytest.raises(ValueError, match="below the store timeout"):
        await store.stream_add(S, {"r": b"x"}, replicas=1, replica_timeout_ms=100)
    assert store.breaker.failures == 0
    await store.close()


async def test_scripts_survive_a_script_cache_flush(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    assert await store.run(CAS, ["cas"], ["", "a"]) == 1
    with redis.Redis.from_url(redis_url) as admin:
        admin.script_flush()
    assert await store.run(CAS, ["cas"], ["a", "b"]) == 1
    await store.close()


async def test_two_instances_share_data(redis_url: str) -> None:
    one, two = create_store(redis_url, timeout=2.0), create_store(redis_url, timeout=2.0)
    assert isinstance(one, RedisStore) and one.shared and one.backend == "redis"
    await one.stream_add(S, {"r": b"x"})
    await one.set("k", b"v")
    assert await two.get("k") == b"v" and await two.stream_len(S) == 1
    await one.close()
    await two.close()


async def test_settle_forgets_a_consumer_only_once_it_holds_nothing(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    ids = [await store.stream_add(S, {"r": bytes([i])}) for i in range(3)]
    await store.stream_read(S, "g", "batch-1", 3)
    raw = redis.Redis.from_url(redis_url)

    def consumers() -> dict[str, int]:
        return {c["name"].decode(): c["pending"] for c in raw.xinfo_consumers(S, "g")}

    try:
        assert await store.stream_settle(S, "g", "batch-1", done=ids[:1]) == 1
        assert consumers() == {"batch-1": 2}  # still holds two: kept (deleting it would strand them)
        await store.stream_settle(S, "g", "batch-1", done=ids[1:2], retry=ids[2:], retry_to="batch-2")
        assert consumers() == {"batch-2": 1}
        await store.stream_settle(S, "g", "batch-1")  # a consumer that is gone already: no error
        await store.stream_read(S, "g", "empty-read", 5)  # nothing new, but Redis made the consumer
        await store.stream_settle(S, "g", "empty-read")
        assert consumers() == {"batch-2": 1}
    finally:
        raw.close()
        await store.close()


def test_an_xreadgroup_reply_is_read_in_every_shape_redis_py_gives() -> None:
    """redis-py's parsed RESP3 reply (`{stream: [entries]}`: other redis-py versions, or
    `?protocol=3` on a cluster) raised inside `stream_read` and stopped the deliverer's claims."""
    from sentinel.store.redis_streams import read_reply

    raw = [[b"1-0", [b"r", b"one"]], [b"2-0", [b"r", b"two"]]]
    parsed = [(b"1-0", {b"r": b"one"}), (b"2-0", {b"r": b"two"})]
    shapes = [[[b"usage", raw]], {b"usage": raw}, {b"usage": [parsed]}, [[b"usage", parsed]]]
    for reply in shapes:
        got = read_reply(reply)
        assert [(e.id, e.fields) for e in got] == [("1-0", {"r": b"one"}), ("2-0", {"r": b"two"})], reply
    assert read_reply(None) == read_reply([]) == read_reply({}) == []
    one = read_reply({b"usage": [[(b"3-0", {b"r": b"x"})]]})  # one entry, parsed form
    assert [e.id for e in one] == ["3-0"]


async def test_a_redis_that_may_evict_keys_says_so(tmp_path: Path) -> None:
    """Under a `maxmemory` with any policy but `noeviction`, a full Redis drops keys before their TTL
    ends (`volatile-*`: exactly those with one, every quota counter among them): the store names the
    policy, so start-up can warn (`check_eviction`)."""
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc:
        store = RedisStore(proc.url, timeout=2.0)
        with redis.Redis(port=proc.port) as admin:
            assert await store.eviction() is None  # no maxmemory: nothing is evicted
            admin.config_set("maxmemory-policy", "volatile-lru")
            assert await store.eviction() is None  # a policy without a maxmemory never applies
            admin.config_set("maxmemory", "100mb")
            assert await store.eviction() == "volatile-lru"
            admin.config_set("maxmemory-policy", "allkeys-lfu")
            assert await store.eviction() == "allkeys-lfu"
            admin.config_set("maxmemory-policy", "noeviction")
            assert await store.eviction() is None  # a full Redis refuses writes instead
        await store.close()


async def test_a_command_redis_did_not_run_is_told_from_one_it_may_have_run(tmp_path: Path) -> None:
    """`StoreRefused` (safe to send again: the meter waits out refusals of the quota settlements it
    sends again) only when the command surely did not run: refused by a full Redis, never sent (the
    breaker open, no connection); a reply lost to a timeout (`CLIENT PAUSE`: the command waits in
    Redis) may have run, and is not."""
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as proc, redis.Redis(port=proc.port) as admin:
        store = RedisStore(proc.url, timeout=0.2, breaker=CircuitBreaker(threshold=100))
        assert await store.run(CAS, ["cas"], ["", "a"]) == 1
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        with pytest.raises(StoreRefused, match="maxmemory"):
            await store.run(CAS, ["cas"], ["a", "b"])
        admin.config_set("maxmemory", "0")
        admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
        with pytest.raises(StoreUnavailable) as lost:
            await store.run(CAS, ["cas"], ["a", "b"])
        assert not isinstance(lost.value, StoreRefused)
        admin.execute_command("CLIENT", "UNPAUSE")
        opened = RedisStore(proc.url, timeout=0.2, breaker=CircuitBreaker(threshold=1))
        opened.breaker.failure()  # an outage seen a moment ago
        with pytest.raises(StoreRefused, match="circuit open"):
            await opened.run(CAS, ["cas"], ["a", "b"])
        proc.kill9()
        with pytest.raises(StoreRefused, match="no connection"):
            await store.run(CAS, ["cas"], ["a", "b"])
        await opened.close()
        await store.close()
