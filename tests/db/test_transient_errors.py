"""PostgreSQL's "try the transaction again" answers (a serialization failure, a deadlock) are a
passing outage for `database_errors`, like a lost connection: the caller's 503 asks for a retry and
the usage deliverer backs off quietly, where they were raised as bugs (a 500, a "crashed" cycle)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from sentinel.db.engine import close_engine, create_engine, database_errors
from sentinel.errors import GovernanceUnavailable


async def _raise(url: str, sqlstate: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$"))
    finally:
        await close_engine(engine)


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_a_transaction_postgresql_asks_to_retry_is_an_outage(pg_url: str, sqlstate: str) -> None:
    with pytest.raises(GovernanceUnavailable, match=sqlstate):
        with database_errors():
            await _raise(pg_url, sqlstate)


async def test_a_constraint_violation_is_still_a_bug(pg_url: str) -> None:
    with pytest.raises(DBAPIError):
        with database_errors():
            await _raise(pg_url, "23505")
