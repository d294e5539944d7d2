"""A start seeds the quota windows the store does not hold a count of (README, Quotas).

On Redis, which keeps its counters, only the windows DEFAULT_PLAN gained since the last start are:
the gateway compares its DEFAULT_PLAN with the one the last start applied (recorded in the database,
`AppliedSettings`); each limit over a (metric, window) that one had no limit over (every limit when
none is recorded: the first start with this table) is seeded, for the users on the default plan with
requests since that window began (ledger, outbox), as a plan change an operator saves is
(`WindowSeeder`: never lowering a counter). On the in-process store (`plans` given), which keeps no
counter across a restart, every window of every user's plan is seeded, for the users with requests
since the earliest of those windows began (`WindowSeeder.seed_every_user`): a user who used 4 of 5
today is left 1 after a restart, not 5. Then the plan is recorded. Start-up waits for its first
attempt, at most a bound (`wait`); a database or store not answering is retried in the background,
logged, until it is done or the gateway stops. Replicas starting together each seed (a counter is
only ever raised: harmless) and record the same plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sentinel.backoff import Backoff
from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.applied_settings import DEFAULT_PLAN_SETTING, AppliedSettings
from sentinel.governance.plans import PlanRepository
from sentinel.observability.logging import Repeated
from sentinel.periodic import Next, Periodic
from sentinel.services.window_seed import WindowSeeder, new_windows

log = logging.getLogger("sentinel.quota")

UNSEEDED = "DEFAULT_PLAN's new windows not seeded yet (%s): retrying; until then they count from 0"
# On the in-process store: every window of every user's plan.
UNSEEDED_ALL = "quota counters not seeded from the usage ledger yet (%s): retrying; until then they count from 0"


class StartupSeed:
    """Seeds the windows DEFAULT_PLAN (`plan`) gained since the last start — with `plans` (the
    in-process store), every window of every user's plan: `run_once`, or `start` to retry it in the
    background (waits of `backoff`) until done or `stop`ped."""

    def __init__(self, applied: AppliedSettings, seeder: WindowSeeder, plan: Plan, *,
                 plans: PlanRepository | None = None, backoff: Backoff | None = None) -> None:
        self.applied = applied
        self.seeder = seeder
        self.plan = plan
        self.plans = plans
        self.unseeded = UNSEEDED if plans is None else UNSEEDED_ALL
        self.backoff = backoff or Backoff(base=1.0, cap=60.0)
        self.done = False
        self._repeated = Repeated(log)
        self._failures = 0  # attempts in a row that failed, since `start`
        # (an attempt that raised, a bug, is logged and retried likewise)
        self._loop = Periodic(self._round, interval=self.backoff.base, backoff=self.backoff, log=log,
                              crashed="could not seed the quota windows at start-up; retrying")
        self._attempted = asyncio.Event()

    def _before(self, recorded: str | None) -> Plan | None:
        """The plan the last start applied (None: unknown, every window is new)."""
        if recorded is None:
            return None
        try:
            return parse_plan_spec(recorded)
        except ValueError:  # a spelling this version no longer reads: as if none was recorded
            return None

    async def run_once(self) -> bool:
        """Seed the windows and record the plan; whether that is done (else logged, to retry)."""
        spec = self.plan.spec()
        try:
            recorded = await self.applied.get(DEFAULT_PLAN_SETTING)
            new = new_windows(self._before(recorded), self.plan)
            if self.plans is None:
                failed = await self.seeder.seed(None, new)
            else:
                failed = await self.seeder.seed_all(self.plans, self.plan)
            if failed:
                self._repeated.warning(self.unseeded, failed)
                return False
            if recorded != spec:
                await self.applied.put(DEFAULT_PLAN_SETTING, spec)
        except GovernanceUnavailable as exc:
            self._repeated.warning(self.unseeded, exc.message)
            return False
        self._repeated.forget(self.unseeded)
        if new and recorded is not None:  # a change (the first start records the plan: nothing to say)
            log.info("DEFAULT_PLAN's new windows seeded from the usage ledger",
                     extra={"before": recorded, "after": spec, "windows": [str(lim) for lim in new]})
        self.done = True
        return True

    async def _round(self) -> int | Next:
        """One round of the loop (`Periodic`): the loop ends once the seed is done; else the next
        attempt after `backoff`'s delay."""
        try:
            if await self.run_once():
                return Next.DONE
        finally:
            self._attempted.set()
        self._failures += 1
        return self._failures

    def start(self) -> None:
        if not self._loop.running:
            self._failures = 0
            self._loop.start()

    async def wait(self, within: float) -> None:
        """Wait for the first attempt (at most `within` seconds): start-up serves once it is done, or
        once it failed (a database or store not answering: retried in the background) or took longer."""
        if self._loop.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._attempted.wait()

    async def stop(self) -> None:
        """Stop retrying (an attempt under way is cancelled: nothing is recorded, the next start seeds)."""
        await self._loop.stop(within=0)
