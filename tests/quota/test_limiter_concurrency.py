"""Concurrent reservations admit exactly the limit: one Redis client, and two (two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sentinel.domain.plans import parse_plan_spec
from sentinel.quota.limiter import QuotaLimiter
from sentinel.store import MemoryStore, Store
from sentinel.store.redis import RedisStore

K = 100
PLAN = parse_plan_spec(f"requests={K}/1h,input_tokens={K * 10}/1h,output_tokens={K * 1000}/1d")


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    # Two clients with their own connection pools, like two gateway replicas sharing one Redis.
    a, b = RedisStore(redis_url, timeout=5.0), RedisStore(redis_url, timeout=5.0)
    yield a, b
    await a.close()
    await b.close()


async def hammer(stores: list[Store], subject: str) -> int:
    limiters = [QuotaLimiter(s) for s in stores]
    # 3K attempts, each needing 10 input tokens: requests and input tokens run out together at K.
    attempts = [
        limiters[i % len(limiters)].reserve(subject, PLAN, input_tokens=10, output_tokens=7)
        for i in range(3 * K)
    ]
    results = await asyncio.gather(*attempts)
    admitted = [r for r in results if r.allowed]
    counters = [int(await stores[0].get(key) or 0) for key in admitted[0].keys]
    assert counters == [len(admitted), len(admitted) * 10, len(admitted) * 7]
    return len(admitted)


@pytest.mark.parametrize("run", range(10))
async def test_one_redis_client_admits_exactly_k(
    redis_stores: tuple[RedisStore, RedisStore], run: int
) -> None:
    assert await hammer([redis_stores[0]], f"one-{run}") == K


@pytest.mark.parametrize("run", range(10))
async def test_two_redis_clients_admit_exactly_k(
    redis_stores: tuple[RedisStore, RedisStore], run: int
) -> None:
    assert await hammer(list(redis_stores), f"two-{run}") == K


async def test_memory_store_admits_exactly_k() -> None:
    assert await hammer([MemoryStore()], "memory") == K
