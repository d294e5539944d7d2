"""Plan changes saved in the database whose follow-up is not done yet, kept there until it is.

A plan change is saved (and audited) first; its follow-up — the counters of its new windows seeded
from the ledger, its users' cached plans dropped from the store — comes after. The change's row here
(`row`) is written in the transaction that saves it (`PlanRepository`), so that whatever stops the
follow-up — the store or the database unable to take it, or the process killed or cancelled before
it was done — leaves the change here, durably, and a running gateway finishes it once both answer
(`sentinel.services.plan_finisher`) and deletes it (`done`), whichever process made it (the admin
API, the console, the command line) and across restarts. The process that made the change deletes
it once its follow-up is done. Finishing one twice is harmless: a seed only ever raises a counter to
what the ledger holds, and dropping a cached plan again drops nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import UnfinishedPlanChangeRow
from sentinel.domain.plans import Plan, parse_plan_spec


@dataclass(frozen=True)
class UnfinishedPlanChange:
    """One change to finish: its users, the plan before it (None: every window of the plan after
    is seeded) and after it."""

    id: int
    users: tuple[str, ...]
    before: Plan | None
    after: Plan


def _plan(spec: str | None) -> Plan | None:
    return None if spec is None else parse_plan_spec(spec, "unfinished")


class UnfinishedPlanChanges:
    """The `unfinished_plan_changes` table. Every call raises GovernanceUnavailable when the
    database cannot be reached."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @staticmethod
    def row(users: Sequence[str], before: Plan | None, after: Plan) -> UnfinishedPlanChangeRow:
        """The row of a change whose follow-up is still to do, for the repository to write in the
        change's own transaction (its `id` is set once written)."""
        return UnfinishedPlanChangeRow(
            users=json.dumps(list(users)), plan_before=None if before is None else before.spec(),
            plan_after=after.spec(),
        )

    async def pending(self, limit: int = 100) -> list[UnfinishedPlanChange]:
        """The oldest `limit` changes still to finish, oldest first. A row with no plan after (written
        only by the first version of this table's code, for a few minutes of 2026-12-07) is not read:
        every writer since names the plan after."""
        query = (select(UnfinishedPlanChangeRow).where(UnfinishedPlanChangeRow.plan_after.is_not(None))
                 .order_by(UnfinishedPlanChangeRow.id).limit(limit))
        with database_errors("unfinished plan changes unavailable"):
            async with self._sessions() as session:
                rows = (await session.scalars(query)).all()
        return [UnfinishedPlanChange(row.id, tuple(json.loads(row.users)), _plan(row.plan_before), after)
                for row in rows if (after := _plan(row.plan_after)) is not None]

    async def done(self, change_id: int) -> None:
        """Forget a change once finished (another process finishing it too deletes nothing more)."""
        with database_errors("unfinished plan changes unavailable"):
            async with self._sessions() as session:
                await session.execute(delete(UnfinishedPlanChangeRow).where(UnfinishedPlanChangeRow.id == change_id))
                await session.commit()
