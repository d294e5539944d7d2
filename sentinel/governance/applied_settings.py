"""Settings as the last start applied them, in the built-in database (`applied_settings`).

A setting whose change at a restart has work to do — DEFAULT_PLAN's new windows, seeded from the
ledger (`sentinel.services.startup_seed`) — is recorded here once that work is done, so the next
start compares its own value with the last one applied. The database, not the store: it is where
the plans and the ledger the seed reads live, it outlives a store that loses its data (the
in-process one at every restart), and every replica sees the same row.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import AppliedSettingRow, utcnow
from sentinel.db.queries import insert_ignoring

DEFAULT_PLAN_SETTING = "default_plan"


class AppliedSettings:
    """Read and record the value a start applied of a setting; GovernanceUnavailable on an outage."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def get(self, name: str) -> str | None:
        """The value last recorded for `name`, or None when none was."""
        with database_errors("database unavailable"):
            async with self._sessions() as session:
                value: str | None = await session.scalar(
                    select(AppliedSettingRow.value).where(AppliedSettingRow.name == name))
                return value

    async def put(self, name: str, value: str) -> None:
        """Record `value` for `name` (replacing the one before; replicas racing write the last one)."""
        row = AppliedSettingRow
        with database_errors("database unavailable"):
            async with self._sessions() as session, session.begin():
                changed = await session.execute(
                    update(row).where(row.name == name).values(value=value, updated_at=utcnow()))
                if not getattr(changed, "rowcount", 0):
                    await session.execute(insert_ignoring(session, row, ["name"]).values(name=name, value=value))
