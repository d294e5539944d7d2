"""The tier table (tier -> candidate models), from the built-in catalog or from Zion.

Zion's `GET /api/v1/tiers/config` is cached under `sentinel:tiers:config` for
TIER_CONFIG_TTL_SECONDS; when Zion is down the last good table is used (kept in memory and in the
store without expiry); with none at all the native API answers 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from sentinel.config import TierModelEntry
from sentinel.errors import GovernanceUnavailable, ServiceUnavailable, StoreUnavailable
from sentinel.store import Store

log = logging.getLogger("sentinel.tiers")

TierTable = dict[str, list[TierModelEntry]]


class TierSource(Protocol):
    async def table(self) -> TierTable: ...


class StaticTiers:
    """A fixed table (the built-in catalog: defaults or the providers file)."""

    def __init__(self, table: TierTable) -> None:
        self._table = table

    async def table(self) -> TierTable:
        return self._table


def parse_tier_config(data: dict[str, Any]) -> TierTable:
    """Zion's `data` object -> a tier table (camelCase keys as on the wire)."""
    tiers = data.get("tiers")
    if not isinstance(tiers, dict):
        raise ValueError("tier config without 'tiers'")
    return {tier: [TierModelEntry.model_validate(e) for e in tiers.get(tier) or []] for tier in ("simple", "moderate", "complex")}


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
            log.warning("tier config source unavailable; using the last good table", extra={"error": reason})
            return self._memory[1]
        try:
            raw = await self.store.get(self.LAST_GOOD)
        except StoreUnavailable:
            raw = None
        if raw is not None:
            log.warning("tier config source unavailable; using the last good table", extra={"error": reason})
            return parse_tier_config(orjson.loads(raw))
        if self.fallback is not None:
            log.warning("tier config source unavailable; using the configured default table", extra={"error": reason})
            return self.fallback
        raise ServiceUnavailable(
            "No tier configuration is available (the tier config source is unreachable)", code="no_tier_config",
            retry_after=30,
        )
