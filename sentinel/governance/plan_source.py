"""Where a user's quota plan comes from, cached in the store.

`PlanSource.plan_for(identity)` returns the quota `Plan` to enforce. The built-in source reads the
`plans`/`users` tables (users without a plan get DEFAULT_PLAN); the Zion source reads Zion's limits
(see `sentinel.governance.zion`). `CachedPlans` keeps plans in the store for `ttl` seconds (so plan
changes apply within CACHE_TTL_SECONDS without a restart) and serves a stale plan for `grace`
seconds more while the source is unreachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from sentinel.governance.identity import Identity
from sentinel.governance.plans import PlanRepository
from sentinel.quota.limits import ExternalUsage, Limit, Plan

log = logging.getLogger("sentinel.plans")


class PlanSource(Protocol):
    name: str

    async def plan_for(self, identity: Identity) -> Plan:
        """The plan to enforce; raises GovernanceUnavailable when the source cannot be asked."""


class BuiltinPlanSource:
    """Plans from Sentinel's own database."""

    name = "builtin"

    def __init__(self, repo: PlanRepository, default: Plan) -> None:
        self.repo = repo
        self.default = default

    async def plan_for(self, identity: Identity) -> Plan:
        stored = await self.repo.plan_for_user(identity.external_id)
        if stored is None:
            return self.default
        return Plan(stored.name, tuple(Limit(pl.metric, pl.window_seconds, pl.limit) for pl in stored.limits))


def plan_to_json(plan: Plan) -> dict[str, Any]:
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


def plan_from_json(data: dict[str, Any]) -> Plan:
    limits = []
    for item in data["limits"]:
        ext = item.get("external")
        limits.append(
            Limit(
                item["metric"],
                item["window_seconds"],
                item["limit"],
                None if ext is None else ExternalUsage(ext["used"], ext["snapshot"], ext.get("resets_at")),
            )
        )
    return Plan(data["name"], tuple(limits))


class CachedPlans:
    """A PlanSource wrapper caching plans under `sentinel:limits:<external_id>`."""

    def __init__(
        self,
        store: Any,
        source: PlanSource,
        *,
        ttl: float,
        grace: float,
        clock: Callable[[], float] = time.time,
        local_ttl: float = 0.0,
    ) -> None:
        self.store = store
        self.source = source
        self.name = source.name
        self.ttl = ttl
        self.grace = grace
        self.clock = clock
        self._decoded: dict[bytes, tuple[Plan, float]] = {}  # stored bytes -> parsed (skips re-parsing)
        # Per-process copies for at most `local_ttl` s, never past the stored entry's freshness.
        self.local_ttl = local_ttl
        self._local: dict[str, tuple[Plan, float]] = {}

    def _decode(self, raw: bytes) -> tuple[Plan, float]:
        hit = self._decoded.get(raw)
        if hit is None:
            entry = orjson.loads(raw)
            hit = (plan_from_json(entry["plan"]), float(entry["fresh_until"]))
            if len(self._decoded) >= 10_000:
                self._decoded.clear()
            self._decoded[raw] = hit
        return hit

    async def plan_for(self, identity: Identity) -> Plan:
        key = f"sentinel:limits:{identity.external_id}"
        now = self.clock()
        local = self._local.get(key)
        if local is not None and now < local[1]:
            return local[0]
        stale: Plan | None = None
        try:
            cached = await self.store.get(key)
        except StoreUnavailable:
            cached = None
        if cached is not None:
            plan, fresh_until = self._decode(cached)
            if now < fresh_until:
                if self.local_ttl > 0:
                    if len(self._local) >= 10_000:
                        self._local.clear()
                    self._local[key] = (plan, min(fresh_until, now + self.local_ttl))
                return plan
            stale = plan
        try:
            plan = await self.source.plan_for(identity)
        except GovernanceUnavailable:
            if stale is not None:
                log.warning("plan source unavailable; enforcing the cached plan", extra={"user": identity.external_id})
                return stale
            raise
        entry = {"plan": plan_to_json(plan), "fresh_until": self.clock() + self.ttl}
        try:
            await self.store.set(key, orjson.dumps(entry), self.ttl + self.grace)
        except StoreUnavailable:
            pass
        return plan

    async def invalidate(self, external_id: str) -> None:
        await self.store.delete(f"sentinel:limits:{external_id}")
