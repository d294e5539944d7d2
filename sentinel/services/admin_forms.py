"""Validation of operator input (plans, limits, tier entries, names) with an error per field.

Every admin surface (console forms, admin API, CLI) goes through these checks, and a refusal is an
`InvalidRequest` whose `details.fields` maps a field path (`name`, `limits.1.window`,
`entries.0`) to its message, so the console shows each message next to its field and the API
returns them as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from sentinel.domain.numbers import parse_whole
from sentinel.domain.plans import (
    DEFAULT_PLAN_NAME,
    MAX_LIMIT,
    MAX_PLAN_LIMITS,
    MAX_WINDOW_SECONDS,
    METRICS,
    Limit,
    check_window,
    format_window,
    parse_duration,
    parse_window,
)
from sentinel.domain.tiers import TIERS, TierModelEntry
from sentinel.errors import InvalidRequest
from sentinel.governance.keys import MAX_KEY_LIFETIME
from sentinel.governance.tier_store import parse_entry

PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
MAX_COST = 10  # the tier_models table's check constraint
WINDOW_HINT = f"a duration such as 90s, 1m, 1h, 1d, 30d or 2w, at most {format_window(MAX_WINDOW_SECONDS)}"


@dataclass(frozen=True)
class LimitInput:
    """One limit as typed by an operator: `limit` and `window` as text or numbers (a JSON number with a
    fraction or an exponent, or past 64 bits, `10**30`, is a float: checked, and refused, as the number)."""

    metric: str
    limit: str | int | float
    window: str | int | float


MAX_ITEMS = MAX_PLAN_LIMITS  # limits in a plan, candidates in a tier: on every surface (API, console, CLI)


def refuse(fields: Mapping[str, str], message: str = "Some fields are not valid") -> InvalidRequest:
    """The InvalidRequest carrying per-field messages."""
    first = next(iter(fields.items()), None)
    text = f"{message}: {first[0]}: {first[1]}" if first else message
    return InvalidRequest(text, code="validation_failed", details={"fields": dict(fields)})


def field_errors(error: InvalidRequest) -> dict[str, str]:
    """The per-field messages of an InvalidRequest (empty when it has none)."""
    fields = (error.details or {}).get("fields")
    return dict(fields) if isinstance(fields, dict) else {}


# A plan saved as `default` read, wherever a user's plan is shown by name (the admin API's and the
# console's quota view: `"plan": "default"`), as the DEFAULT_PLAN users without a plan get — with other
# limits; and `users set-plan alice default` put alice on it, not back on DEFAULT_PLAN.
DEFAULT_NAME_TAKEN = (
    f"{DEFAULT_PLAN_NAME!r} (in any case) names DEFAULT_PLAN, the plan of users without one: choose another name"
)


def check_plan_name(name: str) -> str:
    """The name as given (never stripped: `PUT /plans/%20a` must not edit plan `a`), or 400; also for
    `default` in any case (DEFAULT_NAME_TAKEN: a plan saved so before can still be deleted)."""
    if not PLAN_NAME.fullmatch(name):
        raise refuse({"name": "1-100 characters: letters, digits, '_', '.', '-', starting with a letter or digit"})
    if name.lower() == DEFAULT_PLAN_NAME:
        raise refuse({"name": DEFAULT_NAME_TAKEN})
    return name


def check_limits(items: Iterable[LimitInput]) -> list[Limit]:
    """Limits from operator input; rows whose three fields are all empty are skipped."""
    errors: dict[str, str] = {}
    limits: list[Limit] = []
    seen: dict[tuple[str, int], int] = {}
    counted = 0
    for i, item in enumerate(items):
        if item.metric in ("", None) and str(item.limit).strip() == "" and str(item.window).strip() == "":
            continue
        counted += 1
        if counted > MAX_ITEMS:
            raise refuse({"limits": f"at most {MAX_ITEMS} limits"})
        here = f"limits.{i}"
        if item.metric not in METRICS:
            errors[f"{here}.metric"] = f"choose one of {', '.join(METRICS)}"
        amount = _whole(item.limit)
        if amount is None or not 0 <= amount <= MAX_LIMIT:
            errors[f"{here}.limit"] = f"a whole number from 0 to {MAX_LIMIT:,}"
        try:
            if isinstance(item.window, float):  # no whole number of seconds (a fraction, or past 64 bits)
                raise ValueError(item.window)
            window = parse_window(item.window) if isinstance(item.window, str) else check_window(item.window)
        except ValueError:
            errors[f"{here}.window"] = WINDOW_HINT
            continue
        if item.metric in METRICS and amount is not None and f"{here}.limit" not in errors:
            key = (item.metric, window)
            if key in seen:
                errors[f"{here}.window"] = f"limit {seen[key] + 1} already counts {item.metric} over this window"
                continue
            seen[key] = i
            limits.append(Limit(item.metric, window, amount))
    if errors:
        raise refuse(errors)
    return limits


LIMIT_FIELDS = ("metric", "limit", "window")


def limit_inputs(raw: Any) -> list[LimitInput]:
    """`[{"metric", "limit", "window"}, ...]` (JSON) as LimitInputs; InvalidRequest when malformed."""
    if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
        raise refuse({"limits": f"a list of at most {MAX_ITEMS} {{metric, limit, window}} objects"})
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise refuse({f"limits.{i}": "an object {metric, limit, window}"})
        if unknown := [name for name in item if name not in LIMIT_FIELDS]:  # `window_seconds` beside `window`
            raise refuse({f"limits.{i}.{unknown[0]}": f"unknown field: a limit is {{{', '.join(LIMIT_FIELDS)}}}"})
        metric, limit, window = (item.get(name, "") for name in LIMIT_FIELDS)
        if not isinstance(metric, str) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                  for v in (limit, window)):
            raise refuse({f"limits.{i}": "metric is text; limit and window are text or numbers"})
        out.append(LimitInput(metric, limit, window))
    return out


EXPIRES_IN_HINT = f"a lifetime such as 3600, 90m, 12h, 30d or 2w (seconds without a unit), at most {MAX_KEY_LIFETIME.days}d"
EXPIRES_AT_HINT = "an ISO-8601 date/time in the future, such as 2030-01-31T18:00:00Z (UTC unless it says otherwise)"


def key_expiry(now: datetime, expires_in: str | int | None = None, expires_at: str | datetime | None = None, *,
               in_field: str = "expires_in", at_field: str = "expires_at") -> datetime | None:
    """When a key issued `now` expires, from operator input: `expires_in` (a lifetime: whole seconds,
    or text `parse_duration` reads: `30d`) or `expires_at` (an ISO-8601 date/time, UTC unless it says
    otherwise), not both; None (never) for neither or blank text. The moment must be after `now` and
    at most MAX_KEY_LIFETIME later; InvalidRequest naming `in_field` / `at_field` otherwise."""
    if isinstance(expires_in, str) and not expires_in.strip():
        expires_in = None
    if isinstance(expires_at, str) and not expires_at.strip():
        expires_at = None
    if expires_in is not None and expires_at is not None:
        raise refuse({at_field: f"give {at_field} or {in_field}, not both"})
    limit = int(MAX_KEY_LIFETIME.total_seconds())
    if expires_in is not None:
        seconds: int | None
        if isinstance(expires_in, bool):
            seconds = None
        elif isinstance(expires_in, int):
            seconds = expires_in
        else:
            try:
                seconds = parse_duration(expires_in)
            except ValueError:  # junk, or more digits than int() reads
                seconds = None
        if seconds is None or not 0 < seconds <= limit:
            raise refuse({in_field: EXPIRES_IN_HINT})
        return now + timedelta(seconds=seconds)
    if expires_at is None:
        return None
    moment = expires_at
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.strip())
        except ValueError:
            raise refuse({at_field: EXPIRES_AT_HINT}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC; 0001-01-01+01:00 in year 0
        raise refuse({at_field: f"at most {MAX_KEY_LIFETIME.days} days ahead"}) from None
    if moment <= now:
        raise refuse({at_field: "a moment in the future: this one has passed"})
    if moment - now > MAX_KEY_LIFETIME:
        raise refuse({at_field: f"at most {MAX_KEY_LIFETIME.days} days ahead"})
    return moment


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise refuse({"tier": f"one of {', '.join(TIERS)}"})
    return tier


def check_tier_entries(lines: Iterable[str]) -> list[TierModelEntry]:
    """Tier candidates written `provider/model:cost[:input_price:output_price]`, one per item;
    blank items are skipped."""
    errors: dict[str, str] = {}
    entries: list[TierModelEntry] = []
    seen: dict[tuple[str, str], int] = {}
    counted = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        counted += 1
        if counted > MAX_ITEMS:
            raise refuse({"entries": f"at most {MAX_ITEMS} candidates"})
        try:
            entry = parse_entry(line.strip())
        except ValidationError as exc:  # a price below 0 or not finite, a cost out of range
            first = exc.errors()[0]
            errors[f"entries.{i}"] = f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
            continue
        except ValueError as exc:
            errors[f"entries.{i}"] = str(exc).splitlines()[0]
            continue
        if not 1 <= entry.relative_cost <= MAX_COST:
            errors[f"entries.{i}"] = f"the relative cost must be 1 to {MAX_COST}"
            continue
        if (earlier := seen.setdefault((entry.provider, entry.model), i)) != i:  # a failover would retry it
            errors[f"entries.{i}"] = f"{entry.provider}/{entry.model} is candidate {earlier + 1} already"
            continue
        entries.append(entry)
    if errors:
        raise refuse(errors)
    return entries


def _whole(value: str | int | float) -> int | None:
    if isinstance(value, bool | float):  # (a float: 10**30 in JSON, or 5.5; the message says the bound)
        return None
    if isinstance(value, int):
        return value
    return parse_whole(value.strip().replace("_", "").replace(",", ""), MAX_LIMIT)
