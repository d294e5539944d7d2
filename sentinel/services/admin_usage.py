"""Usage reports for operators: time series, top users and models, totals and the CSV export.

Series come from the per-minute rollup (with a latency histogram: p50/p99 are estimated within a
histogram bucket) and from the counts of every API answer (the error rates: refused and failed
requests leave no usage record). An overview period is a fixed number of epoch-aligned buckets, the last one
holding the current minute (the last 30 days: from the per-hour rollup). Top lists come from the
ledger for the last hour (the same interval as the chart), from the per-hour rollups for the last
day (whole hours) and from the per-day rollups for 30 days (whole UTC days). Totals per user and model come from the ledger itself, so the CSV export shows exactly what
`sentinel usage show` shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sentinel.domain.numbers import MAX_INT64
from sentinel.domain.plans import parse_duration
from sentinel.governance.ledger import SqlLedger
from sentinel.governance.request_stats import AnswerBucket, RequestStats
from sentinel.governance.rollups import percentile
from sentinel.governance.usage_stats import Bucket, Ranked, UsageStats
from sentinel.observability.logging import printable
from sentinel.services.admin_forms import refuse


@dataclass(frozen=True)
class Period:
    """An overview period: `buckets` buckets of `step_minutes`, ending with the current one."""

    name: str
    label: str
    step_minutes: int
    buckets: int

    @property
    def seconds(self) -> int:
        return self.step_minutes * self.buckets * 60


PERIODS: dict[str, Period] = {
    "1h": Period("1h", "last hour", 1, 60),
    "24h": Period("24h", "last 24 hours", 15, 96),
    "30d": Period("30d", "last 30 days", 360, 120),
}
STEPS: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "6h": 360, "1d": 1440}
MAX_BUCKETS = 2000
CSV_COLUMNS = ("external_id", "model", "requests", "input_tokens", "output_tokens", "cost_usd")


@dataclass(frozen=True)
class Point:
    """One bucket of a series.

    From the ledger (served requests): `requests`, `errors` (recorded with a status >= 400, e.g. a
    stream cut short), tokens, cost and p50/p99 latency (ms; None without requests). From the
    answer counts (every API request, refused and failed ones too): `answers`, `client_errors`
    (4xx, `rate_limited` = the 429s among them) and `server_errors` (5xx); `error_rate` is the
    5xx share of the answers, `refused_rate` the 4xx share.
    """

    start: datetime
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    p50_ms: float | None
    p99_ms: float | None
    answers: int = 0
    client_errors: int = 0
    rate_limited: int = 0
    server_errors: int = 0

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.answers if self.answers else 0.0

    @property
    def refused_rate(self) -> float:
        return self.client_errors / self.answers if self.answers else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "requests": self.requests, "errors": self.errors,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8), "p50_ms": _ms(self.p50_ms), "p99_ms": _ms(self.p99_ms),
            "answers": self.answers, "client_errors": self.client_errors, "rate_limited": self.rate_limited,
            "server_errors": self.server_errors, "error_rate": round(self.error_rate, 6),
            "refused_rate": round(self.refused_rate, 6),
        }


@dataclass(frozen=True)
class Series:
    """Buckets of `step_minutes` from `start` (every bucket present, empty ones as zeros)."""

    start: datetime
    step_minutes: int
    points: list[Point]
    totals: Point

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "step_seconds": self.step_minutes * 60,
            "points": [p.to_json() for p in self.points], "totals": self.totals.to_json(),
        }


# Moments are kept within these (a date near year 1 or 9999 overflowed once shifted to UTC or into
# buckets): nothing is recorded before the first, and a range past the last reads nothing more.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def parse_moment(text: str | None, now: datetime) -> datetime | None:
    """An ISO date/time (UTC unless it says otherwise; `20240101` is a date, not seconds) or `7d`,
    `1h`, `90s` (that long before `now`), as UTC, kept between EARLIEST and LATEST; None for None
    or empty text; ValueError on anything else."""
    if text is None or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            moment = now - timedelta(seconds=parse_duration(text))
        except OverflowError:  # a window reaching before year 1 (99999999d)
            raise ValueError(f"window {text.strip()!r} reaches before year 1") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC; 0001-01-01+01:00 in year 0
        return EARLIEST if moment.year == 1 else LATEST
    return min(max(moment, EARLIEST), LATEST)


# Why a window holds no moment that can have been recorded, by the bound at fault (`empty_window`).
EMPTY_WINDOW = {
    "since": "before until (now when absent) and before now: a window counts back from now (since=2h&until=1h)",
    "until": "after 1970-01-01T00:00:00Z: nothing is recorded before it",
}


def empty_window(since: datetime | None, until: datetime | None, now: datetime) -> str | None:
    """The bound (`since` or `until`) that leaves [since, until) without a moment that can have been
    recorded — none before EARLIEST, none after `now` (`until` None: now) — or None for a window
    that holds one. `since=1h&until=2h`, `since=2100-01-01&until=2200-01-01` (`since`) and
    `until=0001-01-01` (kept at EARLIEST: `until`) were an export of its header alone, status 0."""
    if until is not None and until <= EARLIEST:
        return "until"
    end = now if until is None else min(until, now)
    return "since" if since is not None and since >= end else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def ranked_json(item: Ranked) -> dict[str, Any]:
    return {
        "name": item.name, "provider": item.provider, "requests": item.requests, "errors": item.errors,
        "input_tokens": item.input_tokens, "output_tokens": item.output_tokens, "cost_usd": round(item.cost_usd, 8),
    }


def _point(start: datetime, buckets: list[Bucket], answers: list[AnswerBucket]) -> Point:
    """One point from zero or more buckets of each kind (histograms merged); a count at most
    MAX_INT64, as each bucket's (`summed`): a JSON answer carries no larger integer."""
    def total(values: Iterable[int]) -> int:
        return min(sum(values), MAX_INT64)

    width = len(buckets[0].histogram) if buckets else 0
    histogram = [total(b.histogram[i] for b in buckets) for i in range(width)]
    return Point(
        start,
        total(b.requests for b in buckets),
        total(b.errors for b in buckets),
        total(b.input_tokens for b in buckets),
        total(b.output_tokens for b in buckets),
        sum(b.cost_usd for b in buckets),
        percentile(histogram, 0.50) if histogram else None,
        percentile(histogram, 0.99) if histogram else None,
        total(a.requests for a in answers),
        total(a.client_errors for a in answers),
        total(a.rate_limited for a in answers),
        total(a.server_errors for a in answers),
    )


class UsageReports:
    """The read side of usage (see the module docstring). `clock` gives aware UTC datetimes."""

    def __init__(self, ledger: SqlLedger, stats: UsageStats, answers: RequestStats,
                 clock: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self.stats = stats
        self.answers = answers
        self.clock = clock

    async def series(self, since: datetime, until: datetime, step_minutes: int) -> Series:
        """Buckets of `step_minutes` (epoch-aligned) covering [since, until)."""
        step = step_minutes
        first = math.floor(since.timestamp() / 60 / step) * step
        end = math.ceil(until.timestamp() / 60 / step) * step
        count = (end - first) // step
        if count <= 0 or count > MAX_BUCKETS:
            raise refuse({"step": f"a series has 1 to {MAX_BUCKETS} buckets; use a longer step or a shorter range"})
        found = {b.index: b for b in await self.stats.series(first, end, step)}
        answered = {a.index: a for a in await self.answers.series(first, end, step)}
        points = [
            _point(datetime.fromtimestamp((first + i * step) * 60, UTC), [found[i]] if i in found else [],
                   [answered[i]] if i in answered else [])
            for i in range(count)
        ]
        start = datetime.fromtimestamp(first * 60, UTC)
        return Series(start, step, points, _point(start, list(found.values()), list(answered.values())))

    def bounds(self, period: Period) -> tuple[datetime, datetime]:
        """[start, end) of the period's buckets: the last one holds the current minute."""
        step = period.step_minutes
        end = (math.floor(self.clock().timestamp() / 60) // step + 1) * step
        start = end - period.buckets * step
        return datetime.fromtimestamp(start * 60, UTC), datetime.fromtimestamp(end * 60, UTC)

    async def period_series(self, period: Period) -> Series:
        """The period's buckets."""
        start, end = self.bounds(period)
        return await self.series(start, end, period.step_minutes)

    async def top(self, period: Period, limit: int = 10) -> tuple[list[Ranked], list[Ranked], datetime]:
        """(top users, top models, since) by requests over the period: an hour from the ledger, up to
        two days from the per-hour rollups (since the hour the period starts in), longer from the
        per-day rollups (since the UTC day it starts in)."""
        start, _ = self.bounds(period)
        seconds = int(start.timestamp())
        if period.seconds <= 3600:
            users = await self.stats.top_users(since=start, limit=limit)
            return users, await self.stats.top_models(since=start, limit=limit), start
        if period.seconds <= 2 * 86400:
            hour = seconds // 3600
            users = await self.stats.top_users(first_hour=hour, limit=limit)
            models = await self.stats.top_models(first_hour=hour, limit=limit)
            return users, models, datetime.fromtimestamp(hour * 3600, UTC)
        day = seconds // 86400
        users = await self.stats.top_users(first_day=day, limit=limit)
        models = await self.stats.top_models(first_day=day, limit=limit)
        return users, models, datetime.fromtimestamp(day * 86400, UTC)

    async def totals(self, external_id: str, since: datetime | None = None,
                     until: datetime | None = None) -> list[dict[str, Any]]:
        """One user's usage by model (what `sentinel usage show` prints)."""
        return await self.ledger.totals(external_id, since, until)

    async def csv(self, since: datetime | None, until: datetime | None) -> str:
        """Usage per user and model for requests finished in [since, until), as CSV text."""
        # "\r\n" (RFC 4180) ends each row; a cell holding a CR or LF is quoted, so no cell can start a
        # row of its own.
        lines = [",".join(CSV_COLUMNS)]
        for row in await self.ledger.totals_by_user(since, until):
            cost = f"{row['cost_usd']:.8f}".rstrip("0").rstrip(".")
            cells = [_csv_text(row["external_id"], first=True), _csv_text(row["model"] or ""), str(row["requests"]),
                     str(row["input_tokens"]), str(row["output_tokens"]), cost]
            lines.append(",".join(cells))
        return "\r\n".join(lines) + "\r\n"


# The characters that make a cell quoted: the comma, the quote and line breaks (RFC 4180), and the
# other separators a spreadsheet may split a row on: `;` (Excel does in the locales whose decimal
# mark is a comma), tab and `|`. Unquoted, an external id `alice;=HYPERLINK(...)` (which an identity
# source may vouch for) was two cells there, the second a formula; quoted, and first on its row, it
# is one cell whatever the separator (a quote opening a field keeps every separator in it).
_QUOTED = frozenset(',"\r\n;\t|')
# A formula's first character: = + - @ and the forms Unicode folds to them (NFKC) — fullwidth
# (U+FF1D, U+FF0B, U+FF0D, U+FF20: an IME's, which a spreadsheet set for CJK input reads as the
# ASCII sign), small (U+FE66, U+FE62, U+FE63, U+FE6B), superscript and subscript (U+207A, U+207B,
# U+207C, U+208A, U+208B, U+208C) — and the minus sign U+2212, which spreadsheets take for `-`.
_SIGNS = "=+\\-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b\u207a\u207b\u207c\u208a\u208b\u208c\u2212"
# A cell a spreadsheet may read as a formula (OWASP's CSV injection: = + - @, tab, CR), also past
# leading whitespace, which LibreOffice and Excel skip before a sign (` =1+1`, `\t=1+1`). Unicode's
# other spaces never reach here bare: `printable` escapes them (`\u3000`).
_FORMULA = re.compile(rf"[\t\r]|\s*[{_SIGNS}]")
# A cell after the first (the model) opens with its quote only for a reader splitting on `,`: one
# splitting on `;`, tab or `|` starts a cell after each of them inside it (and a row after a line
# break), so what follows one — past any quotes and whitespace — must not start a formula either:
# the model `x;=1+1;` was a cell `=1+1` there. Such a separator gets a ' after it, as a cell's start does.
_INNER_FORMULA = re.compile(rf'([;\t|\r\n]"*)(?=[\t\r]|\s*[{_SIGNS}])')


def _csv_text(text: str, *, first: bool = False) -> str:
    """A text cell a spreadsheet reads as text, whatever separator it splits rows on: one starting
    with tab, CR or a sign (`_SIGNS`: = + - @, their fullwidth and other forms), the sign after
    whitespace too, is prefixed with ' (no formula), and unless it is `first` on its row so
    is what follows each `;`, tab, `|` or line break in it (`_INNER_FORMULA`); then quoted when it
    holds a separator or a line break (see `_QUOTED`). A character that is not printable but tab, CR and
    LF (ESC, a C1 CSI, a bidi override: in a model name a provider reported for an eval run) is written as a `\\uXXXX`
    escape."""
    safe = printable(text, keep="\t\r\n")  # an ESC or CSI sequence reaches a terminal as text (`usage export`)
    safe = "'" + safe if _FORMULA.match(safe) else safe
    if not first:
        safe = _INNER_FORMULA.sub(r"\1'", safe)
    if _QUOTED.isdisjoint(safe):
        return safe
    return '"' + safe.replace('"', '""') + '"'
