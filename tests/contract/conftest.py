"""The contract suite runs on every Store backend: memory, a standalone Redis and a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sentinel.store import MemoryStore, Store
from tests.support.redis_cluster import redis_cluster, redis_cluster_url

__all__ = ["redis_cluster", "redis_cluster_url", "store"]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each Store backend in turn (this overrides the two-backend `store` of tests/conftest.py)."""
    from sentinel.store.cluster import RedisClusterStore
    from sentinel.store.redis import RedisStore

    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "redis":
        s = RedisStore(request.getfixturevalue("redis_url"), timeout=5.0)  # semantics, not latency
    else:
        s = RedisClusterStore(request.getfixturevalue("redis_cluster_url"), timeout=5.0)
    yield s
    await s.close()
