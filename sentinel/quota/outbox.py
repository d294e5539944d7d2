"""The durable usage outbox: a record is stored here before its request finishes.

Two backends, behind one small interface (`put`, `claim`, `ack`, `retry_later`, `depth`):

- `RedisStreamOutbox`: a Redis stream read through a consumer group. A claimed entry stays pending
  until acknowledged; entries a crashed replica had claimed are taken over (XAUTOCLAIM) once idle
  longer than the lease.
- `SqlOutbox`: the `usage_outbox` table. Puts from concurrent requests are group-committed (one
  transaction for everything that arrived while the previous commit ran); claims take a lease on
  rows (`next_attempt_at`), so a crashed replica's rows come back when the lease runs out.

`DurableOutbox` writes to Redis when there is one and falls back to the database when Redis is
down, so an outage of either loses nothing; records that could be stored nowhere stay in memory,
are retried, and as the very last resort are logged in full.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import orjson
from redis.exceptions import ResponseError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import UsageOutboxRow, utcnow
from sentinel.db.queries import insert_ignoring
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.store.redis import RedisStore

log = logging.getLogger("sentinel.outbox")


@dataclass(frozen=True)
class Claimed:
    """A record taken from the outbox for delivery; `ref` identifies it for ack/retry."""

    backend: str
    ref: str
    record: UsageRecord


class Outbox(Protocol):
    async def put(self, record: UsageRecord) -> None: ...
    async def claim(self, limit: int) -> list[Claimed]: ...
    async def ack(self, items: list[Claimed]) -> None: ...
    async def retry_later(self, items: list[Claimed], delay: float) -> None: ...
    async def depth(self) -> int: ...


class SqlOutbox:
    """The outbox table, with group commit for puts and leases for claims."""

    backend = "sql"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, lease_seconds: float = 30.0) -> None:
        self._sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self._queue: list[tuple[UsageRecord, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def put(self, record: UsageRecord) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            rows = [{"request_id": r.request_id, "payload": orjson.dumps(r.to_json()).decode()} for r, _ in batch]
            try:
                with database_errors("usage outbox unavailable"):
                    async with self._sessions() as session:
                        # executemany with one cached statement (not a fresh multi-VALUES compile per batch)
                        await session.execute(insert_ignoring(session, UsageOutboxRow, ["request_id"]), rows)
                        await session.commit()
            except GovernanceUnavailable as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def claim(self, limit: int) -> list[Claimed]:
        now = utcnow()
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                due = (
                    select(UsageOutboxRow.id)
                    .where(or_(UsageOutboxRow.next_attempt_at.is_(None), UsageOutboxRow.next_attempt_at <= now))
                    .order_by(UsageOutboxRow.id)
                    .limit(limit)
                )
                if session.get_bind().dialect.name == "postgresql":
                    due = due.with_for_update(skip_locked=True)
                result = await session.execute(
                    update(UsageOutboxRow)
                    .where(UsageOutboxRow.id.in_(due.scalar_subquery()))
                    .values(next_attempt_at=now + self.lease, attempts=UsageOutboxRow.attempts + 1)
                    .returning(UsageOutboxRow.id, UsageOutboxRow.payload)
                )
                rows = result.all()
                await session.commit()
        rows.sort()
        return [Claimed("sql", str(i), UsageRecord.from_json(orjson.loads(p))) for i, p in rows]

    async def ack(self, items: list[Claimed]) -> None:
        ids = [int(c.ref) for c in items if c.backend == "sql"]
        if not ids:
            return
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                await session.execute(delete(UsageOutboxRow).where(UsageOutboxRow.id.in_(ids)))
                await session.commit()

    async def retry_later(self, items: list[Claimed], delay: float) -> None:
        ids = [int(c.ref) for c in items if c.backend == "sql"]
        if not ids:
            return
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                await session.execute(
                    update(UsageOutboxRow)
                    .where(UsageOutboxRow.id.in_(ids))
                    .values(next_attempt_at=utcnow() + timedelta(seconds=delay))
                )
                await session.commit()

    async def depth(self) -> int:
        with database_errors("usage outbox unavailable"):
            async with self._sessions() as session:
                return int(await session.scalar(select(func.count()).select_from(UsageOutboxRow)) or 0)


class RedisStreamOutbox:
    """A Redis stream + consumer group; entries stay pending until acknowledged."""

    backend = "redis"
    KEY = "sentinel:usage:outbox"
    GROUP = "deliverers"

    def __init__(self, store: RedisStore, *, lease_seconds: float = 30.0, consumer: str | None = None) -> None:
        self.store = store
        self.lease_ms = int(lease_seconds * 1000)
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._group_ready = False
        self._retry: list[tuple[float, Claimed]] = []

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.store.client.xgroup_create(self.KEY, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def put(self, record: UsageRecord) -> None:
        async with self.store.guard():
            await self.store.client.xadd(self.KEY, {"r": orjson.dumps(record.to_json())})

    async def claim(self, limit: int) -> list[Claimed]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [c for t, c in self._retry if t <= now][:limit]
        self._retry = [(t, c) for t, c in self._retry if c not in due]
        out = list(due)
        async with self.store.guard():
            await self._ensure_group()
            client = self.store.client
            try:
                if len(out) < limit:
                    # Entries a crashed (or stuck) consumer claimed and never acknowledged.
                    _, stolen, _ = await client.xautoclaim(
                        self.KEY, self.GROUP, self.consumer, self.lease_ms, start_id="0-0", count=limit - len(out)
                    )
                    out += [self._entry(eid, fields) for eid, fields in stolen if fields]
                if len(out) < limit:
                    fresh = await client.xreadgroup(self.GROUP, self.consumer, {self.KEY: ">"}, count=limit - len(out))
                    for _, entries in fresh or []:
                        out += [self._entry(eid, fields) for eid, fields in entries if fields]
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # Redis lost the group (restarted without its data): create it again next cycle,
                    # or records written since the restart would never be read.
                    self._group_ready = False
                raise
        return out

    def _entry(self, eid: Any, fields: dict[bytes, bytes]) -> Claimed:
        ref = eid.decode() if isinstance(eid, bytes) else str(eid)
        return Claimed("redis", ref, UsageRecord.from_json(orjson.loads(fields[b"r"])))

    async def ack(self, items: list[Claimed]) -> None:
        ids = [c.ref for c in items if c.backend == "redis"]
        if not ids:
            return
        async with self.store.guard():
            await self.store.client.xack(self.KEY, self.GROUP, *ids)
            await self.store.client.xdel(self.KEY, *ids)

    async def retry_later(self, items: list[Claimed], delay: float) -> None:
        at = asyncio.get_running_loop().time() + delay
        self._retry += [(at, c) for c in items if c.backend == "redis"]

    async def depth(self) -> int:
        async with self.store.guard():
            return int(await self.store.client.xlen(self.KEY))


class DurableOutbox:
    """Redis first (when configured), the database when Redis is down, memory as the last resort."""

    def __init__(self, sql: SqlOutbox, redis: RedisStreamOutbox | None = None) -> None:
        self.sql = sql
        self.redis = redis
        self.orphans: list[UsageRecord] = []

    @property
    def parts(self) -> list[Any]:
        return [p for p in (self.redis, self.sql) if p is not None]

    async def put(self, record: UsageRecord) -> None:
        for part in self.parts:
            try:
                await part.put(record)
                return
            except (StoreUnavailable, GovernanceUnavailable) as exc:
                log.warning("usage outbox %s unavailable: %s", part.backend, exc.message)
        self.orphans.append(record)
        log.error("usage record kept in memory until an outbox is reachable", extra={"record_id": record.request_id})

    async def rescue_orphans(self) -> None:
        """Store records that could be stored nowhere earlier."""
        orphans, self.orphans = self.orphans, []
        for record in orphans:
            await self.put(record)

    async def claim(self, limit: int) -> list[Claimed]:
        out: list[Claimed] = []
        for part in self.parts:
            if len(out) >= limit:
                break
            try:
                out += await part.claim(limit - len(out))
            except (StoreUnavailable, GovernanceUnavailable):
                continue
        return out

    async def ack(self, items: list[Claimed]) -> None:
        for part in self.parts:
            await part.ack(items)

    async def retry_later(self, items: list[Claimed], delay: float) -> None:
        for part in self.parts:
            try:
                await part.retry_later(items, delay)
            except (StoreUnavailable, GovernanceUnavailable):
                pass  # the lease expires by itself

    async def depth(self) -> int:
        total = len(self.orphans)
        for part in self.parts:
            try:
                total += await part.depth()
            except (StoreUnavailable, GovernanceUnavailable):
                pass
        return total
