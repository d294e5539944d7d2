"""The Store contract, run against every backend: in-memory, a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.errors import StoreUnavailable
from sentinel.store import MemoryStore, Script, Store
from sentinel.store.base import parse_stream_id
from sentinel.store.redis import RedisStore
from tests.support.servers import free_port


async def test_get_set_delete(store: Store) -> None:
    assert await store.get("k") is None
    assert await store.set("k", b"v") is True
    assert await store.get("k") == b"v"
    assert await store.delete("k", "missing") == 1
    assert await store.get("k") is None


async def test_get_many_reads_keys_of_any_slot_at_once_in_order(store: Store) -> None:
    """Every key's value (None when missing), in the order asked, duplicates too — keys of many hash
    slots included (a Cluster reads them per primary) —, as one `get` each would."""
    keys = [f"sentinel:context:resp_{n}" for n in range(300)]
    for n, key in enumerate(keys):
        if n % 3:
            await store.set(key, str(n).encode())
    asked = [*reversed(keys), "missing", keys[1], keys[0]]
    assert await store.get_many(asked) == [await store.get(key) for key in asked]
    assert (await store.get_many(asked))[-3:] == [None, b"1", None]
    assert await store.get_many([keys[2]]) == [b"2"]
    assert await store.get_many([]) == []


async def test_set_nx(store: Store) -> None:
    assert await store.set("k", b"1", nx=True) is True
    assert await store.set("k", b"2", nx=True) is False
    assert await store.get("k") == b"1"


async def test_set_xx_only_overwrites(store: Store) -> None:
    assert await store.set("k", b"1", ttl=10, xx=True) is False
    assert await store.get("k") is None
    await store.set("k", b"1")
    assert await store.set("k", b"2", xx=True) is True
    assert await store.get("k") == b"2"


async def test_ttl_expiry_and_expire(store: Store) -> None:
    await store.set("short", b"x", ttl=0.15)
    await store.set("forever", b"y")
    ttl = await store.ttl("short")
    assert ttl is not None and 0 < ttl <= 0.15
    assert await store.ttl("forever") == -1.0
    assert await store.ttl("missing") is None
    await asyncio.sleep(0.3)
    assert await store.get("short") is None
    assert await store.expire("forever", 0.1) is True
    assert await store.expire("missing", 10) is False
    await asyncio.sleep(0.25)
    assert await store.get("forever") is None


async def test_a_ttl_under_a_millisecond_is_taken(store: Store) -> None:
    """Redis refused `PX 0` (a TTL under 1 ms, as a cache entry at a JWT's last instant gets), where
    the memory store took it: on Redis the entry lives at least a millisecond."""
    assert await store.set("brief", b"x", ttl=0.0004) is True
    assert await store.set("brief-nx", b"x", ttl=0.0004, nx=True) is True


async def test_incr_is_atomic_and_sets_ttl_once(store: Store) -> None:
    results = await asyncio.gather(*(store.incr("c", 2, ttl=10) for _ in range(50)))
    assert sorted(results) == list(range(2, 101, 2))
    ttl = await store.ttl("c")
    assert ttl is not None and 0 < ttl <= 10


CAS = Script(
    name="test_cas",
    lua="""
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
""",
    local=lambda ops, keys, args: (
        0 if (ops.get(keys[0]) or b"").decode() != args[0] else (ops.set(keys[0], args[1].encode()) or 1)
    ),
)


async def test_scripts_run_atomically(store: Store) -> None:
    assert await store.run(CAS, ["cas"], ["", "a"]) == 1
    assert await store.run(CAS, ["cas"], ["", "b"]) == 0
    assert await store.run(CAS, ["cas"], ["a", "b"]) == 1
    assert await store.get("cas") == b"b"
    # Many concurrent compare-and-set from the same state: exactly one wins.
    await store.set("race", b"0")
    wins = await asyncio.gather(*(store.run(CAS, ["race"], ["0", str(i)]) for i in range(1, 30)))
    assert sum(wins) == 1


# Joins its arguments as Lua sees them: ARGV holds strings, whatever the caller passed.
JOIN = Script(
    name="test_join",
    lua="return ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3]",
    local=lambda ops, keys, args: "|".join(args),
)


async def test_script_arguments_reach_the_script_as_strings(store: Store) -> None:
    joined = await store.run(JOIN, ["join"], [7, 2.5, b"raw"])
    assert (joined.decode() if isinstance(joined, bytes) else joined) == "7|2.5|raw"


# Hash commands as scripts see them: `set` (HSET one field), `del` (HDEL fields), `all` (HGETALL,
# flat). The memory twin answers in Redis's shapes; `fields()` reads either as a dict.
HASH = Script(
    name="test_hash",
    lua="""
local op = ARGV[1]
if op == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  return 1
elseif op == 'del' then
  return redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
end
return redis.call('HGETALL', KEYS[1])
""",
    local=lambda ops, keys, args: (
        (ops.hset(keys[0], args[1], args[2].encode()) or 1) if args[0] == "set"
        else ops.hdel(keys[0], *args[1:]) if args[0] == "del"
        else [item for field, value in ops.hgetall(keys[0]).items() for item in (field, value)]
    ),
)


async def fields(store: Store, key: str) -> dict[str, bytes]:
    flat = await store.run(HASH, [key], ["all"])
    return {(f.decode() if isinstance(f, bytes) else f): v for f, v in zip(flat[::2], flat[1::2], strict=True)}


async def test_script_hashes(store: Store) -> None:
    assert await fields(store, "h") == {}
    assert await store.run(HASH, ["h"], ["del", "a"]) == 0  # a missing hash has no field to remove
    assert await store.run(HASH, ["h"], ["set", "a", "1"]) == 1
    assert await store.run(HASH, ["h"], ["set", "b", "2"]) == 1
    assert await store.run(HASH, ["h"], ["set", "a", "3"]) == 1  # replaces the field
    assert await fields(store, "h") == {"a": b"3", "b": b"2"}
    assert await store.ttl("h") == -1.0  # a new hash has no TTL; EXPIRE gives it one, HSET keeps it
    assert await store.expire("h", 30) is True
    await store.run(HASH, ["h"], ["set", "c", "4"])
    ttl = await store.ttl("h")
    assert ttl is not None and 0 < ttl <= 30
    assert "h" in await store.scan("h")
    assert await store.run(HASH, ["h"], ["del", "a", "b", "missing"]) == 2
    assert await fields(store, "h") == {"c": b"4"}
    assert await store.run(HASH, ["h"], ["del", "c"]) == 1
    assert await store.ttl("h") is None  # gone with its last field
    assert await store.delete("h") == 0
    # DEL counts a hash; SET replaces one (and its TTL); a hash expires as a whole.
    await store.run(HASH, ["g"], ["set", "a", "1"])
    assert await store.delete("g") == 1 and await fields(store, "g") == {}
    await store.run(HASH, ["g"], ["set", "a", "1"])
    await store.expire("g", 30)
    await store.set("g", b"plain")
    assert await store.get("g") == b"plain" and await store.ttl("g") == -1.0
    await store.run(HASH, ["e"], ["set", "a", "1"])
    assert await store.expire("e", 0.1) is True
    await asyncio.sleep(0.25)
    assert await fields(store, "e") == {} and await store.ttl("e") is None


async def test_memory_hashes_expire_with_the_store_clock() -> None:
    now = [1000.0]
    s = MemoryStore(clock=lambda: now[0])
    await s.run(HASH, ["h"], ["set", "a", "1"])
    await s.expire("h", 60)
    now[0] += 59.9
    assert await fields(s, "h") == {"a": b"1"}
    now[0] += 0.2
    assert await fields(s, "h") == {}
    assert await s.scan("*") == []


async def test_scan(store: Store) -> None:
    # 20 keys without a hash tag land on every node of a cluster.
    for i in range(20):
        await store.set(f"scan:a:{i:02}", b"1")
    await store.set("scan:b:0", b"1")
    found = await store.scan("scan:a:*")
    assert sorted(found) == [f"scan:a:{i:02}" for i in range(20)]
    assert len(await store.scan("scan:*", limit=7)) == 7


async def test_ping(store: Store) -> None:
    ping = await store.ping()
    assert ping.latency >= 0 and ping.unreachable == ()


async def test_a_store_without_a_memory_limit_never_evicts(store: Store) -> None:
    assert await store.eviction() is None


async def test_eviction_of_a_dead_redis_is_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await store.eviction()
    await store.close()


async def test_memory_ttl_with_injected_clock() -> None:
    now = [1000.0]
    s = MemoryStore(clock=lambda: now[0])
    await s.set("k", b"v", ttl=60)
    now[0] += 59.9
    assert await s.get("k") == b"v"
    now[0] += 0.2
    assert await s.get("k") is None


async def test_redis_down_is_fast_and_typed() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            await s.get("k")
    # The breaker is open now: failures are immediate.
    assert s.breaker.is_open
    with pytest.raises(StoreUnavailable, match="circuit open"):
        await s.set("k", b"v")
    await s.close()


# --- streams ---------------------------------------------------------------------------------
S = "sentinel:test:{stream}"
G = "deliverers"
LONG = 60_000  # an idle time no entry reaches during a test: nothing is taken over


async def add(store: Store, n: int, key: str = S) -> list[str]:
    return [
        await store.stream_add(key, {"r": f"record-{i}".encode(), "raw": bytes([0, 255, i])})
        for i in range(n)
    ]


async def test_stream_add_returns_increasing_ids_and_len_counts(store: Store) -> None:
    ids = await add(store, 5)
    assert len(set(ids)) == 5
    assert [parse_stream_id(i) for i in ids] == sorted(parse_stream_id(i) for i in ids)
    assert await store.stream_len(S) == 5
    assert await store.stream_len("sentinel:test:{missing}") == 0


async def test_stream_range_pages_every_entry_whatever_its_state_and_changes_nothing(store: Store) -> None:
    ids = await add(store, 5)
    await store.stream_read(S, G, "a", 2)  # pending: still in the range
    await store.stream_settle(S, G, "a", done=[ids[0]])  # deleted: not
    first = await store.stream_range(S, count=2)
    assert [e.id for e in first] == ids[1:3]
    assert first[0].fields == {"r": b"record-1", "raw": bytes([0, 255, 1])}
    assert [e.id for e in await store.stream_range(S, after=first[-1].id, count=10)] == ids[3:]
    assert await store.stream_range(S, after=ids[-1]) == []
    assert await store.stream_range(S, count=0) == []
    assert await store.stream_range("sentinel:test:{missing}") == []
    with pytest.raises(ValueError):
        await store.stream_range(S, after="not-an-id")
    assert [e.id for e in await store.stream_read(S, G, "b", 10)] == ids[2:]  # nobody's reads moved


async def test_stream_read_hands_out_each_entry_once_oldest_first(store: Store) -> None:
    ids = await add(store, 5)
    first = await store.stream_read(S, G, "a", 3)
    assert [e.id for e in first] == ids[:3]
    assert first[0].fields == {"r": b"record-0", "raw": bytes([0, 255, 0])}
    rest = await store.stream_read(S, G, "b", 10)
    assert [e.id for e in rest] == ids[3:]
    assert await store.stream_read(S, G, "a", 10) == []
    assert await store.stream_read(S, G, "a", 0) == []
    # Read is not settled: every entry is still in the stream, pending for its reader.
    assert await store.stream_len(S) == 5
    pending = await store.stream_idle(S, G, min_idle_ms=0, count=10)
    assert pending == [(i, "a") for i in ids[:3]] + [(i, "b") for i in ids[3:]]


async def test_stream_idle_lists_only_entries_idle_long_enough(store: Store) -> None:
    ids = await add(store, 4)
    await store.stream_read(S, G, "a", 2)
    await store.stream_read(S, G, "b", 2)
    assert await store.stream_idle(S, G, min_idle_ms=LONG, count=10) == []
    assert await store.stream_idle(S, G, min_idle_ms=0, count=3) == [(ids[0], "a"), (ids[1], "a"), (ids[2], "b")]
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10, consumer="b") == [(ids[2], "b"), (ids[3], "b")]
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10, consumer="nobody") == []
    # The next page: only ids above `after`.
    assert await store.stream_idle(S, G, min_idle_ms=0, count=2, after=ids[1]) == [(ids[2], "b"), (ids[3], "b")]
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10, after=ids[3]) == []
    assert await store.stream_idle(S, G, min_idle_ms=0, count=0) == []
    assert await store.stream_idle(S, "no-such-group", min_idle_ms=0, count=10) == []
    assert await store.stream_idle("sentinel:test:{missing}", G, min_idle_ms=0, count=10) == []


async def test_stream_reclaim_takes_over_only_the_owners_idle_entries(store: Store) -> None:
    ids = await add(store, 4)
    await store.stream_read(S, G, "batch-1", 3)
    await store.stream_read(S, G, "batch-2", 1)
    # Not idle long enough: nothing moves.
    assert await store.stream_reclaim(S, G, "batch-1", ids[:3], min_idle_ms=LONG) == []
    # Only entries of the named owner: ids[3] belongs to batch-2.
    got = await store.stream_reclaim(S, G, "batch-1", [ids[2], ids[0], ids[3]], min_idle_ms=0)
    assert [e.id for e in got] == [ids[0], ids[2]]  # oldest first, with their fields
    assert got[1].fields == {"r": b"record-2", "raw": bytes([0, 255, 2])}
    assert [p.consumer for p in await store.stream_idle(S, G, min_idle_ms=0, count=10)] == [
        "batch-1", "batch-1", "batch-1", "batch-2"
    ]
    # To another consumer: the entries change owner, and the old owner can no longer reclaim them.
    moved = await store.stream_reclaim(S, G, "batch-1", ids[:2], min_idle_ms=0, to="batch-3")
    assert [e.id for e in moved] == ids[:2]
    assert await store.stream_reclaim(S, G, "batch-1", ids[:2], min_idle_ms=0) == []
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10, consumer="batch-3") == [
        (ids[0], "batch-3"), (ids[1], "batch-3")
    ]
    assert await store.stream_reclaim(S, G, "batch-1", [], min_idle_ms=0) == []
    assert await store.stream_reclaim(S, "no-such-group", "x", ids, min_idle_ms=0) == []


async def test_stream_reclaim_resets_the_idle_time(store: Store) -> None:
    ids = await add(store, 2)
    await store.stream_read(S, G, "batch-1", 2)
    assert len(await store.stream_reclaim(S, G, "batch-1", ids, min_idle_ms=0)) == 2
    # Right after a takeover the entries are fresh again: a second taker with a real lease gets nothing.
    assert await store.stream_idle(S, G, min_idle_ms=LONG, count=10) == []
    assert await store.stream_reclaim(S, G, "batch-1", ids, min_idle_ms=LONG) == []


async def test_stream_reclaim_races_give_each_entry_to_one_caller(store: Store) -> None:
    ids = await add(store, 20)
    await store.stream_read(S, G, "crashed", 20)
    # Two takers see the same idle batch; with min_idle_ms the first resets it and the second gets nothing.
    await store.stream_reclaim(S, G, "crashed", ids, min_idle_ms=0)  # make it "just taken"
    results = await asyncio.gather(
        *(store.stream_reclaim(S, G, "crashed", ids, min_idle_ms=LONG) for _ in range(5))
    )
    assert results == [[]] * 5
    moved = await asyncio.gather(
        *(store.stream_reclaim(S, G, "crashed", ids, min_idle_ms=0, to=f"taker-{i}") for i in range(5))
    )
    # Moving away from "crashed" succeeds once: the others find the entries owned by someone else.
    assert sorted(len(m) for m in moved) == [0, 0, 0, 0, 20]


async def test_stream_reclaim_skips_entries_deleted_while_pending(store: Store) -> None:
    ids = await add(store, 3)
    await store.stream_read(S, G, "batch-1", 3)
    assert await store.stream_settle(S, "other-group", "x", done=[ids[1]]) == 1  # deleted, still pending in G
    got = await store.stream_reclaim(S, G, "batch-1", ids, min_idle_ms=0)
    assert [e.id for e in got] == [ids[0], ids[2]]


async def test_stream_settle_acknowledges_deletes_and_forgets_the_consumer(store: Store) -> None:
    ids = await add(store, 3)
    await store.stream_read(S, G, "batch-1", 3)
    assert await store.stream_settle(S, G, "batch-1", done=ids[:2]) == 2
    assert await store.stream_len(S) == 1
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10) == [(ids[2], "batch-1")]
    assert await store.stream_settle(S, G, "batch-1", done=ids[:2]) == 0  # already gone
    assert await store.stream_settle(S, G, "batch-1") == 0
    assert await store.stream_settle("sentinel:test:{missing}", G, "batch-1", done=ids) == 0
    # Settled entries are never handed out again, read or reclaimed.
    assert await store.stream_read(S, G, "b", 5) == []
    assert await store.stream_reclaim(S, G, "batch-1", ids[:2], min_idle_ms=0) == []


async def test_stream_settle_hands_retries_to_a_new_consumer(store: Store) -> None:
    ids = await add(store, 4)
    await store.stream_read(S, G, "batch-1", 3)
    await store.stream_read(S, G, "batch-2", 1)
    deleted = await store.stream_settle(
        S, G, "batch-1", done=[ids[0]], retry=[ids[1], ids[2], ids[3]], retry_to="batch-9"
    )
    assert deleted == 1
    # ids[3] was not batch-1's: it stays with batch-2.
    assert await store.stream_idle(S, G, min_idle_ms=0, count=10) == [
        (ids[1], "batch-9"), (ids[2], "batch-9"), (ids[3], "batch-2")
    ]
    # The moved entries start a fresh lease.
    assert await store.stream_idle(S, G, min_idle_ms=LONG, count=10) == []
    got = await store.stream_reclaim(S, G, "batch-9", ids, min_idle_ms=0)
    assert [e.id for e in got] == ids[1:3]


async def test_stream_settle_refuses_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.stream_settle(S, G, "c", done=["not-an-id"])
    with pytest.raises(ValueError):
        await store.stream_settle(S, G, "c", retry=["1-0"])
    with pytest.raises(ValueError):
        await store.stream_reclaim(S, G, "c", ["nope"], min_idle_ms=0)


async def test_stream_reclaim_and_settle_handle_large_batches(store: Store) -> None:
    # More ids than one Redis command gets at a time inside the scripts (they go in chunks).
    key = "sentinel:test:{big}"
    ids = [await store.stream_add(key, {"r": str(i).encode()}) for i in range(2100)]
    assert len(await store.stream_read(key, G, "big", 3000)) == 2100
    got = await store.stream_reclaim(key, G, "big", ids, min_idle_ms=0)
    assert [e.id for e in got] == ids
    assert await store.stream_settle(key, G, "big", done=ids[:1050], retry=ids[1050:], retry_to="rest") == 1050
    rest = await store.stream_idle(key, G, min_idle_ms=0, count=5000)
    assert rest == [(i, "rest") for i in ids[1050:]]


async def test_stream_group_starts_at_the_beginning_and_groups_are_independent(store: Store) -> None:
    ids = await add(store, 2)  # before any group exists
    assert [e.id for e in await store.stream_read(S, "one", "a", 5)] == ids
    assert [e.id for e in await store.stream_read(S, "two", "a", 5)] == ids


async def test_stream_group_is_recreated_after_the_stream_was_lost(store: Store) -> None:
    ids = await add(store, 1)
    assert [e.id for e in await store.stream_read(S, G, "a", 5)] == ids
    assert await store.delete(S) == 1  # as if Redis restarted without its data
    assert await store.stream_len(S) == 0
    assert await store.stream_idle(S, G, min_idle_ms=0, count=5) == []
    new = await store.stream_add(S, {"r": b"after"})
    got = await store.stream_read(S, G, "a", 5)
    assert [(e.id, e.fields) for e in got] == [(new, {"r": b"after"})]


async def test_concurrent_readers_never_get_the_same_entry(store: Store) -> None:
    ids = set(await add(store, 30))

    async def consume(name: str) -> list[str]:
        seen: list[str] = []
        while batch := await store.stream_read(S, G, name, 4):
            seen += [e.id for e in batch]
        return seen

    results = await asyncio.gather(*(consume(f"c{i}") for i in range(6)))
    everything = [i for seen in results for i in seen]
    assert sorted(everything) == sorted(ids)  # each entry exactly once


async def test_stream_add_validates_replica_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.stream_add(S, {"r": b"x"}, replicas=-1)
    with pytest.raises(ValueError):
        await store.stream_add(S, {"r": b"x"}, replicas=1, replica_timeout_ms=0)
    assert await store.stream_len(S) == 0


async def test_stream_add_refuses_an_entry_without_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="at least one field"):
        await store.stream_add(S, {})
    with pytest.raises(ValueError, match="at least one field"):
        await store.stream_add(S, {}, replicas=1, replica_timeout_ms=10)
    assert await store.stream_len(S) == 0
    breaker = getattr(store, "breaker", None)  # a caller's mistake is not an outage
    assert breaker is None or breaker.failures == 0


async def test_the_usage_sinks_shared_wait_is_only_ever_lengthened(store: Store) -> None:
    """`RedisStreamOutbox.quiet_sink` (LENGTHEN): a wait told after a longer one never shortens it;
    `sink_quiet` (LEFT) reads it for every deliverer but the one that told it last (its own wait)."""
    from sentinel.quota.outbox_stream import RedisStreamOutbox

    outbox = RedisStreamOutbox(store)
    assert await outbox.sink_quiet("b") == 0
    await outbox.quiet_sink(60, "a")
    await outbox.quiet_sink(5, "b")
    assert 50 < await outbox.sink_quiet("b") <= 60
    assert await outbox.sink_quiet("a") == 0
    await outbox.quiet_sink(90, "b")
    assert 60 < await outbox.sink_quiet("a") <= 90
    assert await outbox.sink_quiet("b") == 0
