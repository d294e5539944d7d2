"""Plans in the built-in database: named sets of limits, and which plan each user is on.

The plan and limit types and their spelling (`requests=100/1m`) are `sentinel.domain.plans`.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import PlanLimitRow, PlanRow, User, utcnow
from sentinel.db.queries import ensure_user, insert_ignoring
from sentinel.domain.plans import Limit, Metric, Plan
from sentinel.errors import NotFound


class PlanRepository:
    """The operator side of plans: define them, list them, put users on them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def set_plan(self, name: str, limits: list[Limit]) -> None:
        """Create plan `name` or replace all of its limits with `limits`."""
        if not name:
            raise ValueError("plan name must not be empty")
        keys = [(limit.metric, limit.window_seconds) for limit in limits]
        if len(set(keys)) != len(keys):
            raise ValueError("a plan may have only one limit per metric and window")
        now = utcnow()
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                await session.execute(
                    insert_ignoring(session, PlanRow, ["name"]).values(
                        name=name, created_at=now, updated_at=now
                    )
                )
                # The row lock taken here serialises concurrent replacements of the same plan.
                await session.execute(update(PlanRow).where(PlanRow.name == name).values(updated_at=now))
                await session.execute(delete(PlanLimitRow).where(PlanLimitRow.plan_name == name))
                session.add_all(
                    PlanLimitRow(
                        plan_name=name, metric=lim.metric, window_seconds=lim.window_seconds, limit=lim.limit
                    )
                    for lim in limits
                )
                await session.commit()

    async def delete_plan(self, name: str) -> bool:
        """Delete a plan and its limits; users on it fall back to the default. False if unknown."""
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                found = await session.get(PlanRow, name)
                if found is None:
                    return False
                await session.delete(found)
                await session.commit()
                return True

    async def get_plan(self, name: str) -> Plan | None:
        """The plan called `name`, or None."""
        plans = await self._load([name])
        return plans[0] if plans else None

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        return await self._load(None)

    async def set_user_plan(self, external_id: str, plan_name: str | None) -> None:
        """Put a user (created if missing) on `plan_name`; None returns them to the default plan.

        Raises NotFound when the plan does not exist.
        """
        with database_errors("plan store unavailable"):
            async with self._sessions() as session:
                if plan_name is not None and await session.get(PlanRow, plan_name) is None:
                    raise NotFound(f"plan {plan_name!r} does not exist", code="plan_not_found")
                user_id = await ensure_user(session, external_id)
                await session.execute(update(User).where(User.id == user_id).values(plan_name=plan_name))
                await session.commit()

    async def plan_for_user(self, external_id: str) -> Plan | None:
        """The user's plan, or None when the user is unknown, has none, or it was deleted."""
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
