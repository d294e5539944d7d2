"""DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW size each process's pool of PostgreSQL connections
for requests (it was fixed at 10, and 10 more under load: many hosts x workers could pass the
server's `max_connections`). SQLite keeps its own pool (the settings are not used there). A
PostgreSQL that refuses a new connection (too many) is an outage: 503, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from sentinel.app import SentinelApp, create_app
from sentinel.config import Settings
from tests.api.conftest import Gateway
from tests.conftest import PG_ADMIN_DSN
from tests.db.support import create_database, drop_database
from tests.support.accounts import create_key, ledger_request_ids
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def own_pg_url(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test's own (its ledger holds only this test's requests)."""
    url = asyncio.run(create_database(pg_url))
    yield url
    asyncio.run(drop_database(pg_url, url))


def _settings(database_url: str, **overrides: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=database_url, access_log=False, redis_url=None,
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="k", **overrides,
    )


@contextlib.asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[SentinelApp]:
    app = create_app(settings)
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


async def test_the_request_pool_holds_the_configured_connections(pg_url: str) -> None:
    """The engine the app's wiring builds keeps DATABASE_POOL_SIZE connections and opens at most
    DATABASE_MAX_OVERFLOW more: with 3 + 2, five are had at once and a sixth waits for one
    (DATABASE_TIMEOUT_SECONDS), then fails as any exhausted pool does (a 503 for a request)."""
    settings = _settings(pg_url, database_pool_size=3, database_max_overflow=2, database_timeout_seconds=2.0)
    async with _started(settings) as app, contextlib.AsyncExitStack() as held:
        assert app.runtime is not None
        engine = app.runtime.engine
        assert engine.dialect.name == "postgresql"
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        connections: list[AsyncConnection] = [await held.enter_async_context(engine.connect()) for _ in range(5)]
        assert len(connections) == 5
        assert engine.pool.checkedout() == 5 and engine.pool.overflow() == 2  # type: ignore[attr-defined]
        with pytest.raises(PoolTimeout):
            async with engine.connect():
                pass


def test_a_one_connection_pool_serves_concurrent_requests(
    own_pg_url: str, gateway_factory: Callable[..., Gateway]  # the database outlives the gateway
) -> None:
    """The smallest pool (1, none more) still serves requests arriving together: each waits its turn
    for the connection (key lookup, usage record), none needs two at once."""
    gw = gateway_factory(database_url=own_pg_url, database_pool_size=1, database_max_overflow=0)
    app = gw.server.server.config.app
    assert app.runtime.engine.pool.size() == 1

    def chat(_: int) -> int:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=20) as client:
            return client.post("/v1/chat/completions", json=CHAT).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(chat, range(8)))
    assert statuses == [200] * 8
    assert wait_for(lambda: len(asyncio.run(ledger_request_ids(own_pg_url))) == 8, timeout=30)
    assert app.runtime.engine.pool.checkedout() <= 1


async def test_on_sqlite_the_settings_are_not_used(tmp_path: Path) -> None:
    """A SQLite file keeps SQLAlchemy's own pool (5 connections, 10 more): one writer at a time
    whatever the pool, and the settings are not refused there (one set of settings for both)."""
    settings = _settings(f"sqlite+aiosqlite:///{tmp_path}/s.db", database_pool_size=1, database_max_overflow=0)
    async with _started(settings) as app:
        assert app.runtime is not None
        assert app.runtime.engine.pool.size() == 5  # type: ignore[attr-defined]


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def limited_role_url(pg_url: str) -> Iterator[tuple[str, str]]:
    """(URL, role): a database of its own, owned by and reached as a role of its own (not a
    superuser: a role's CONNECTION LIMIT binds it as `max_connections` binds everyone)."""
    role = f"sentinel_pool_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE ROLE "{role}" LOGIN', f'CREATE DATABASE "{role}" OWNER "{role}"'))
    url = make_url(PG_ADMIN_DSN).set(drivername="postgresql+asyncpg", username=role, password=None, database=role)
    yield url.render_as_string(hide_password=False), role
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{role}"'))


def test_a_database_out_of_connections_is_a_503_not_a_500(
    limited_role_url: tuple[str, str], gateway_factory: Callable[..., Gateway]  # the database outlives the gateway
) -> None:
    """Pools sized past the server's `max_connections` (hosts x workers x pool): PostgreSQL refuses
    the next connection ("too many clients", SQLSTATE 53300), which asyncpg raises as an error
    SQLAlchemy does not take for an outage. Every request needing a new connection was a 500
    `internal_error`; it is the database's 503 (529 on /v1/messages), as for a database that is down."""
    url, role = limited_role_url
    gw = gateway_factory(database_url=url, database_pool_size=1, database_max_overflow=0)
    _, uncached = asyncio.run(create_key(url, "bob"))
    # No new connection for the role from now on; the ones it has are ended (the gateway's pooled one
    # is found dead by its pre-ping, and replacing it is refused).
    asyncio.run(_admin(
        f'ALTER ROLE "{role}" CONNECTION LIMIT 0',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
    ))
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {uncached}"}, timeout=20) as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "governance_unavailable"
        assert "53300" in refused.json()["error"]["message"]
        refused = client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": uncached})
        assert refused.status_code == 529, refused.text
        assert refused.json()["error"]["type"] == "overloaded_error"
