"""Fixtures for the built-in governance: a migrated, empty database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, migrate, session_factory
from tests.db.support import SENTINEL_TABLES


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
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
            await conn.execute(text(f"TRUNCATE {', '.join(SENTINEL_TABLES)} RESTART IDENTITY CASCADE"))
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `db_engine`."""
    return session_factory(db_engine)
