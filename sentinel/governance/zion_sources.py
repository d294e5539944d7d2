"""Zion as Sentinel's plan source, usage sink and tier source (the HTTP client is `zion.ZionClient`).

The tier table from Zion's `GET /api/v1/tiers/config` is cached under `sentinel:tiers:config` for
TIER_CONFIG_TTL_SECONDS; when Zion is down the last good table is used (kept in memory and in the
store without expiry); with none at all the native API answers 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan
from sentinel.domain.tiers import TIERS, TierModelEntry, TierTable
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, ServiceUnavailable, StoreUnavailable
from sentinel.governance.zion import ZionClient, ZionPlanSource
from sentinel.store import Store

log = logging.getLogger("sentinel.zion")
tier_log = logging.getLogger("sentinel.tiers")


class ZionPlans:
    """PlanSource: the user's limits from Zion; users Zion does not know get DEFAULT_PLAN."""

    name = "zion"

    def __init__(self, client: ZionClient, default: Plan, *, max_window_seconds: int) -> None:
        self.source = ZionPlanSource(client, max_window_seconds=max_window_seconds)
        self.default = default

    async def plan_for(self, identity: Identity) -> Plan:
        plan = await self.source.plan_for_user(identity.external_id)
        return plan if plan is not None else self.default


class ZionSink:
    """UsageSink: Zion's batch-increment endpoint with an Idempotency-Key (at-least-once unless honoured)."""

    name = "zion"

    def __init__(self, client: ZionClient) -> None:
        self.client = client

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        """Deliver; returns the request ids Zion refused (retried later under a new key)."""
        result = await self.client.batch_increment(records, idempotency_key)
        for item in result.items:
            if item.status == "skipped":
                log.warning("usage record without an email cannot be reported to Zion",
                            extra={"record_id": item.request_id})
        failed = [item.request_id for item in result.failed]
        if failed:
            log.warning("Zion refused some usage records; retrying them", extra={"count": len(failed)})
        return failed


def parse_tier_config(data: dict[str, Any]) -> TierTable:
    """Zion's `data` object -> a tier table (camelCase keys as on the wire)."""
    tiers = data.get("tiers")
    if not isinstance(tiers, dict):
        raise ValueError("tier config without 'tiers'")
    return {tier: [TierModelEntry.model_validate(e) for e in tiers.get(tier) or []] for tier in TIERS}


class ZionTiers:
    """Tier table from Zion, cached in the store, with a last-good fallback."""

    KEY = "sentinel:tiers:config"
    LAST_GOOD = "sentinel:tiers:config:last_good"

    def __init__(
        self, fetch: Callable[[], Awaitable[dict[str, Any]]], store: Store, ttl: float,
        clock: Callable[[], float] = time.time, fallback: TierTable | None = None,
    ) -> None:
        self.fallback = fallback if fallback and any(fallback.values()) else None
        self.fetch = fetch
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._memory: tuple[float, TierTable] | None = None

    async def table(self) -> TierTable:
        if self._memory is not None and self.clock() < self._memory[0]:
            return self._memory[1]
        try:
            cached = await self.store.get(self.KEY)
        except StoreUnavailable:
            cached = None
        if cached is not None:
            table = parse_tier_config(orjson.loads(cached))
            self._memory = (self.clock() + min(self.ttl, 5.0), table)
            return table
        try:
            data = await self.fetch()
            table = parse_tier_config(data)
        except (GovernanceUnavailable, ValueError) as exc:
            return await self._last_good(str(exc))
        raw = orjson.dumps(data)
        try:
            await self.store.set(self.KEY, raw, self.ttl)
            await self.store.set(self.LAST_GOOD, raw)
        except StoreUnavailable:
            pass
        self._memory = (self.clock() + min(self.ttl, 5.0), table)
        return table

    async def _last_good(self, reason: str) -> TierTable:
        if self._memory is not None:
            tier_log.warning("tier config source unavailable; using the last good table", extra={"error": reason})
            return self._memory[1]
        try:
            raw = await self.store.get(self.LAST_GOOD)
        except StoreUnavailable:
            raw = None
        if raw is not None:
            tier_log.warning("tier config source unavailable; using the last good table", extra={"error": reason})
            return parse_tier_config(orjson.loads(raw))
        if self.fallback is not None:
            tier_log.warning("tier config source unavailable; using the configured default table", extra={"error": reason})
            return self.fallback
        raise ServiceUnavailable(
            "No tier configuration is available (the tier config source is unreachable)", code="no_tier_config",
            retry_after=30,
        )
