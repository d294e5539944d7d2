"""The metering seam between the HTTP layer and quotas/usage.

`admit()` runs before a metered request is forwarded: it loads the caller's plan, estimates the
request and reserves it against every limit in one atomic store operation (or raises RateLimited).
`settle()` runs exactly once after the request was served (success, upstream error after tokens
were spent, client disconnect): it reconciles the reservation to the real usage and writes one
usage record to the durable outbox before returning. `release()` runs when nothing was served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sentinel.domain.identity import Identity
from sentinel.domain.plans import PlanSource
from sentinel.domain.policies import QuotaFailureMode
from sentinel.domain.usage import Usage, UsageRecord
from sentinel.errors import ServiceUnavailable, StoreUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.quota.estimate import estimate_input, max_output
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.quota.outbox import DurableOutbox
from sentinel.quota.tokens import TokenCounter

log = logging.getLogger("sentinel.meter")


@dataclass
class Admission:
    """A request admitted for metering: what was reserved and the rate-limit headers to send."""

    identity: Identity
    endpoint: str
    model: str
    request_id: str
    estimate_input: int = 0
    max_output: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    limiter: QuotaLimiter | None = None
    provider: str | None = None
    prices: tuple[float, float] | None = None  # USD per million input/output tokens, when known
    settled: bool = False


def cost(prices: tuple[float, float] | None, input_tokens: int, output_tokens: int) -> float | None:
    """USD cost from per-million prices (None when the prices are unknown)."""
    if prices is None or prices == (0.0, 0.0):
        return None
    return round((input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000, 8)


class Meter(Protocol):
    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str
    ) -> Admission: ...

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str
    ) -> None: ...

    async def release(self, admission: Admission) -> None: ...


class QuotaMeter:
    """Quotas (shared limiter, failure policy) plus usage records (token counting, outbox)."""

    def __init__(
        self,
        *,
        plans: PlanSource,
        limiter: QuotaLimiter,
        local_limiter: QuotaLimiter,
        failure_mode: QuotaFailureMode,
        counter: TokenCounter,
        outbox: DurableOutbox,
        metrics: Metrics,
        default_max_output: int,
    ) -> None:
        self.plans = plans
        self.limiter = limiter
        self.local_limiter = local_limiter
        self.failure_mode = failure_mode
        self.counter = counter
        self.outbox = outbox
        self.metrics = metrics
        self.default_max_output = default_max_output

    async def admit(
        self, identity: Identity, *, endpoint: str, model: str, payload: dict[str, Any] | None, request_id: str
    ) -> Admission:
        body = payload or {}
        admission = Admission(
            identity=identity,
            endpoint=endpoint,
            model=model,
            request_id=request_id,
            estimate_input=estimate_input(self.counter, endpoint, model, body),
            max_output=max_output(endpoint, body, self.default_max_output),
        )
        plan = await self.plans.plan_for(identity)
        limiter = self.limiter
        try:
            reservation = await limiter.reserve(
                identity.external_id,
                plan,
                input_tokens=admission.estimate_input,
                output_tokens=admission.max_output,
            )
        except StoreUnavailable:
            self.metrics.quota_store_failures.labels(self.failure_mode.value).inc()
            if self.failure_mode is QuotaFailureMode.closed:
                raise ServiceUnavailable(
                    "Quota service unavailable: cannot check your limits right now", code="quota_unavailable"
                ) from None
            if self.failure_mode is QuotaFailureMode.open:
                log.warning("quota store unavailable; admitting without a quota check (QUOTA_FAILURE_MODE=open)")
                return admission
            limiter = self.local_limiter
            reservation = await limiter.reserve(
                identity.external_id, plan, input_tokens=admission.estimate_input, output_tokens=admission.max_output
            )
        decision = reservation.decision
        if not decision.allowed:
            name = decision.limited_by.metric if decision.limited_by else "unknown"
            self.metrics.quota_decisions.labels("limited", name).inc()
            raise decision.to_error()
        self.metrics.child(self.metrics.quota_decisions, "allowed", "").inc()
        admission.reservation = reservation
        admission.limiter = limiter
        admission.headers = decision.headers()
        return admission

    async def settle(
        self, admission: Admission, *, usage: Usage | None, output_text: str, status: int, provider: str
    ) -> None:
        if admission.settled:
            return
        admission.settled = True
        model = admission.model
        if usage is not None:
            input_tokens, output_tokens, source = usage.input_tokens, usage.output_tokens, "measured"
            if admission.estimate_input > 0:
                self.metrics.child(self.metrics.estimate_error, model).observe(
                    (usage.input_tokens - admission.estimate_input) / admission.estimate_input
                )
        else:
            input_tokens = admission.estimate_input
            output_tokens = self.counter.count_text(output_text, model) if output_text else 0
            source = "estimated"
        if admission.reservation is not None and admission.limiter is not None:
            try:
                await admission.limiter.commit(
                    admission.reservation, input_tokens=input_tokens, output_tokens=output_tokens
                )
            except StoreUnavailable:
                log.warning("could not reconcile a quota reservation (store unavailable)")
        record = UsageRecord(
            request_id=admission.request_id,
            external_id=admission.identity.external_id,
            email=admission.identity.email,
            model=model,
            provider=provider,
            endpoint=admission.endpoint,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_source=source,  # type: ignore[arg-type]
            status=status,
            started_at=admission.started_at,
            finished_at=datetime.now(UTC),
            cost_usd=cost(admission.prices, input_tokens, output_tokens),
        )
        await self.outbox.put(record)
        m = self.metrics
        m.child(m.tokens, "input", model).inc(input_tokens)
        m.child(m.tokens, "output", model).inc(output_tokens)
        m.child(m.usage_requests, model, source).inc()
        if record.cost_usd:
            self.metrics.cost.labels(provider, model).inc(record.cost_usd)

    async def release(self, admission: Admission) -> None:
        if admission.settled:
            return
        admission.settled = True
        if admission.reservation is not None and admission.limiter is not None:
            try:
                await admission.limiter.release(admission.reservation)
            except StoreUnavailable:
                log.warning("could not release a quota reservation (store unavailable)")
