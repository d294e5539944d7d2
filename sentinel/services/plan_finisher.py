"""The gateway's background task that finishes the plan changes kept unfinished.

A plan change's follow-up (its users' cached plans dropped, its new windows' counters seeded) is
kept in the database (`UnfinishedPlanChanges`) with the change, in its transaction, by whichever
process made it — a gateway's admin API or console, or the command line, which has no gateway to
finish it — and deleted once done: what the store or the database could not take, or a process
killed before doing it, is left there. Every running gateway looks for such changes every `interval` seconds and
finishes them (`AdminService.finish_plan_changes`); while some are left (the store or the database
still down) it tries again after `backoff`'s delay, which grows to its cap. Two replicas finishing
one change both do harmless work: a seed only ever raises a counter to what the ledger holds, and a
cached plan dropped twice is dropped. An outage is logged when first met, then at most once a
minute (`Repeated`); any other failure (a bug) with its traceback, and retried as an outage is.
Nothing is lost at shutdown: what is left stays in the database for the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from sentinel.backoff import Backoff
from sentinel.errors import GovernanceUnavailable
from sentinel.observability.logging import Repeated
from sentinel.periodic import Periodic

log = logging.getLogger("sentinel.admin")
LEFT = "plan changes not finished yet (store or database unavailable); retrying: %s"

INTERVAL = 5.0  # how often a gateway looks for unfinished changes (one small query)
RETRY = Backoff(base=1.0, cap=60.0)  # while some are left
STOP_TIMEOUT = 5.0


class PlanFinisher:
    """Calls `finish` (how many of the changes it read are left) every `interval` seconds, sooner
    while some are left, until stopped. `run_once` is one round."""

    def __init__(self, finish: Callable[[], Awaitable[int]], *, interval: float = INTERVAL,
                 backoff: Backoff = RETRY, clock: Callable[[], float] = time.monotonic) -> None:
        self.finish = finish
        self.interval = interval
        self.backoff = backoff
        self.failures = 0  # rounds in a row that left changes unfinished
        self._repeated = Repeated(log, clock=clock)
        self._loop = Periodic(self._round, interval=interval, backoff=backoff, log=log,
                              crashed="could not finish the unfinished plan changes; retrying",
                              name="sentinel-plan-finisher")

    async def run_once(self) -> int:
        """Finish what is kept; how many changes are left (-1: the database could not list them)."""
        try:
            left = await self.finish()
        except GovernanceUnavailable as exc:
            self.failures += 1
            self._repeated.warning(LEFT, exc.message)
            return -1
        except Exception:  # noqa: BLE001 - the loop must outlive anything; logged, backed off
            self.failures += 1
            log.exception("could not finish the unfinished plan changes; retrying", extra={"failures": self.failures})
            return -1
        if left:
            self.failures += 1
            self._repeated.warning(LEFT, f"{left} left")
            return left
        self.failures = 0
        if (suppressed := self._repeated.forget(LEFT)) is not None:
            log.info("unfinished plan changes finished", extra={"suppressed": suppressed} if suppressed else None)
        return 0

    async def _round(self) -> int:
        """One round of the loop (`Periodic`): the next after `interval`, or `backoff`'s delay while
        changes are left."""
        await self.run_once()
        return self.failures

    def start(self) -> None:
        self._loop.start()

    async def stop(self, within: float = STOP_TIMEOUT) -> None:
        """Stop the loop; a round under way past `within` is cut short (its change stays kept)."""
        if not await self._loop.stop(within):
            log.warning("finishing a plan change was still under way at shutdown; it is finished after the next start")
