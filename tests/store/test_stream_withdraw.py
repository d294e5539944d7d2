"""An unconfirmed stream entry (`stream_add(replicas=...)`) is withdrawn so its record can be stored
elsewhere — unless the consumer group read it meanwhile: then the entry is kept and reported as
stored, since its reader delivers it and a second copy would be delivered twice (Zion counts both).
The Redis here has no replica, so every WAIT falls short: what a lagging replica does."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from sentinel.errors import StoreUnavailable
from sentinel.store.redis import RedisStore

S, G = "test:usage", "deliverers"

pytestmark = pytest.mark.redis


async def test_an_unconfirmed_entry_nobody_read_is_withdrawn(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xgroup_create(S, G, id="0", mkstream=True)
        with pytest.raises(StoreUnavailable, match="not confirmed"):
            await store.stream_add(S, {"r": b"x"}, replicas=1, replica_timeout_ms=50, group=G)
        assert await client.xlen(S) == 0
    finally:
        await client.aclose()
        await store.close()


async def test_an_unconfirmed_entry_the_group_already_read_is_kept(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xgroup_create(S, G, id="0", mkstream=True)
        adding = asyncio.ensure_future(store.stream_add(S, {"r": b"x"}, replicas=1, replica_timeout_ms=2000, group=G))
        read: list[object] = []
        while not read:  # a deliverer reads the entry while its WAIT is still running
            read = await client.xreadgroup(G, "deliverer-1", {S: ">"}, count=1, block=50)
            assert not adding.done()
        entry_id = await adding  # kept: reported as stored, not withdrawn for a second copy elsewhere
        assert await client.xlen(S) == 1
        assert read[0][1][0][0].decode() == entry_id  # type: ignore[index]
    finally:
        await client.aclose()
        await store.close()
