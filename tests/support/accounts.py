"""What an operator does to Sentinel's database, done by tests: keys, plans, ledger reads.

Every helper opens its own engine on `database_url` (the same URL the Sentinel under test uses),
goes through the package's own repositories, and disposes of the engine before returning, so it
can be called from any thread with `asyncio.run` or awaited in an async test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.db.models import UsageLedgerRow
from sentinel.domain.plans import parse_limits
from sentinel.domain.usage import UsageRecord
from sentinel.governance.keys import KeyService
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.plans import PlanRepository


@asynccontextmanager
async def database(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a migrated database, for the duration of the block."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def create_key(database_url: str, external_id: str, name: str | None = None) -> tuple[str, str]:
    """A new API key for `external_id` (created with the user if new): (key id, the key itself)."""
    async with database(database_url) as sessions:
        info, key = await KeyService(sessions).create_key(external_id, name)
        return info.id, key


async def revoke_key(database_url: str, key_id: str) -> None:
    async with database(database_url) as sessions:
        assert await KeyService(sessions).revoke(key_id), f"no key {key_id} to revoke"


async def set_user_plan(database_url: str, external_id: str, spec: str, plan: str | None = None) -> None:
    """Give `external_id` a plan of its own (named `plan`, default `plan-<external_id>`) with `spec`'s limits."""
    name = plan or f"plan-{external_id}"
    async with database(database_url) as sessions:
        repo = PlanRepository(sessions)
        await repo.set_plan(name, parse_limits(spec))
        await repo.set_user_plan(external_id, name)


async def usage_totals(database_url: str, external_id: str) -> dict[str, int]:
    """requests / input_tokens / output_tokens the built-in ledger holds for `external_id`."""
    async with database(database_url) as sessions:
        rows = await SqlLedger(sessions).totals(external_id)
    return {k: sum(int(r[k]) for r in rows) for k in ("requests", "input_tokens", "output_tokens")}


async def ledger_request_ids(database_url: str) -> set[str]:
    """The request id of every row the built-in ledger holds."""
    async with database(database_url) as sessions, sessions() as session:
        return set((await session.execute(select(UsageLedgerRow.request_id))).scalars())


async def record_and_roll_up(sessions: async_sessionmaker[AsyncSession], records: list[UsageRecord]) -> int:
    """Record usage in the built-in ledger and roll it up at once (what the rollup worker does within a second)."""
    ledger = SqlLedger(sessions)
    new = await ledger.record_batch(records)
    while await ledger.roll_up():
        pass
    return new
