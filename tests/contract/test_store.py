"""The Store contract, run against every backend (in-memory and a real Redis)."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.errors import StoreUnavailable
from sentinel.store import MemoryStore, Script, Store
from sentinel.store.redis import RedisStore
from tests.support.servers import free_port


async def test_get_set_delete(store: Store) -> None:
    assert await store.get("k") is None
    assert await store.set("k", b"v") is True
    assert await store.get("k") == b"v"
    assert await store.delete("k", "missing") == 1
    assert await store.get("k") is None


async def test_set_nx(store: Store) -> None:
    assert await store.set("k", b"1", nx=True) is True
    assert await store.set("k", b"2", nx=True) is False
    assert await store.get("k") == b"1"


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


async def test_scan(store: Store) -> None:
    for i in range(5):
        await store.set(f"scan:a:{i}", b"1")
    await store.set("scan:b:0", b"1")
    found = await store.scan("scan:a:*")
    assert sorted(found) == [f"scan:a:{i}" for i in range(5)]


async def test_ping(store: Store) -> None:
    assert await store.ping() >= 0


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
