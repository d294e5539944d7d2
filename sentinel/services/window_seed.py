"""Seed the quota counters of windows new to users from the usage ledger (README, Quotas).

One home for what a plan change saved by an operator (`AdminService`) and a DEFAULT_PLAN changed by
a restart (`DefaultPlanSeed`) do to a limit over a (metric, window) its users had no limit over: its
counter, in the window current now, is raised to what each user's requests started since that
window began used, so the window starts there rather than at 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from sentinel.domain.plans import Limit, Plan
from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.governance.ledger import SqlLedger
from sentinel.quota.limiter import QuotaLimiter


def new_windows(before: Plan | None, after: Plan) -> list[Limit]:
    """The limits of `after` over a (metric, window) `before` had no limit over (no plan before: every
    limit of `after`), but Zion's (they count Zion's figures) and limits of 0 (a ban refuses whatever
    its counter holds): the ones a change from `before` to `after` seeds."""
    kept = set() if before is None else {(lim.metric, lim.window_seconds) for lim in before.limits}
    return [lim for lim in after.limits
            if (lim.metric, lim.window_seconds) not in kept and lim.external is None and lim.limit > 0]


class WindowSeeder:
    """Raises counters from the ledger: `seed`."""

    def __init__(self, ledger: SqlLedger, limiter: QuotaLimiter) -> None:
        self.ledger = ledger
        self.limiter = limiter

    async def seed(self, external_ids: Sequence[str] | None, limits: Sequence[Limit]) -> str | None:
        """Seed each of `limits`' counters of `external_ids` (None: every user on the default plan with
        requests in the ledger since the earliest of those windows began, `default_plan_users_since`),
        in the window current now, from the ledger: what each user's requests started since that window
        began used (requests, tokens: `SqlLedger.usage_since`, one query per 500 users). A counter is
        raised to that figure, never lowered (`QuotaLimiter.seed`), so nothing is counted twice when a
        seed is repeated. Usage not in the ledger yet (requests still running, records still in the
        outbox) is not in the seed. None when done (or nothing to do), else what failed."""
        if not limits or external_ids is not None and not external_ids:
            return None
        limiter = self.limiter
        now = limiter.clock()
        starts = [datetime.fromtimestamp(limiter.window_start(lim, now), UTC) for lim in limits]
        try:
            users = external_ids if external_ids is not None else await self.ledger.default_plan_users_since(min(starts))
            used = list((await self.ledger.usage_since(users, starts)).items())
            for at in range(0, len(used), 100):
                await asyncio.gather(*(
                    limiter.seed(user, [(lim, figures.of(lim.metric)) for lim, figures in zip(limits, windows, strict=True)],
                                 now)
                    for user, windows in used[at : at + 100]
                ))
        except GovernanceUnavailable:
            return "usage ledger unavailable"
        except StoreUnavailable:
            return "store unavailable"
        return None
