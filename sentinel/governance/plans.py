"""Plans in the built-in database: named sets of limits, and which plan each user is on.

The plan and limit types and their spelling (`requests=100/1m`) are `sentinel.domain.plans`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import AuditLogRow, PlanLimitRow, PlanRow, UnfinishedPlanChangeRow, User, utcnow
from sentinel.db.queries import ensure_user, insert_ignoring
from sentinel.domain.plans import MAX_PLAN_LIMITS, Limit, Metric, Plan
from sentinel.errors import NotFound
from sentinel.observability.logging import clipped


class PlanExists(Exception):  # noqa: N818 - a verdict on a `create`, not a failure
    """`set_plan(..., create=True)` found the plan there already, or `set_plan` would have created a
    plan whose name differs from an existing one's only by case; its argument is the existing name."""


@dataclass(frozen=True)
class PlanChange:
    """What `set_plan` did: the plan before (None: it created it) and after, and the external ids
    of the users on it (read in its transaction: their cached plans are stale)."""

    before: Plan | None
    after: Plan
    users: tuple[str, ...] = ()


def _read_order(limit: Limit) -> tuple[str, int]:
    """The order a plan's limits are read in (`_load`, `_limits_of`)."""
    return limit.metric, limit.window_seconds


def _check_limits(limits: Sequence[Limit]) -> None:
    """ValueError unless `limits` may be a plan's: at most MAX_PLAN_LIMITS, one per metric and window."""
    if len(limits) > MAX_PLAN_LIMITS:
        raise ValueError(f"a plan may have at most {MAX_PLAN_LIMITS} limits")
    keys = [(limit.metric, limit.window_seconds) for limit in limits]
    if len(set(keys)) != len(keys):
        raise ValueError("a plan may have only one limit per metric and window")


async def _hold_name(session: AsyncSession, name: str) -> None:
    """Serialise the changes of plans whose names differ only by case, so that of concurrent
    creations of `Pro` and `pro` one sees the other (`_case_twin`): on PostgreSQL a transaction
    advisory lock keyed on the lower-cased name; SQLite's write lock, taken by the first write,
    serialises every change already."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(b"sentinel-plan-name:" + name.lower().encode()).digest()
        await session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))


async def _case_twin(session: AsyncSession, name: str) -> str | None:
    """The name of another plan equal to `name` but for case (plan names are ASCII), or None."""
    found: str | None = await session.scalar(
        select(PlanRow.name).where(func.lower(PlanRow.name) == name.lower(), PlanRow.name != name).limit(1)
    )
    return found


async def _limits_of(session: AsyncSession, name: str) -> list[Limit]:
    rows = await session.execute(
        select(PlanLimitRow.metric, PlanLimitRow.window_seconds, PlanLimitRow.limit)
        .where(PlanLimitRow.plan_name == name)
        .order_by(PlanLimitRow.metric, PlanLimitRow.window_seconds)
    )
    return [Limit(cast(Metric, metric), window_seconds, limit) for metric, window_seconds, limit in rows.all()]


class PlanRepository:
    """The operator side of plans: define them, list them, put users on them.

    Each change takes an `audit` (its audit entry) and an `unfinished` (the row of its follow-up,
    `sentinel.governance.unfinished_plans`; None: none to do), each written in the change's own
    transaction: a change is saved with both or not at all, so no crash between the save and the
    follow-up loses the follow-up."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def set_plan(
        self, name: str, limits: Sequence[Limit], *, merge: bool = False, create: bool = False,
        audit: Callable[[PlanChange], AuditLogRow] | None = None,
        unfinished: Callable[[PlanChange], UnfinishedPlanChangeRow | None] | None = None,
    ) -> PlanChange:
        """Create plan `name` or replace all of its limits with `limits` (`merge`: only those of the
        same metric and window); with `create`, PlanExists (nothing written) when it exists;
        ValueError (nothing written) when the plan would hold more than MAX_PLAN_LIMITS limits or
        two of one metric and window. `audit`: the audit entry of the change, written in its
        transaction (not written, nothing is), as is `unfinished`'s row. A new plan whose name equals an existing one's but for
        case (`pro` beside `Pro`: alike on the console) is PlanExists (the existing name), nothing
        written; plans stored so earlier keep working.

        The plan is read and written in one transaction holding its row (on SQLite the database's
        write lock): concurrent changes of one plan apply one after the other, each to what the
        one before wrote, so a merge never drops a limit another operator added meanwhile, and of
        concurrent creations one creates the plan and the others are refused. A change that found
        the plan just as a `delete_plan` removed it creates it anew (`before` None)."""
        if not name:
            raise ValueError("plan name must not be empty")
        _check_limits(limits)
        now = utcnow()
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                await _hold_name(session, name)
                held = None
                while held is None:
                    created = await session.scalar(
                        insert_ignoring(session, PlanRow, ["name"])
                        .values(name=name, created_at=now, updated_at=now)
                        .returning(PlanRow.name)
                    )
                    if create and created is None:
                        await session.rollback()
                        raise PlanExists(name)
                    if created is not None and (twin := await _case_twin(session, name)) is not None:
                        await session.rollback()
                        raise PlanExists(twin)
                    # The row lock taken here serialises concurrent changes of the same plan. No row:
                    # a delete committed since the insert found it (PostgreSQL; the insert took no
                    # lock), and its limits would break their foreign key: the plan is made anew.
                    held = await session.scalar(
                        update(PlanRow).where(PlanRow.name == name).values(updated_at=now).returning(PlanRow.name)
                    )
                before = None if created is not None else Plan(name, tuple(await _limits_of(session, name)))
                merged = list(limits)
                if merge and before is not None:
                    new = {(lim.metric, lim.window_seconds) for lim in limits}
                    merged = [lim for lim in before.limits if (lim.metric, lim.window_seconds) not in new] + merged
                    _check_limits(merged)  # nothing written: the session rolls back
                await session.execute(delete(PlanLimitRow).where(PlanLimitRow.plan_name == name))
                session.add_all(
                    PlanLimitRow(
                        plan_name=name, metric=lim.metric, window_seconds=lim.window_seconds, limit=lim.limit
                    )
                    for lim in merged
                )
                users = await session.scalars(select(User.external_id).where(User.plan_name == name))
                change = PlanChange(before, Plan(name, tuple(sorted(merged, key=_read_order))), tuple(users.all()))
                if audit is not None:
                    session.add(audit(change))
                if unfinished is not None and (row := unfinished(change)) is not None:
                    session.add(row)
                await session.commit()
        return change

    async def delete_plan(
        self, name: str, audit: Callable[[Plan, list[str]], AuditLogRow] | None = None,
        unfinished: Callable[[Plan, list[str]], UnfinishedPlanChangeRow | None] | None = None,
    ) -> list[str] | None:
        """Delete a plan and its limits and put its users on the default plan, in one transaction;
        the external ids of those users (whose cached plans are stale), or None for an unknown plan.
        `audit`: the entry of the deletion (given the plan as deleted and its users), written in
        that transaction, as is `unfinished`'s row (given the same).

        `users.plan_name` has no foreign key (see `sentinel.db.models`), so the users are cleared
        here: a name left behind would give them any plan created later under that name. The plan's
        row is held first (a change of it in flight, `set_plan`, commits before its limits are read
        here) and deleted before its users are moved: on PostgreSQL that delete waits for an
        assignment to it in flight (which holds the row in KEY SHARE, see `set_user_plan`), so the
        users' update below sees it; on SQLite the transaction holds the database's write lock from
        its first statement.
        """
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                held = await session.scalar(
                    update(PlanRow).where(PlanRow.name == name).values(updated_at=utcnow()).returning(PlanRow.name)
                )
                if held is None:
                    return None
                plan = Plan(name, tuple(await _limits_of(session, name)))
                await session.execute(delete(PlanRow).where(PlanRow.name == name))
                moved = await session.scalars(
                    update(User).where(User.plan_name == name).values(plan_name=None).returning(User.external_id)
                )
                users = list(moved.all())
                if audit is not None:
                    session.add(audit(plan, users))
                if unfinished is not None and (row := unfinished(plan, users)) is not None:
                    session.add(row)
                await session.commit()
                return users

    async def get_plan(self, name: str) -> Plan | None:
        """The plan called `name`, or None."""
        plans = await self._load([name])
        return plans[0] if plans else None

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        return await self._load(None)

    async def set_user_plan(
        self, external_id: str, plan_name: str | None, audit: Callable[[str | None], AuditLogRow] | None = None,
        unfinished: Callable[[Plan | None, Plan | None], UnfinishedPlanChangeRow | None] | None = None,
    ) -> None:
        """Put a user (created if missing) on `plan_name`; None returns them to the default plan.
        `audit`: the entry of the assignment, given the plan the user was on (None: the default),
        read and written in its transaction, the user's row held (concurrent assignments of one user
        each see the one before); `unfinished`'s row likewise, given the plans before and after as
        read there (None: the default plan).

        Raises NotFound when the plan does not exist, also when a concurrent `delete_plan` removed it
        between the check and the write: the name is written only while the plan exists (on
        PostgreSQL its row is held in KEY SHARE until commit, so a delete waits and then clears the
        user; on SQLite the conditional write runs under the database's write lock), never left
        dangling for a plan later created under that name to apply.
        """
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                if plan_name is not None:
                    held = await session.scalar(
                        select(PlanRow.name).where(PlanRow.name == plan_name).with_for_update(read=True, key_share=True)
                    )
                    if held is None:
                        raise NotFound(f"plan {clipped(plan_name)!r} does not exist", code="plan_not_found")
                user_id = await ensure_user(session, external_id)
                # Hold the user's row (on SQLite: take the write lock) before reading its plan.
                await session.execute(update(User).where(User.id == user_id).values(plan_name=User.plan_name))
                previous = await session.scalar(select(User.plan_name).where(User.id == user_id))
                assign = update(User).where(User.id == user_id).values(plan_name=plan_name)
                if plan_name is not None:
                    assign = assign.where(exists().where(PlanRow.name == plan_name))
                if await session.scalar(assign.returning(User.id)) is None:
                    await session.rollback()  # nor a user created for it
                    raise NotFound(f"plan {clipped(plan_name or '')!r} does not exist", code="plan_not_found")
                if audit is not None:
                    session.add(audit(previous))
                if unfinished is not None:
                    plans = [None if n is None else Plan(n, tuple(await _limits_of(session, n)))
                             for n in (previous, plan_name)]
                    if (row := unfinished(plans[0], plans[1])) is not None:
                        session.add(row)
                await session.commit()

    async def plan_for_user(self, external_id: str) -> Plan | None:
        """The user's plan, or None when the user is unknown or has none (the default plan)."""
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                plan_name = await session.scalar(
                    select(User.plan_name).where(User.external_id == external_id)
                )
        return None if plan_name is None else await self.get_plan(plan_name)

    async def _load(self, names: list[str] | None) -> list[Plan]:
        query = (
            select(PlanRow.name, PlanLimitRow.metric, PlanLimitRow.window_seconds, PlanLimitRow.limit)
            .outerjoin(PlanLimitRow, PlanLimitRow.plan_name == PlanRow.name)
            .order_by(PlanRow.name, PlanLimitRow.metric, PlanLimitRow.window_seconds)
        )
        if names is not None:
            query = query.where(PlanRow.name.in_(names))
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(query)).all()
        by_plan: dict[str, list[Limit]] = {}
        for name, metric, window_seconds, limit in rows:
            limits = by_plan.setdefault(name, [])
            if metric is not None:  # a plan without limits joins to one row of NULLs
                limits.append(Limit(cast(Metric, metric), window_seconds, limit))
        return [Plan(name, tuple(limits)) for name, limits in by_plan.items()]
