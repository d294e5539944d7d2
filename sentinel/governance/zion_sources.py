"""Zion as Sentinel's plan source and usage sink (the HTTP client itself is `zion.ZionClient`)."""

from __future__ import annotations

import logging

from sentinel.governance.identity import Identity
from sentinel.governance.zion import ZionClient, ZionPlanSource
from sentinel.quota.limits import Plan
from sentinel.quota.records import UsageRecord

log = logging.getLogger("sentinel.zion")


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
