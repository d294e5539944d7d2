"""Outbox backends for batch-identity tests, each with a way to let time pass.

A `World` is one storage (a SQL database, a store stream) that several outbox instances — several
deliverers, several replicas — share, and one notion of time: `age(seconds)` makes everything
pending that much older. SQL and the in-memory store take an injected clock; a real Redis keeps
idle times itself, so there `age` rewrites them (XCLAIM ... IDLE, to the same consumer), which is
exactly what time would do to them.

Import the fixtures into a test module with the cluster fixtures they may need:
`from tests.support.outbox_worlds import world, world_kind` and
`from tests.support.redis_cluster import redis_cluster, redis_cluster_url`. A test for the stream
worlds only: `@pytest.mark.parametrize("world_kind", STREAM_KINDS, indirect=True)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.quota.batch import OutboxBackend
from sentinel.quota.outbox import RedisStreamOutbox, SqlOutbox
from sentinel.store import MemoryStore, Store
from tests.db.support import SENTINEL_TABLES
from tests.support.clock import FakeClock

LEASE = 30.0
STREAM_KINDS = [
    "stream-memory",
    pytest.param("stream-redis", marks=pytest.mark.redis),
    pytest.param("stream-cluster", marks=pytest.mark.redis),
]
KINDS = ["sql-sqlite", pytest.param("sql-postgres", marks=pytest.mark.postgres), *STREAM_KINDS]


class World:
    """One shared outbox storage and its time (see the module docstring)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], OutboxBackend],
        age: Callable[[float], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        store: Store | None = None,
    ) -> None:
        self.name = name
        self._make = make
        self._age = age
        self._close = close
        self.store = store  # the stream worlds' store

    def outbox(self) -> OutboxBackend:
        """Another outbox instance on the same storage (what another deliverer or replica uses)."""
        return self._make()

    async def age(self, seconds: float) -> None:
        """Let `seconds` pass for everything pending."""
        await self._age(seconds)

    async def close(self) -> None:
        await self._close()


def _advancing(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    async def age(seconds: float) -> None:
        clock.advance(seconds)

    return age


async def _sql_world(name: str, url: str, *, truncate: bool) -> World:
    engine: AsyncEngine = create_engine(url)
    await migrate(engine)
    if truncate:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(SENTINEL_TABLES)} RESTART IDENTITY CASCADE"))
    sessions = session_factory(engine)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(0.0)

    def make() -> OutboxBackend:
        return SqlOutbox(sessions, lease_seconds=LEASE, clock=lambda: start + timedelta(seconds=clock.now))

    return World(name, make, _advancing(clock), engine.dispose)


async def age_redis_stream(store: Any, seconds: float) -> None:
    """Make every pending entry of the usage stream `seconds` older, keeping its consumer, and bring
    the end of every batch's hold (`RedisStreamOutbox.hold_key`) and of the sink's shared wait
    (`RedisStreamOutbox.QUIET_KEY`) that much closer."""
    key, group = RedisStreamOutbox.KEY, RedisStreamOutbox.GROUP
    client = store.client
    ms = int(seconds * 1000)
    names = [name async for name in client.scan_iter(match=f"{key}:hold:*")]
    for name in [*names, RedisStreamOutbox.QUIET_KEY]:
        left = await client.pttl(name)
        if 0 < left <= ms:
            await client.delete(name)
        elif left > ms:
            await client.pexpire(name, left - ms)
    if not await client.exists(key):
        return
    for pending in await client.xpending_range(key, group, "-", "+", 100_000):
        idle = int(pending["time_since_delivered"]) + int(seconds * 1000)
        await client.xclaim(key, group, pending["consumer"], 0, [pending["message_id"]], idle=idle, justid=True)


def _stream_world(name: str, store: Store, age: Callable[[float], Awaitable[None]]) -> World:
    def make() -> OutboxBackend:
        return RedisStreamOutbox(store, lease_seconds=LEASE)

    return World(name, make, age, store.close, store)


async def open_world(kind: str, url: str | None, tmp_path: Path) -> World:
    if kind == "sql-sqlite":
        return await _sql_world(kind, f"sqlite+aiosqlite:///{tmp_path}/sentinel.db", truncate=False)
    if kind == "stream-memory":
        clock = FakeClock()
        return _stream_world(kind, MemoryStore(clock=clock), _advancing(clock))
    assert url is not None
    if kind == "sql-postgres":
        return await _sql_world(kind, url, truncate=True)
    if kind == "stream-redis":
        from sentinel.store.redis import RedisStore

        redis_store = RedisStore(url, timeout=5.0)
        return _stream_world(kind, redis_store, lambda s: age_redis_stream(redis_store, s))
    from sentinel.store.cluster import RedisClusterStore

    cluster_store = RedisClusterStore(url, timeout=5.0)
    return _stream_world(kind, cluster_store, lambda s: age_redis_stream(cluster_store, s))


@pytest.fixture(params=KINDS)
def world_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Which storage, and the URL of its server (sync: the server fixtures run their own loops)."""
    kind: str = request.param
    server = {"sql-postgres": "pg_url", "stream-redis": "redis_url", "stream-cluster": "redis_cluster_url"}
    return kind, (request.getfixturevalue(server[kind]) if kind in server else None)


@pytest.fixture
async def world(world_kind: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[World]:
    """Each outbox storage in turn: SQLite, PostgreSQL, the memory store's stream, Redis, a Redis Cluster."""
    opened = await open_world(*world_kind, tmp_path)
    yield opened
    await opened.close()
