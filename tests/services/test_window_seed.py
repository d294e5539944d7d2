"""`WindowSeeder.seed_every_user` (a start on the in-process store): every window of every user's plan
raised to what the ledger and the SQL outbox hold, the outbox read once whatever the number of plans,
and a record delivered to the ledger after that read counted once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.models import User
from sentinel.domain.plans import parse_plan_spec
from sentinel.domain.usage import UsageRecord
from sentinel.governance.ledger import SqlLedger, WindowUsage
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.outbox import SqlOutbox
from sentinel.services.window_seed import WindowSeeder
from sentinel.store.memory import MemoryStore
from tests.support.outbox import T0, usage_record

GOLD = parse_plan_spec("requests=10/1d", "gold")
SILVER = parse_plan_spec("requests=8/1d", "silver")
DEFAULT = parse_plan_spec("requests=5/1d")


class CountedOutbox(SqlOutbox):
    """The SQL outbox, counting its reads of the records waiting."""

    reads = 0

    async def waiting_since(self, since: datetime) -> list[UsageRecord]:
        self.reads += 1
        return await super().waiting_since(since)


class DeliveredMeanwhile(SqlLedger):
    """The ledger, into which `record` is delivered just after the first figures of usage are read —
    as the deliverer may between the seed's read of the outbox and its read of the ledger."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], record: UsageRecord) -> None:
        super().__init__(sessions)
        self.record: UsageRecord | None = record

    async def usage_since(self, external_ids: Sequence[str], starts: Sequence[datetime]) -> dict[str, list[WindowUsage]]:
        if self.record is not None:
            await self.record_batch([self.record])
            self.record = None
        return await super().usage_since(external_ids, starts)


async def assign(sessions: async_sessionmaker[AsyncSession], plans: dict[str, str]) -> None:
    async with sessions() as session:
        session.add_all(User(id=str(uuid.uuid4()), external_id=user, plan_name=plan) for user, plan in plans.items())
        await session.commit()


async def used(limiter: QuotaLimiter, user: str, plan_spec: str) -> int:
    decision = await limiter.peek(user, parse_plan_spec(plan_spec))
    assert decision.limit is not None and decision.remaining is not None
    return decision.limit - decision.remaining


async def test_every_plan_is_seeded_from_one_read_of_the_outbox(sessions: async_sessionmaker[AsyncSession]) -> None:
    await assign(sessions, {"alice": "gold", "carol": "silver"})
    outbox = CountedOutbox(sessions)
    for rid, user in (("a2", "alice"), ("b1", "bob"), ("c1", "carol"), ("c2", "carol")):
        await outbox.put(usage_record(rid, external_id=user))
    ledger = DeliveredMeanwhile(sessions, usage_record("c2", external_id="carol"))  # c2 reaches the ledger too
    await ledger.record_batch([usage_record("a1", external_id="alice")])
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: T0.timestamp() + 60)
    seeder = WindowSeeder(ledger, limiter, outbox)
    assert await seeder.seed_every_user({"gold": GOLD, "silver": SILVER}, DEFAULT) is None
    assert outbox.reads == 1  # not once more per plan
    assert await used(limiter, "alice", "requests=10/1d") == 2  # a1 in the ledger, a2 in the outbox
    assert await used(limiter, "bob", "requests=5/1d") == 1  # found only in the outbox: the default plan
    assert await used(limiter, "carol", "requests=8/1d") == 2  # c2 delivered meanwhile: counted once
