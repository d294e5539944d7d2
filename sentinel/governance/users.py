"""The users of the built-in database as an operator sees them: find, list, count per plan.

Users are created by `sentinel keys create`, by a plan assignment, or by the console; callers
known only from the ledger (e.g. JWT users) have usage but no row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import ApiKey, User, utcnow


@dataclass(frozen=True)
class UserSummary:
    """A user row with its active key count (neither revoked nor expired) and their last use."""

    external_id: str
    email: str | None
    plan_name: str | None
    created_at: datetime
    active_keys: int
    last_used_at: datetime | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UserDirectory:
    """Read access to `users` (and their keys' counts) for the console."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock  # what a key's expiry is compared with

    def _summaries(self) -> Select[Any]:
        keys = (
            select(
                ApiKey.user_id,
                func.count().label("active"),
                func.max(ApiKey.last_used_at).label("last_used"),
            )
            .where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > self._clock()))
            .group_by(ApiKey.user_id)
            .subquery()
        )
        return select(
            User.external_id, User.email, User.plan_name, User.created_at,
            func.coalesce(keys.c.active, 0), keys.c.last_used,
        ).outerjoin(keys, and_(keys.c.user_id == User.id))

    async def search(self, text: str | None = None, *, limit: int = 50, offset: int = 0) -> list[UserSummary]:
        """Users whose external id or email contains `text` (case-insensitive), by external id."""
        query = self._summaries().order_by(User.external_id).limit(limit).offset(offset)
        if text:
            pattern = f"%{_escape_like(text.lower())}%"
            query = query.where(
                or_(func.lower(User.external_id).like(pattern, escape="\\"),
                    func.lower(func.coalesce(User.email, "")).like(pattern, escape="\\"))
            )
        with database_errors("user store unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(query)).all()
        return [UserSummary(r[0], r[1], r[2], r[3], int(r[4]), r[5]) for r in rows]

    async def get(self, external_id: str) -> UserSummary | None:
        """One user, or None when there is no such row."""
        query = self._summaries().where(User.external_id == external_id)
        with database_errors("user store unavailable"):
            async with self._sessions() as session:
                row = (await session.execute(query)).one_or_none()
        return None if row is None else UserSummary(row[0], row[1], row[2], row[3], int(row[4]), row[5])

    async def count(self) -> int:
        """How many users there are."""
        with database_errors("user store unavailable"):
            async with self._sessions() as session:
                return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def per_plan(self) -> dict[str, int]:
        """How many users each plan has (plans without users are absent)."""
        query = select(User.plan_name, func.count()).where(User.plan_name.is_not(None)).group_by(User.plan_name)
        with database_errors("user store unavailable"):
            async with self._sessions() as session:
                return {str(name): int(n) for name, n in (await session.execute(query)).all()}
