"""A fresh cluster store under a concurrent burst, and redis-py's own connection races.

redis-py (8.1) decides how to route a command before it has loaded the slot map: a command issued
while the first (or a re-)load is under way is sent to a random primary, which answers MOVED for
two slots in three; every fifth MOVED then makes redis-py close *all* its connections, those of
other commands in flight included, which then fail with ConnectionError or even AttributeError
(`'NoneType' object has no attribute 'writelines'`). A Sentinel that starts under load (a restart
behind a busy load balancer) saw 500s and 503s on its first burst. The store now loads the slot
map before any command when redis-py has none, and follows MOVED replies slot by slot instead of
dropping every connection; an AttributeError raised inside redis-py is an outage, not a 500.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from sentinel.errors import StoreUnavailable
from sentinel.quota.limiter import RESERVE
from sentinel.store.cluster import RedisClusterStore

ROUNDS = 5
BURST = 90
TAGS = ("{b}", "{c}", "{a}")  # slots 3300, 7365, 15495: one on each primary


def test_the_tags_live_on_different_primaries() -> None:
    slots = sorted(key_slot(tag.encode()) for tag in TAGS)
    # three primaries own 0-5460, 5461-10922, 10923-16383 in the fixture cluster
    assert [slot * 3 // 16384 for slot in slots] == [0, 1, 2], slots


async def test_a_cold_store_serves_a_concurrent_burst(redis_cluster_url: str) -> None:
    for round_ in range(ROUNDS):
        store = RedisClusterStore(redis_cluster_url, timeout=5.0)
        calls = []
        for i in range(BURST):
            tag = TAGS[(i // 3) % len(TAGS)]  # every kind of call on every primary
            if i % 3 == 0:
                calls.append(store.get(f"sentinel:test:{tag}:value"))
            elif i % 3 == 1:
                calls.append(store.incr(f"sentinel:test:{tag}:count:{round_}"))
            else:
                key = f"sentinel:quota:{tag}:requests:60:{round_}"
                calls.append(store.run(RESERVE, [key], [1, 10_000, 0, 60_000]))
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert not failed, f"round {round_}: {len(failed)} of {BURST} failed: {failed[:3]!r}"
            assert store.breaker.failures == 0
            counts = [int(await store.get(f"sentinel:test:{tag}:count:{round_}") or 0) for tag in TAGS]
            assert counts == [BURST // 9] * 3
        finally:
            await store.close()


async def test_an_attribute_error_raised_inside_redis_py_is_an_outage(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=5.0)
    closed_under_us = Connection()
    # What a command meets when redis-py dropped the connection's stream under it: a writer that
    # is no longer a stream. redis-py 8.2 turns a writer of None into ConnectionError itself, so
    # the stand-in is an object without a stream's attributes, which fails inside redis-py on
    # every version.
    closed_under_us._writer = object()  # type: ignore[assignment]
    try:
        with pytest.raises(StoreUnavailable, match="connection closed under the command"):
            async with store.guard():
                await closed_under_us._send_packed_command([b"PING\r\n"])
        assert store.breaker.failures == 1
        with pytest.raises(AttributeError):
            async with store.guard():
                raise AttributeError("a bug of ours stays a bug")
    finally:
        await store.close()
