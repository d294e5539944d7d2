"""Zion as Sentinel's plan source, usage sink and tier source (the HTTP client is `zion.ZionClient`).

The tier table from Zion's `GET /api/v1/tiers/config` is cached under `sentinel:tiers:config` for
TIER_CONFIG_TTL_SECONDS. When Zion is down, or sends a table that cannot be used (the reason is
logged), the last good table stays in force (kept in memory and in the store without expiry) and
Zion is asked again after at most TIER_RETRY_SECONDS; with none at all the catalog's table is used,
and without that the native API answers 503. A stored entry that cannot be decoded is a miss:
logged, counted (`sentinel_cache_lookups_total{cache="tiers",result="undecodable"}`), replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan
from sentinel.domain.tiers import TIERS, TierModelEntry, TierTable
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable, ServiceUnavailable, StoreUnavailable, UsageBatchRefused
from sentinel.governance.cache import count_lookup, read_entry
from sentinel.governance.zion import MAX_BATCH, ZionClient, ZionPlanSource, ZionStatusError
from sentinel.observability.metrics import Metrics
from sentinel.store import Store

log = logging.getLogger("sentinel.zion")
tier_log = logging.getLogger("sentinel.tiers")


class ZionPlans:
    """PlanSource: the user's limits from Zion; users Zion does not know get DEFAULT_PLAN.

    Merge rule (`apply_default`, ZION_APPLY_DEFAULT_PLAN, on by default): a user Zion knows gets
    Zion's limits *and* every DEFAULT_PLAN limit (the original's 100 requests per 60 s throttle),
    each counted on its own; a request is admitted only when it fits all of them, so the stricter
    limit wins at any moment. Without it, Zion's limits alone apply.
    """

    name = "zion"

    def __init__(
        self, client: ZionClient, default: Plan, *, max_window_seconds: int, apply_default: bool = True
    ) -> None:
        self.source = ZionPlanSource(client, max_window_seconds=max_window_seconds)
        self.default = default
        self.apply_default = apply_default

    async def plan_for(self, identity: Identity) -> Plan:
        plan = await self.source.plan_for_user(identity.external_id)
        if plan is None:
            return self.default
        if not self.apply_default or not self.default.limits:
            return plan
        return Plan(f"{plan.name}+{self.default.name}", plan.limits + self.default.limits)


# Zion's answers to a whole batch that are about what the batch holds (a value Zion rejects, a body
# too large): the deliverer then delivers its records one by one (`UsageBatchRefused`). 401 and 403
# are about Sentinel's service key (an outage the operator must fix); 408 and 429 are outages.
CONTENT_REFUSALS = (400, 413, 422)
CREDENTIAL_REFUSALS = (401, 403)


class ZionSink:
    """UsageSink: Zion's batch-increment endpoint with an Idempotency-Key (at-least-once unless honoured)."""

    name = "zion"

    def __init__(self, client: ZionClient) -> None:
        self.client = client

    async def deliver(self, records: list[UsageRecord], idempotency_key: str) -> list[str]:
        """Deliver; returns the request ids Zion refused (retried later under a new key), those
        without an email among them: never sent, they stay in the outbox (a record left from a
        `GOVERNANCE=builtin` run), not settled as if Zion had counted them.

        A batch Zion refuses whole for its content (CONTENT_REFUSALS: one record's value can do it)
        raises `UsageBatchRefused`, so the deliverer sends its records one by one instead of this
        batch for ever — unless it went in several calls (over MAX_BATCH records): the calls before
        the refused one were applied under their keys, so it stays an outage. A 401 or 403 (Zion
        refusing Sentinel's service key) is an outage, logged at error: the operator must fix it."""
        try:
            result = await self.client.batch_increment(records, idempotency_key)
        except ZionStatusError as exc:
            if exc.zion_status in CREDENTIAL_REFUSALS:
                log.error("Zion refused Sentinel's service key (%d) on usage delivery: check ZION_API_KEY; "
                          "usage waits in the outbox", exc.zion_status, extra={"batch": idempotency_key})
            elif exc.zion_status in CONTENT_REFUSALS and sum(1 for r in records if r.email) <= MAX_BATCH:
                raise UsageBatchRefused(
                    f"Zion refused the usage batch whole ({exc.zion_status})", retry_after=exc.retry_after,
                    resend_after=exc.resend_after,  # its Retry-After, if any: honoured before any part goes
                ) from None
            raise
        skipped = [item.request_id for item in result.items if item.status == "skipped"]
        for request_id in skipped:
            log.warning("usage record without an email cannot be reported to Zion", extra={"record_id": request_id})
        failed = [item.request_id for item in result.failed] + skipped
        if failed:
            log.warning("Zion refused some usage records; retrying them", extra={"count": len(failed)})
        return failed


# Zion's wire keys of a tier entry and the fields they fill; every other key is ignored.
_ENTRY_KEYS = {
    "provider": "provider",
    "model": "model",
    "relativeCost": "relative_cost",
    "inputPricePerMillion": "input_price_per_million",
    "outputPricePerMillion": "output_price_per_million",
}
_REQUIRED = ("provider", "model", "relativeCost")
# How long a failing or unusable tier config source is left alone before it is asked again.
TIER_RETRY_SECONDS = 30.0


def parse_tier_config(data: Any) -> TierTable:
    """Zion's `data` object -> a tier table, as the spec defines it.

    Each entry is read leniently: only `provider`, `model`, `relativeCost` (required; an integer
    0..255) and the two prices (optional, default 0) are read, other keys are ignored; unknown
    tiers are ignored, a missing tier has no models. ValueError naming the reason when the table
    cannot be used: not an object, no `tiers`, a malformed entry, or no model in any tier.
    """
    if not isinstance(data, dict):
        raise ValueError("the tier config is not an object")
    tiers = data.get("tiers")
    if not isinstance(tiers, dict):
        raise ValueError("the tier config has no 'tiers' object")
    table: TierTable = {}
    for tier in TIERS:
        entries = tiers.get(tier)
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ValueError(f"tiers.{tier} is not a list")
        table[tier] = [_entry(f"tiers.{tier}[{i}]", raw) for i, raw in enumerate(entries)]
    if not any(table.values()):
        raise ValueError("the tier config names no model in any tier")
    return table


def _entry(where: str, raw: Any) -> TierModelEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not an object")
    missing = [key for key in _REQUIRED if raw.get(key) is None]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    cost = raw["relativeCost"]
    if isinstance(cost, float) and cost.is_integer():
        cost = int(cost)
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= 255:
        raise ValueError(f"{where}.relativeCost must be an integer from 0 to 255, got {str(cost)[:40]!r}")
    picked = {field: raw[wire] for wire, field in _ENTRY_KEYS.items() if raw.get(wire) is not None}
    picked["relative_cost"] = cost
    try:
        return TierModelEntry.model_validate(picked)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{where}.{field}: {first['msg']}") from None


class ZionTiers:
    """TierSource: the tier table from Zion, cached in the store, with a last-good fallback."""

    KEY = "sentinel:tiers:config"
    LAST_GOOD = "sentinel:tiers:config:last_good"

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        store: Store,
        ttl: float,
        clock: Callable[[], float] = time.time,
        fallback: TierTable | None = None,
        *,
        metrics: Metrics | None = None,
        retry_seconds: float = TIER_RETRY_SECONDS,
    ) -> None:
        self.fallback = fallback if fallback and any(fallback.values()) else None
        self.fetch = fetch
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics
        self.retry_seconds = retry_seconds
        self._memory: tuple[float, TierTable] | None = None  # (serve until, table)
        self._good: TierTable | None = None  # the last table Zion sent that could be used

    async def table(self) -> TierTable:
        """The table in force; ServiceUnavailable when none was ever had and there is no fallback."""
        if self._memory is not None and self.clock() < self._memory[0]:
            return self._memory[1]
        cached = await self._read(self.KEY)
        if cached is not None:
            return self._serve(cached, min(self.ttl, 5.0), good=True)
        try:
            data = await self.fetch()
        except GovernanceUnavailable as exc:
            return await self._last_good(f"the tier config source is unavailable ({exc.message})")
        try:
            table = parse_tier_config(data)
        except ValueError as exc:
            return await self._last_good(f"Zion's tier config cannot be used: {exc}")
        raw = orjson.dumps(data)
        try:
            await self.store.set(self.KEY, raw, self.ttl)
            await self.store.set(self.LAST_GOOD, raw)
        except StoreUnavailable:
            pass
        return self._serve(table, min(self.ttl, 5.0), good=True)

    def _serve(self, table: TierTable, seconds: float, *, good: bool) -> TierTable:
        self._memory = (self.clock() + seconds, table)
        if good:
            self._good = table
        return table

    async def _read(self, key: str) -> TierTable | None:
        """The table stored under `key`; None when absent, unreachable or undecodable (logged, counted)."""
        table = await read_entry(self.store, key, lambda raw: parse_tier_config(orjson.loads(raw)), "tiers",
                                 self.metrics)
        if table is not None:
            count_lookup(self.metrics, "tiers", "hit")
        return table

    async def _last_good(self, reason: str) -> TierTable:
        retry = min(self.ttl, self.retry_seconds)
        good = self._good or await self._read(self.LAST_GOOD)
        if good is not None:
            tier_log.warning("%s; the last good tier table stays in force", reason, extra={"error": reason})
            return self._serve(good, retry, good=True)
        if self.fallback is not None:
            tier_log.warning("%s; using the configured default tier table", reason, extra={"error": reason})
            return self._serve(self.fallback, retry, good=False)
        tier_log.warning("%s; no tier table is available", reason, extra={"error": reason})
        raise ServiceUnavailable(
            "No tier configuration is available (the tier config source is unreachable)", code="no_tier_config",
            retry_after=30,
        )
