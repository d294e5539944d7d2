"""Quota decisions: what one reservation attempt found for every limit of a plan. Pure, no I/O.

Every limit (see `sentinel.domain.plans`) is counted separately, so a request limit never shares
a counter with a token limit. A limit with `ExternalUsage` (Zion mode) is enforced as
`external.used + still_running_at_that_reading + admitted_locally_since + request <= limit`; the
local count restarts with every new reading (`snapshot`), because the next reading includes what
was reported since — from what is still running then (see `sentinel.quota.limiter`).

The rule for every limit: a request is admitted only when `used + amount <= limit` (and when
`amount` is 0, only while `used < limit`: an exhausted limit admits nothing). A limit of 0 bans its
metric instead: a request needing none of it is admitted, whatever is counted there. A request whose
own amount exceeds a limit (any amount, for a limit of 0) is denied outright (`Decision.oversized`,
shown in preference to any other limit that refused it): no window reset can help it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sentinel.domain.plans import Limit
from sentinel.errors import RateLimited


def refuses(current: int, amount: int, limit: int, offset: int) -> bool:
    """Whether a limit at `current` (plus `offset`, what an external source counted) refuses `amount`
    more: the rule of the limiter's Lua scripts (`sentinel.quota.limiter`), of which this is the twin."""
    return (amount > 0 or limit > 0) and current + max(amount, 1) > limit - offset


@dataclass(frozen=True)
class LimitState:
    """One limit as seen by one decision: its usage (after the request when admitted)."""

    limit: Limit
    used: int
    requested: int
    reset_at: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit.limit - self.used)

    @property
    def refuses(self) -> bool:
        """Whether this limit refuses the request, by the reservation script's rule (`used` being
        the count before the request, as in a denied decision's states)."""
        return refuses(self.used, self.requested, self.limit.limit, 0)

    @property
    def fraction_left(self) -> float:
        return self.remaining / self.limit.limit if self.limit.limit else 0.0


@dataclass(frozen=True)
class Decision:
    """The outcome of one reservation attempt.

    `limit`, `remaining` and `reset_at` describe the limit shown to the client: the one that
    denied the request, else the tightest one (smallest fraction left). `retry_after` (seconds)
    is set only when denied and a later window can admit the request.
    """

    allowed: bool
    limited_by: Limit | None
    limit: int | None
    remaining: int | None
    reset_at: float | None
    retry_after: float | None
    states: tuple[LimitState, ...] = ()
    oversized: bool = False

    @classmethod
    def from_states(cls, states: tuple[LimitState, ...], denied: int | None, now: float) -> Decision:
        """Build a decision; `denied` is the index of the limit that refused, None when admitted."""
        if denied is not None:
            # A limit the request can never fit refused it too: show that one, without a Retry-After
            # (another limit's reset would only lead to this refusal). Else, of the limits that refuse
            # it (the script names the first), the one that resets last: before then another still
            # would (`requests=5/1m,requests=50/1d` exhausted for the day said "retry in 40 s").
            refusing = [s for s in states if s.refuses] or [states[denied]]
            shown = next((s for s in states if s.requested > s.limit.limit),
                         max(refusing, key=lambda s: s.reset_at))
            oversized = shown.requested > shown.limit.limit
            retry = None if oversized else max(0.0, shown.reset_at - now)
            return cls(
                False,
                shown.limit,
                shown.limit.limit,
                shown.remaining,
                shown.reset_at,
                retry,
                states,
                oversized,
            )
        if not states:
            return cls(True, None, None, None, None, None)
        # A limit of 0 (a metric the plan bans) is no budget to report: "0 remaining" on every answer.
        shown = min(
            [s for s in states if s.limit.limit > 0] or states, key=lambda s: (s.fraction_left, s.reset_at)
        )
        return cls(True, None, shown.limit.limit, shown.remaining, shown.reset_at, None, states)

    @property
    def message(self) -> str:
        """A human-readable reason for a denial."""
        if self.allowed or self.limited_by is None:
            return "allowed"
        limit, state = self.limited_by, next(s for s in self.states if s.limit == self.limited_by)
        if self.oversized and limit.limit == 0:  # a banned metric (the amount may be a stand-in: pass-through)
            return (
                f"This plan allows no {limit.metric.replace('_', ' ')} ({limit.describe()}) and this request "
                "may use some; it can never be admitted as is."
            )
        if self.oversized:
            return (
                f"This request alone needs {state.requested} {limit.metric.replace('_', ' ')}, "
                f"more than the quota of {limit.describe()}; it can never be admitted as is."
            )
        return f"Quota exceeded: {limit.describe()}. Retry in {_ceil(self.retry_after or 0)}s."

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-Limit/Remaining/Reset` (reset as unix seconds) and, when denied, `Retry-After`."""
        if self.limit is None or self.remaining is None or self.reset_at is None:
            return {}
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed and self.retry_after is not None:
            out["Retry-After"] = str(_ceil(self.retry_after))
        return out

    def to_error(self) -> RateLimited:
        """The 429 to raise for a denial; `details` name the limit that was hit and its state."""
        limit = self.limited_by
        details = None
        if limit is not None:
            state = next(s for s in self.states if s.limit == limit)
            details = {
                "metric": limit.metric,
                "window_seconds": limit.window_seconds,
                "limit": limit.limit,
                "used": state.used,
                "requested": state.requested,
                "remaining": state.remaining,
                "reset_at": datetime.fromtimestamp(state.reset_at, UTC).isoformat(timespec="seconds"),
            }
        return RateLimited(
            self.message,
            code="quota_exceeded",
            retry_after=self.retry_after,
            retryable=not self.oversized,
            headers=self.headers(),
            details=details,
        )


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
