"""Plans and limits: what a user may consume, per metric and fixed window. Pure data, no I/O.

A `Plan` is a named set of `Limit`s, each one metric (`requests`, `input_tokens`,
`output_tokens`) over one fixed window aligned to the Unix epoch. Operators write limits as
`requests=100/1m` and windows as `90s`, `1m`, `1h`, `1d`, `30d`, `2w` (one grammar, here), at most
`MAX_WINDOW_SECONDS` (366 days).

A limit may carry `ExternalUsage` (Zion mode): usage an outside system had already counted when
it was read; the limit is then enforced as `external.used + still running at that reading +
admitted since that reading + request`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast, get_args

from sentinel.domain.identity import Identity
from sentinel.domain.numbers import parse_whole

Metric = Literal["requests", "input_tokens", "output_tokens"]
METRICS: tuple[Metric, ...] = get_args(Metric)

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_WINDOW = re.compile(r"([0-9]+)([smhdw]?)")
_LIMIT = re.compile(r"\s*(\w+)\s*=\s*([0-9]+)\s*/\s*(\S+)\s*")
# The longest window a limit may have: a year, leap day included. Longer ones buy nothing (a
# fixed window aligned to the epoch) and their reset times leave what dates can represent.
MAX_WINDOW_SECONDS = 366 * 86400
# The largest limit an operator may set (a million billion: "unlimited" in practice); sums stay far
# inside the 64-bit integers of the store, the caches and the database.
MAX_LIMIT = 10**15
# How often an external reading whose period has already ended is read again (the source has not
# rolled the period over yet): often enough that the new period starts within it, seldom enough that
# one user's requests cannot keep the source busy.
ENDED_PERIOD_RECHECK_SECONDS = 30
# The most limits one plan may hold (every one is a counter each request checks), on every surface.
MAX_PLAN_LIMITS = 50
_SNAPSHOT = re.compile(r"[\w.\-]{1,64}")


def parse_duration(text: str) -> int:
    """Seconds in a duration written `90s`, `1m`, `1h`, `1d`, `30d`, `2w` or bare seconds, of any
    length (`since=400d`); ValueError on junk. A plan's window is `parse_window` (bounded)."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid window {text!r}: expected a number and a unit s, m, h, d or w, e.g. 1h")
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"invalid window {text!r}: must be longer than zero")
    return seconds


def parse_window(text: str) -> int:
    """Seconds in a limit's window written as `parse_duration` reads it, at most MAX_WINDOW_SECONDS;
    ValueError on junk or a longer window."""
    return check_window(parse_duration(text))


def check_window(seconds: int) -> int:
    """`seconds` when it is a usable limit window (1 to MAX_WINDOW_SECONDS); ValueError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise ValueError("a quota window must be a whole number of seconds, at least 1")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"a quota window may be at most {format_window(MAX_WINDOW_SECONDS)} "
                         f"({MAX_WINDOW_SECONDS} seconds), got {format_window(seconds)}")
    return seconds


def format_window(seconds: int) -> str:
    """The shortest `parse_window` spelling of `seconds` (3600 -> `1h`, 90 -> `90s`)."""
    for unit, size in _UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # pragma: no cover - "s" always divides


@dataclass(frozen=True)
class ExternalUsage:
    """What an external source (Zion) reported as already used for one limit.

    `snapshot` identifies that reading (a short token without spaces, e.g. a hash of the fetch);
    `resets_at` is when the external period ends (unix seconds), None when unknown or never.
    """

    used: int
    snapshot: str
    resets_at: float | None = None

    def reset_after(self, now: float, window_seconds: int) -> float:
        """When the limit this reading counts for frees up, as told to clients (Retry-After,
        X-RateLimit-Reset) at `now`: the period's end; a window from now for a period of no end.

        A period that has ended by now is one the source has not rolled over yet: its counts stand
        until it is read again, ENDED_PERIOD_RECHECK_SECONDS from now at the latest (a reset in the
        past said "Retry in 1s" at every request until the cached reading ran out). Never said
        more than MAX_WINDOW_SECONDS ahead, as no built-in window is: a period ending in year 9999
        was a Retry-After of 8,000 years (the refusal stands; it is only said so)."""
        if self.resets_at is None:
            reset = now + window_seconds
        elif self.resets_at <= now:
            reset = now + ENDED_PERIOD_RECHECK_SECONDS
        else:
            reset = self.resets_at
        return min(reset, now + MAX_WINDOW_SECONDS)


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
        if isinstance(self.window_seconds, bool) or not isinstance(self.window_seconds, int) or self.window_seconds <= 0:
            raise ValueError("a quota window must be a whole number of seconds, at least 1")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError("a quota limit must be a non-negative integer")
        if self.external is not None and not _SNAPSHOT.fullmatch(self.external.snapshot):
            raise ValueError("an external snapshot id must be 1-64 characters of [A-Za-z0-9_.-]")

    @property
    def offset(self) -> int:
        """Usage counted elsewhere that this limit must include."""
        return self.external.used if self.external is not None else 0

    def describe(self) -> str:
        """e.g. `100 requests per 1m`."""
        return f"{self.limit} {self.metric.replace('_', ' ')} per {format_window(self.window_seconds)}"

    def __str__(self) -> str:
        """The operator's spelling, e.g. `requests=100/1m` (what `parse_limit` reads)."""
        return f"{self.metric}={self.limit}/{format_window(self.window_seconds)}"


def parse_limit(text: str) -> Limit:
    """`requests=100/1m` -> Limit('requests', 60, 100); ValueError on junk."""
    match = _LIMIT.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid limit {text.strip()!r}: expected METRIC=LIMIT/WINDOW, e.g. requests=100/1m")
    metric, limit, window = match.groups()
    if metric not in METRICS:
        raise ValueError(f"unknown quota metric {metric!r}; expected one of {', '.join(METRICS)}")
    amount = parse_whole(limit.lstrip("0") or "0", MAX_LIMIT)
    if amount is None:  # (past the bound: shown cut, a 5,000-digit one was Python's int() refusal)
        shown = limit if len(limit) <= 24 else f"{limit[:20]}… ({len(limit):,} digits)"
        raise ValueError(f"limit {shown} of {metric}: a whole number from 0 to {MAX_LIMIT:,}")
    return Limit(cast(Metric, metric), parse_window(window), amount)


def parse_limits(text: str) -> list[Limit]:
    """Comma-separated `parse_limit` items: `requests=100/1m,input_tokens=100000/1d`."""
    return [parse_limit(item) for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class Plan:
    """A named set of limits; each (metric, window) pair at most once (per external reading)."""

    name: str
    limits: tuple[Limit, ...] = ()
    external: bool = field(init=False, repr=False, compare=False)
    """Whether any limit carries `ExternalUsage` (worked out once, for the limiter)."""

    def __post_init__(self) -> None:
        seen: set[tuple[str, int, str | None]] = set()
        for limit in self.limits:
            ident = (limit.metric, limit.window_seconds, limit.external.snapshot if limit.external else None)
            if ident in seen:
                raise ValueError(f"plan {self.name!r} has two {limit.metric} limits over the same window")
            seen.add(ident)
        object.__setattr__(self, "external", any(limit.external is not None for limit in self.limits))

    def spec(self) -> str:
        """The plan's limits in the operator's spelling, e.g. `requests=100/1m,output_tokens=5000/1d`."""
        return ",".join(str(limit) for limit in self.limits)


# The name of the plan users without one get (DEFAULT_PLAN): the admin API's and the console's quota
# views, a Zion user's merged plan (`...+default`) name it so. No stored plan may take it (any case).
DEFAULT_PLAN_NAME = "default"


def parse_plan_spec(spec: str, name: str = DEFAULT_PLAN_NAME) -> Plan:
    """A plan from `requests=100/60s,input_tokens=100000/1d`; an empty spec has no limits."""
    return Plan(name, tuple(parse_limits(spec)))


class PlanSource(Protocol):
    """Where a user's plan comes from (the built-in database, Zion, a cache in front of either)."""

    name: str

    async def plan_for(self, identity: Identity) -> Plan:
        """The plan to enforce; raises GovernanceUnavailable when the source cannot be asked."""
        ...
