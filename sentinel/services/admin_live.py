"""Live state for operators: a user's quota counters, provider health, sessions, the outbox depth.

Everything here reads what the gateway itself uses at this moment: the plan the quota check would
enforce (through the same cached plan source), the quota counters (`QuotaLimiter.peek`, which
counts nothing), the shared backoff table and the session store. A store or governance outage is
reported in the answer (`error`), never raised, so a console page still renders.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sentinel.domain.identity import Identity
from sentinel.domain.plans import Plan, PlanSource
from sentinel.domain.tiers import TierSource, TierTable
from sentinel.errors import GovernanceUnavailable, NotFound, ServiceUnavailable, StoreUnavailable
from sentinel.observability.logging import clipped
from sentinel.quota.limiter import QuotaLimiter
from sentinel.routing.health import ProviderHealth, phase
from sentinel.routing.sessions import SessionStore


def _moment(unix: float) -> datetime:
    """`unix` seconds as a UTC datetime; the last representable one beyond year 9999 (a window
    saved before windows were bounded can reset later than a datetime can say)."""
    try:
        return datetime.fromtimestamp(unix, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)


class HasDepth(Protocol):
    """The usage outbox as far as operators look at it."""

    async def depth(self) -> int: ...


@dataclass(frozen=True)
class LimitView:
    """One limit of a plan with its live counter."""

    metric: str
    window_seconds: int
    limit: int
    used: int
    reset_at: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def fraction(self) -> float:
        return min(1.0, self.used / self.limit) if self.limit else 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reset_at": self.reset_at.isoformat(), "remaining": self.remaining}


@dataclass(frozen=True)
class QuotaView:
    """The plan enforced for a user now and each limit's counter (`error` when unreadable)."""

    plan: Plan | None
    limits: list[LimitView] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": None if self.plan is None else self.plan.name,
            "limits": [lim.to_json() for lim in self.limits],
            "error": self.error,
        }


@dataclass(frozen=True)
class ProviderView:
    """One tier candidate and its health."""

    provider: str
    model: str
    tiers: list[str]
    configured: bool
    available: bool
    failures: int
    backoff_seconds: float
    remaining_seconds: float
    state: str = "healthy"  # `sentinel.routing.health.phase`: healthy, backoff, half_open or trial
    # In a soft backoff (client-causable failures alone, `sentinel.routing.health`): avoided while
    # another candidate may serve, never a reason to refuse a request.
    soft: bool = False


async def candidate_views(
    health: ProviderHealth, table: TierTable, providers: Collection[str], *, digits: int
) -> list[ProviderView]:
    """Every candidate of the tier `table` (once, with the tiers naming it) and its health now, its
    remaining backoff rounded to `digits`: what the admin API, the console and `/debug/health` show."""
    tiers_of: dict[tuple[str, str], list[str]] = {}
    for tier, entries in table.items():
        for entry in entries:
            tiers_of.setdefault((entry.provider, entry.model), []).append(tier)
    states = await health.states(list(tiers_of))
    now = health.clock()
    out = []
    for (provider, model), tiers in tiers_of.items():
        state = states[(provider, model)]
        out.append(ProviderView(
            provider, model, tiers, provider in providers, state is None or state.until <= now,
            0 if state is None else state.failures, 0.0 if state is None else state.backoff,
            0.0 if state is None else round(state.remaining(now), digits), phase(state, now),
            state is not None and state.soft and state.in_backoff(now),
        ))
    return out


class LiveState:
    """The runtime's live parts, as operators see them (see the module docstring)."""

    def __init__(
        self,
        *,
        plans: PlanSource,
        limiter: QuotaLimiter,
        health: ProviderHealth | None = None,
        tiers: TierSource | None = None,
        providers: set[str] | None = None,
        sessions: SessionStore | None = None,
        outbox: HasDepth | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.plans = plans
        self.limiter = limiter
        self.health = health
        self.tiers = tiers
        self.providers = providers or set()
        self.sessions = sessions
        self.outbox = outbox
        self.clock = clock or limiter.clock

    async def quota(self, identity: Identity) -> QuotaView:
        """The enforced plan and its counters for `identity` (nothing is counted)."""
        try:
            plan = await self.plans.plan_for(identity)
        except (GovernanceUnavailable, StoreUnavailable) as exc:
            return QuotaView(None, error=f"plan unavailable: {exc.message}")
        try:
            decision = await self.limiter.peek(identity.external_id, plan)
        except StoreUnavailable as exc:
            return QuotaView(plan, error=f"quota counters unavailable: {exc.message}")
        limits = [
            LimitView(s.limit.metric, s.limit.window_seconds, s.limit.limit, s.used,
                      _moment(s.reset_at))
            for s in decision.states
        ]
        return QuotaView(plan, limits)

    async def provider_health(self) -> tuple[list[ProviderView], str | None]:
        """Every tier candidate with its backoff state, then configured providers without one."""
        if self.health is None or self.tiers is None:
            return [], "provider health is not available here"
        try:
            table = await self.tiers.table()
        except ServiceUnavailable as exc:
            return [], f"tier table unavailable: {exc.message}"
        out = await candidate_views(self.health, table, self.providers, digits=1)
        listed = {view.provider for view in out}
        for provider in sorted(self.providers - listed):
            out.append(ProviderView(provider, "", [], True, True, 0, 0.0, 0.0))
        return out, None

    async def session(self, external_id: str, conversation_id: str) -> dict[str, Any]:
        """A user's conversation's session with its TTL left; NotFound when there is none."""
        if self.sessions is None:
            raise NotFound("Sessions are not available here", code="session_not_found")
        found = await self.sessions.get(conversation_id, external_id)
        if found is None:
            raise NotFound(f"No session for conversation {clipped(conversation_id)!r} of {clipped(external_id)!r}",
                           code="session_not_found")
        try:
            ttl = await self.sessions.store.ttl(self.sessions.key(external_id, conversation_id))
        except StoreUnavailable:
            ttl = None
        return {**found.view(), "ttl_remaining_seconds": ttl}

    async def outbox_depth(self) -> int | None:
        """Usage records waiting for delivery; None when it cannot be read here."""
        if self.outbox is None:
            return None
        try:
            return await self.outbox.depth()
        except (StoreUnavailable, GovernanceUnavailable):
            return None
