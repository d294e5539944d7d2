"""Seed the quota counters of windows new to users from the usage ledger (README, Quotas).

One home for what a plan change saved by an operator (`AdminService`) and a DEFAULT_PLAN changed by
a restart (`StartupSeed`) do to a limit over a (metric, window) its users had no limit over: its
counter, in the window current now, is raised to what each user's requests started since that
window began used (the ledger's rows, and the records in the SQL outbox and on the usage stream
not in it yet), so the window starts there rather than at 0 — and of what a start on the in-process
store does to every window of every user's plan, since that store kept no counter (`seed_every_user`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sentinel.domain.plans import Limit, Plan
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.governance.ledger import SqlLedger, WindowUsage
from sentinel.governance.plans import PlanRepository
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.outbox import RedisStreamOutbox, SqlOutbox


def new_windows(before: Plan | None, after: Plan) -> list[Limit]:
    """The limits of `after` over a (metric, window) `before` had no limit over (no plan before: every
    limit of `after`), but Zion's (they count Zion's figures) and limits of 0 (a ban refuses whatever
    its counter holds): the ones a change from `before` to `after` seeds."""
    kept = set() if before is None else {(lim.metric, lim.window_seconds) for lim in before.limits}
    return [lim for lim in after.limits
            if (lim.metric, lim.window_seconds) not in kept and lim.external is None and lim.limit > 0]


class WindowSeeder:
    """Raises counters from the ledger and the usage outbox: `seed`."""

    def __init__(self, ledger: SqlLedger, limiter: QuotaLimiter, outbox: SqlOutbox | None = None,
                 stream: RedisStreamOutbox | None = None) -> None:
        self.ledger = ledger
        self.limiter = limiter
        # The records waiting there and not in the ledger yet are counted too.
        self.outbox = outbox
        self.stream = stream

    async def seed(self, external_ids: Sequence[str] | None, limits: Sequence[Limit], *,
                   waiting: Sequence[UsageRecord] | None = None) -> str | None:
        """Seed each of `limits`' counters of `external_ids` (None: every user on the default plan with
        requests since the earliest of those windows began, `SqlLedger.default_plan_users_since`), in
        the window current now: what each user's requests started since that window began used
        (requests, tokens) — in the ledger (`SqlLedger.usage_since`, one query per 500 users) and,
        read after it, in the outbox but not yet in the ledger (`_waiting`). A counter is raised to
        that figure, never lowered (`QuotaLimiter.seed`), so nothing is counted twice when a seed is
        repeated. Usage of requests still running is not in the seed. `waiting`: the outbox's records
        read already (`seed_every_user`, once for every plan), not read again. None when done (or
        nothing to do), else what failed."""
        if not limits or external_ids is not None and not external_ids:
            return None
        limiter = self.limiter
        now = limiter.clock()
        starts = [datetime.fromtimestamp(limiter.window_start(lim, now), UTC) for lim in limits]
        try:
            users = external_ids if external_ids is not None else await self.ledger.default_plan_users_since(min(starts))
            used = await self.ledger.usage_since(users, starts)
            await self._add_waiting(used, users, external_ids is None, starts, waiting)
            figures = list(used.items())
            for at in range(0, len(figures), 100):
                await asyncio.gather(*(
                    limiter.seed(user, [(lim, usage.of(lim.metric)) for lim, usage in zip(limits, windows, strict=True)],
                                 now)
                    for user, windows in figures[at : at + 100]
                ))
        except GovernanceUnavailable:
            return "usage ledger unavailable"
        except StoreUnavailable:
            return "store unavailable"
        return None

    async def seed_every_user(self, plans: Mapping[str, Plan], default: Plan) -> str | None:
        """Seed every window of each user's plan (`plans`, by name; no plan assigned: `default`), but
        Zion's and limits of 0 (`new_windows`), for every user with requests started since the earliest
        of those windows began — in the ledger (`SqlLedger.users_since`, one query) or waiting in the
        outbox (read once, for every plan) —, one `seed` per plan (its users' usage one query per 500
        users): what a store that kept no counter (the in-process one, at start-up) needs. None when
        done, else what failed."""
        limits: dict[str | None, list[Limit]] = {name: new_windows(None, plan) for name, plan in plans.items()}
        limits[None] = new_windows(None, default)
        windows = [lim for found in limits.values() for lim in found]
        if not windows:
            return None
        now = self.limiter.clock()
        since = datetime.fromtimestamp(min(self.limiter.window_start(lim, now) for lim in windows), UTC)
        try:
            users = await self.ledger.users_since(since)
            waiting = await self._waiting(since)
            users |= await self.ledger.plans_among({record.external_id for record in waiting} - users.keys())
        except GovernanceUnavailable:
            return "usage ledger unavailable"
        except StoreUnavailable:
            return "store unavailable"
        on_plan: dict[str | None, list[str]] = {}
        for user, name in users.items():
            on_plan.setdefault(name, []).append(user)
        for name, members in on_plan.items():
            # A plan made since `plans` was read: assigning it seeded its users' windows (`AdminService`).
            if name in limits and (failed := await self.seed(sorted(members), limits[name], waiting=waiting)):
                return failed
        return None

    async def seed_all(self, plans: PlanRepository, default: Plan) -> str | None:
        """`seed_every_user` with the plans `plans` holds now (no plan assigned: `default`): what a
        store that kept no counter needs. None when done, else what failed."""
        try:
            found = {plan.name: plan for plan in await plans.list_plans()}
        except GovernanceUnavailable:
            return "usage ledger unavailable"
        return await self.seed_every_user(found, default)

    async def _waiting(self, since: datetime) -> list[UsageRecord]:
        """The records of requests started since `since` waiting in the SQL outbox and on the usage
        stream that the ledger does not hold (read after the ledger's figures: a record delivered
        meanwhile is dropped here, counted there or missed, never twice), one per request id."""
        waiting = {r.request_id: r for r in await self.outbox.waiting_since(since)} if self.outbox else {}
        if self.stream is not None:
            waiting |= {r.request_id: r for r in await self._unrecorded(await self.stream.waiting_since(since))}
        return list(waiting.values())

    async def _unrecorded(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Those of `records` whose request id the ledger does not hold (now)."""
        recorded = await self.ledger.recorded({r.request_id for r in records}) if records else set()
        return [r for r in records if r.request_id not in recorded]

    async def _add_waiting(self, used: dict[str, list[WindowUsage]], users: Sequence[str], default_plan: bool,
                           starts: Sequence[datetime], read: Sequence[UsageRecord] | None = None) -> None:
        """Add to `used` what the outbox holds of `users`' requests (with `default_plan`, of any user on
        the default plan) started in each window (`starts`) and not in the ledger yet. `read`: the
        outbox's records read before `used` was (`seed_every_user`): those the ledger holds now are
        dropped, as a read after it would have (counted there, never twice)."""
        since = min(starts)
        if read is None:
            waiting = await self._waiting(since)
        else:
            known = set(users)
            waiting = await self._unrecorded([r for r in read if r.external_id in known and r.started_at >= since])
        if not waiting:
            return
        known = set(users)
        if default_plan:
            known |= await self.ledger.default_plan_users_among({r.external_id for r in waiting} - known)
        for record in waiting:
            if record.external_id not in known:
                continue
            windows = used.setdefault(record.external_id, [WindowUsage(0, 0, 0)] * len(starts))
            windows[:] = [usage.plus(record) if record.started_at >= start else usage
                          for usage, start in zip(windows, starts, strict=True)]
