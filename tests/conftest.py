"""Shared fixtures: a throwaway real Redis, a throwaway PostgreSQL database, store backends.

Real services are the proof that the Redis and PostgreSQL paths work. When a service cannot be
had, the test is skipped locally but fails under CI=true (a missing dependency is a red build).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pytest_redis import factories
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.store import MemoryStore, Store
from tests.db.support import SENTINEL_TABLES, SQL_BACKENDS

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_BIN = shutil.which("redis-server")
PG_ADMIN_DSN = os.environ.get("SENTINEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a missing Redis/PostgreSQL must not pass a CI run silently."""
    if IN_CI:
        pytest.fail(f"required test service unavailable under CI=true: {reason}")
    pytest.skip(reason)


redis_proc = factories.redis_proc(executable=REDIS_BIN or "/usr/bin/redis-server", port=None)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A redis-server started for this test session (pytest-redis); yields its base URL."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    proc = request.getfixturevalue("redis_proc")
    yield f"redis://{proc.host}:{proc.port}"


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A clean Redis database (flushed before the test) on the session's server."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server + "/0"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped at the end (asyncpg URL)."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        unavailable("asyncpg not installed")
    name = f"sentinel_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each Store backend in turn: the in-memory one and a real Redis."""
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        from sentinel.store.redis import RedisStore

        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, timeout=5.0)  # the contract is about semantics, not latency
    yield s
    await s.close()


@pytest.fixture(params=SQL_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file URL, then the session's PostgreSQL database (emptied by `db_engine`)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/sentinel.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated database with every Sentinel table empty."""
    engine = create_engine(db_url)
    await migrate(engine)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            leaked = await _end_leaked_transactions(conn)
            await conn.execute(text(f"TRUNCATE {', '.join(SENTINEL_TABLES)} RESTART IDENTITY CASCADE"))
        if leaked:
            await engine.dispose()
            pytest.fail(f"an earlier test left PostgreSQL sessions idle in a transaction (ended now): {leaked}")
    yield engine
    await engine.dispose()


async def _end_leaked_transactions(conn: AsyncConnection) -> list[str]:
    """End the sessions on this database left idle in a transaction (tests run one at a time, so
    one still idle in a transaction after two seconds is a leak of an earlier test): their locks
    would hold every later test's `TRUNCATE` until it timed out — one leak erroring every
    PostgreSQL test after it. What they ran is returned, for the one test that reports it."""
    idle = (
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND state LIKE 'idle in transaction%'"
    )
    for _ in range(20):
        await conn.execute(text("SELECT pg_stat_clear_snapshot()"))  # else one snapshot a transaction
        leaked = [f"{pid}: {query}" for pid, query in await conn.execute(text(f"SELECT pid, left(query, 120) {idle}"))]
        if not leaked:
            return []
        await asyncio.sleep(0.1)  # a transaction between two statements, or a process on its way out
    await conn.execute(text(f"SELECT pg_terminate_backend(pid) {idle}"))
    return leaked


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `db_engine` (SQLite, then PostgreSQL)."""
    return session_factory(db_engine)
