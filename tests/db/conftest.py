"""Fixtures for migration tests: URLs of brand-new, empty databases on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.db.support import SQL_BACKENDS, create_database, drop_database


@pytest.fixture
async def fresh_pg_url(pg_url: str) -> AsyncIterator[str]:
    """An empty PostgreSQL database of its own for one test (dropped afterwards)."""
    url = await create_database(pg_url)
    yield url
    await drop_database(pg_url, url)


@pytest.fixture(params=SQL_BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL on each backend: a SQLite file in a not-yet-existing directory, then PG."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/nested/dir/sentinel.db"
    url: str = request.getfixturevalue("fresh_pg_url")
    return url
