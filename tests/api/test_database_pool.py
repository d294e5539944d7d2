"""DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW size each process's pool of PostgreSQL connections
for requests (it was fixed at 10, and 10 more under load: many hosts x workers could pass the
server's `max_connections`). SQLite keeps its own pool (the settings are not used there)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from sentinel.app import SentinelApp, create_app
from sentinel.config import Settings
from tests.api.conftest import Gateway
from tests.db.support import create_database, drop_database
from tests.support.accounts import ledger_request_ids
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


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

