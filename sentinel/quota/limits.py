"""Quota limits and decisions: pure data, no I/O.

A `Plan` is a set of `Limit`s, each one metric (`requests`, `input_tokens`, `output_tokens`) over
one fixed window aligned to the Unix epoch. Every limit is counted separately, so a request limit
never shares a counter with a token limit.

A limit may also carry `ExternalUsage` (Zion mode): usage that an outside system had already
counted when it was read. Such a limit is enforced as
`external.used + admitted_locally_since_that_reading + request <= limit`; the local count restarts
with every new reading (`snapshot`), because the next reading includes what was reported since.

The rule for every limit: a request is admitted only when `used + amount <= limit` (and when
`amount` is 0, only while `used < limit`: an exhausted limit admits nothing). A request whose own
amount exceeds a limit is denied outright (`Decision.oversized`): no window reset can help it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

from sentinel.errors import RateLimited

Metric = Literal["requests", "input_tokens", "output_tokens"]
METRICS: tuple[str, ...] = get_args(Metric)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SPEC_ITEM = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*/\s*(\d+)\s*([smhd]?)\s*$")


@dataclass(frozen=True)
class ExternalUsage:
    """What an external source (Zion) reported as already used for one limit.

    `snapshot` identifies that reading (a short token without spaces, e.g. a hash of the fetch);
    `resets_at` is when the external period ends (unix seconds), None when unknown or never.
    """

    used: int
    snapshot: str
    resets_at: float | None = None


@dataclass(frozen=True)
class Limit:
    """At most `limit` units of `metric` per fixed `window_seconds` window.

    With `external`, `window_seconds` is how long one reading's local count is kept (at least the
    time the reading is cached) and the limit resets when `external.resets_at` says.
    """

    metric: Metric
    window_seconds: int
    limit: int
    external: ExternalUsage | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown quota metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        if self.window_seconds <= 0:
            raise ValueError("a quota window must be at least 1 second")
        if self.limit < 0:
            raise ValueError("a quota limit cannot be negative")
        if self.external is not None and not re.fullmatch(r"[\w.\-]{1,64}", self.external.snapshot):
            raise ValueError("an external snapshot id must be 1-64 characters of [A-Za-z0-9_.-]")

    @property
    def offset(self) -> int:
        """Usage counted elsewhere that this limit must include."""
        return self.external.used if self.external is not None else 0

    def describe(self) -> str:
        """e.g. `100 requests per 60s`."""
        return f"{self.limit} {self.metric.replace('_', ' ')} per {_format_window(self.window_seconds)}"


@dataclass(frozen=True)
class Plan:
    """A named set of limits; each (metric, window) pair at most once."""

    name: str
    limits: tuple[Limit, ...] = ()

    def __post_init__(self) -> None:
        seen: set[tuple[str, int, str | None]] = set()
        for limit in self.limits:
            ident = (limit.metric, limit.window_seconds, limit.external.snapshot if limit.external else None)
            if ident in seen:
                raise ValueError(f"plan {self.name!r} has two {limit.metric} limits over the same window")
            seen.add(ident)


def parse_plan_spec(spec: str, name: str = "default") -> Plan:
    """Parse `requests=100/60s,input_tokens=100000/1d` (units s, m, h, d; none = seconds).

    An empty spec is a plan without limits. Raises ValueError with the offending item.
    """
    limits: list[Limit] = []
    for item in filter(str.strip, spec.split(",")):
        match = _SPEC_ITEM.match(item)
        if match is None:
            raise ValueError(f"bad quota limit {item.strip()!r}; expected e.g. requests=100/60s")
        metric, amount, count, unit = match.groups()
        if metric not in METRICS:
            raise ValueError(f"unknown quota metric {metric!r}; expected one of {', '.join(METRICS)}")
        window = int(count) * _UNITS[unit or "s"]
        limits.append(Limit(metric, window, int(amount)))  # type: ignore[arg-type]
    return Plan(name, tuple(limits))


def _format_window(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
            shown = states[denied]
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
        shown = min(states, key=lambda s: (s.fraction_left, s.reset_at))
        return cls(True, None, shown.limit.limit, shown.remaining, shown.reset_at, None, states)

    @property
    def message(self) -> str:
        """A human-readable reason for a denial."""
        if self.allowed or self.limited_by is None:
            return "allowed"
        limit, state = self.limited_by, next(s for s in self.states if s.limit == self.limited_by)
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
        """The 429 to raise for a denial (details name the limit that was hit)."""
        limit = self.limited_by
        details = None
        if limit is not None:
            details = {"metric": limit.metric, "window_seconds": limit.window_seconds, "limit": limit.limit}
        return RateLimited(
            self.message,
            code="quota_exceeded",
            retry_after=self.retry_after,
            headers=self.headers(),
            details=details,
        )


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
