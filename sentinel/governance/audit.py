"""The audit log: one row per operator action (plans, plan assignments, keys, tiers).

Written by the admin service in the action's own transaction (`entry` builds the row, which the
repository adds before it commits): an action is recorded exactly when it takes effect, and one whose
entry cannot be written is not made. Read by the console and `GET /admin/api/audit`, newest first.
Details are a small JSON object (never a key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import AuditLogRow, utcnow


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    address: str | None


class AuditLog:
    """Append and read the `audit_log` table."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def entry(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> AuditLogRow:
        """One entry's row (`action` like `key.create`, `target` the object's name or id), to add in
        the transaction that makes the change."""
        return AuditLogRow(
            at=self._clock(), actor=actor[:64], action=action[:64], target=target[:255],
            details=orjson.dumps(details).decode() if details else None, address=(address or None) and address[:64],
        )

    async def record(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> None:
        """Append one entry in a transaction of its own (for what has no transaction of its own)."""
        row = self.entry(actor, action, target, details, address)
        with database_errors("audit log unavailable"):
            async with self._sessions() as session:
                session.add(row)
                await session.commit()

    async def recent(self, limit: int = 50, before_id: int | None = None, target: str | None = None) -> list[AuditEntry]:
        """Newest entries first; `before_id` pages back, `target` keeps one object's entries."""
        query = select(AuditLogRow).order_by(AuditLogRow.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(AuditLogRow.id < before_id)
        if target is not None:
            query = query.where(AuditLogRow.target == target)
        with database_errors("audit log unavailable"):
            async with self._sessions() as session:
                rows = (await session.scalars(query)).all()
        return [
            AuditEntry(r.id, r.at, r.actor, r.action, r.target, orjson.loads(r.details) if r.details else {}, r.address)
            for r in rows
        ]
