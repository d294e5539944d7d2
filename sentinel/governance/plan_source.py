"""Where a user's quota plan comes from, cached in the store.

`PlanSource.plan_for(identity)` (the protocol is `sentinel.domain.plans.PlanSource`) returns the
plan to enforce. The built-in source reads the `plans`/`users` tables (users without a plan get
DEFAULT_PLAN); the Zion source reads Zion's limits (see `sentinel.governance.zion`). `CachedPlans`
keeps plans in the store for `ttl` seconds (so plan changes apply within CACHE_TTL_SECONDS without
a restart) and serves a stale plan for `grace` seconds more while the source is unreachable.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sentinel.domain.identity import Identity
from sentinel.domain.plans import ENDED_PERIOD_RECHECK_SECONDS, ExternalUsage, Limit, Plan, PlanSource
from sentinel.errors import GovernanceUnavailable
from sentinel.flight import SingleFlight
from sentinel.governance.cache import GovernanceCache
from sentinel.governance.plans import PlanRepository
from sentinel.native._wire import is_finite_number
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import Store

log = logging.getLogger("sentinel.plans")

# After a plan change, how long the hold that keeps out lookups begun before it lasts: longer than
# such a lookup can take (one begun after it caches its answer over the hold).
CHANGE_HOLD_SECONDS = 30.0


class BuiltinPlanSource:
    """Plans from Sentinel's own database."""

    name = "builtin"

    def __init__(self, repo: PlanRepository, default: Plan) -> None:
        self.repo = repo
        self.default = default

    async def plan_for(self, identity: Identity) -> Plan:
        stored = await self.repo.plan_for_user(identity.external_id)
        return self.default if stored is None else stored

def plan_to_json(plan: Plan) -> dict[str, Any]:
    """A plan as plain JSON (what the cache stores)."""
    return {
        "name": plan.name,
        "limits": [
            {
                "metric": limit.metric,
                "window_seconds": limit.window_seconds,
                "limit": limit.limit,
                "external": None
                if limit.external is None
                else {
                    "used": limit.external.used,
                    "snapshot": limit.external.snapshot,
                    "resets_at": limit.external.resets_at,
                },
            }
            for limit in plan.limits
        ],
    }


def plan_from_json(data: Any) -> Plan:
    """The inverse of `plan_to_json`; ValueError (or KeyError, TypeError) on anything else — a list
    where a limit belongs, a `used` that is not a whole number, a `resets_at` that is not a number:
    a cached entry of that shape is a miss, not a 500 at every request of its user."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("limits"), list):
        raise ValueError("a plan must be an object with a string name and a list of limits")
    limits = []
    for item in data["limits"]:
        if not isinstance(item, dict):
            raise ValueError("a plan's limit must be an object")
        ext = item.get("external")
        limits.append(Limit(item["metric"], item["window_seconds"], item["limit"],
                            None if ext is None else _external_from_json(ext)))
    return Plan(data["name"], tuple(limits))


def _based_plan_from_json(data: Any) -> tuple[Plan, str]:
    """A cached plan and its `basis` ("" for none: an entry of an earlier version)."""
    plan = plan_from_json(data)
    basis = data.get("basis")
    return plan, basis if isinstance(basis, str) else ""


def _external_from_json(ext: Any) -> ExternalUsage:
    if not isinstance(ext, dict):
        raise ValueError("a limit's external usage must be an object")
    used, snapshot, resets_at = ext.get("used"), ext.get("snapshot"), ext.get("resets_at")
    if isinstance(used, bool) or not isinstance(used, int) or used < 0:
        raise ValueError("an external usage's `used` must be a whole number, at least 0")
    if not isinstance(snapshot, str):
        raise ValueError("an external usage's snapshot must be a string")
    if resets_at is not None and not is_finite_number(resets_at):
        raise ValueError("an external usage's `resets_at` must be a number")
    return ExternalUsage(used, snapshot, None if resets_at is None else float(resets_at))


def fresh_seconds(plan: Plan, now: float, ttl: float) -> float:
    """How long `plan`, read at `now`, is enforced without asking its source again: `ttl`, but no
    later than the first of its external periods ends (the next reading starts the new one), and
    ENDED_PERIOD_RECHECK_SECONDS for a reading whose period had already ended (the source has not
    rolled it over: asked again soon, but not at every request). Such a reading was enforced the
    whole `ttl` (CACHE_TTL_SECONDS), its user refused past the end of the period its counts were of."""
    ends = [limit.external.resets_at for limit in plan.limits
            if limit.external is not None and limit.external.resets_at is not None]
    if not ends:
        return ttl
    left = min(ends) - now
    return min(ttl, left if left > 0 else ENDED_PERIOD_RECHECK_SECONDS)


def plan_basis(*settings: object) -> str:
    """A short digest of the configuration a source's plans are made from (DEFAULT_PLAN, ...): what
    `CachedPlans` stores with each plan, so that one cached under another configuration is read anew."""
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]


class CachedPlans:
    """A PlanSource wrapper caching plans under `sentinel:limits:<external_id>`.

    Each entry carries `basis` (`plan_basis` of the configuration that made it: DEFAULT_PLAN and what
    else shapes a source's plans): one of another basis — cached before a restart with another
    DEFAULT_PLAN, or by a replica not yet restarted — is not fresh, so the source is asked again (it
    was enforced for up to CACHE_TTL_SECONDS after the change, hold and forget notwithstanding); it
    is still served, as any stale plan, while the source cannot answer."""

    def __init__(
        self,
        store: Store,
        source: PlanSource,
        *,
        ttl: float,
        grace: float,
        clock: Callable[[], float] = time.time,
        local_ttl: float = 0.0,
        metrics: Metrics | None = None,
        basis: str = "",
    ) -> None:
        self.source = source
        self.name = source.name
        self.basis = basis
        self.cache: GovernanceCache[tuple[Plan, str]] = GovernanceCache(
            store,
            name="plan",
            prefix="sentinel:limits:",
            encode=lambda entry: {**plan_to_json(entry[0]), "basis": entry[1]},
            decode=_based_plan_from_json,
            ttl=ttl,
            grace=grace,
            clock=clock,
            local_ttl=local_ttl,
            metrics=metrics,
        )
        self._repeated = Repeated(log, clock=clock)  # outage lines: once a minute, not once a request
        self._flights: SingleFlight[str, Plan] = SingleFlight()

    async def plan_for(self, identity: Identity) -> Plan:
        cached = await self.cache.get(identity.external_id)
        if cached is not None and cached.value is not None and cached.fresh and cached.value[1] == self.basis:
            return cached.value[0]
        try:
            return await self._flights.run(identity.external_id, lambda: self._look_up(identity))
        except GovernanceUnavailable:
            if cached is not None and cached.value is not None:
                self._repeated.warning("plan source unavailable; enforcing the cached plan", extra={"user": identity.external_id})
                return cached.value[0]
            raise

    async def _look_up(self, identity: Identity) -> Plan:
        """Ask the source for `identity`'s plan and cache it: once per user at a time (`_flights`), so
        the requests of a busy user whose cached plan ran out make one read of the source, not one
        each (a burst of 64 was 64 database queries at once)."""
        began = self.cache.clock()
        plan = await self.source.plan_for(identity)
        await self.cache.put(identity.external_id, (plan, self.basis), began=began,
                             ttl=fresh_seconds(plan, self.cache.clock(), self.cache.ttl))
        return plan

    async def forget(self, external_id: str) -> None:
        """Drop the cached plan of `external_id` once it changed, so that a lookup that read the plan
        before the change cannot cache it after: only one that began `HOLD_MARGIN` (2 s) after it may
        (lookups meanwhile read the source). The hold lasts CHANGE_HOLD_SECONDS (or the TTL if
        shorter). Raises StoreUnavailable."""
        self._flights.forget(external_id)  # a lookup under way may have read the old plan: none joins it
        await self.cache.hold(external_id, min(CHANGE_HOLD_SECONDS, self.cache.ttl), reopens=True)
