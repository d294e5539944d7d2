"""The Zion governance API over one pooled aiohttp session, and the sources built on it.

`ZionClient` is the only place that talks to Zion: each call has a timeout (a usage delivery its
own, longer one: `usage_timeout`), is retried with exponential backoff and jitter on a 5xx, a
dropped connection or a timeout (never on a 4xx), and every aiohttp/asyncio failure becomes
`GovernanceUnavailable` here, once. A usage delivery is not retried within the call after a timeout
(Zion may still be applying it) nor after an answer carrying `Retry-After`: the error says how long
to wait (`resend_after`), and the deliverer waits it before it sends the batch again. The service key goes in
`x-api-key` and is never logged; Zion's error bodies are never passed on to clients.

A circuit breaker (`sentinel.breaker`) counts outages only (connection errors, timeouts, 5xx; any
answer below 500 counts as Zion being up); usage delivery has one of its own (`usage_breaker`), so a
failing usage endpoint never stops identities and limits from being read. Once it opens, calls fail at once with
`GovernanceUnavailable` (no call, no retry, no wait) until one probe per cooldown succeeds, so
while Zion is down requests are served from the caches at cache speed for the grace period.

`ZionIdentitySource` validates user JWTs through `/users/me` (a 400, 401, 403 or 404 there means
no such identity, never an outage, and so does any other 4xx but a 408 or 429; a token longer than
MAX_ZION_TOKEN_BYTES is refused without asking); `ZionPlanSource` turns a user's Zion limits into a quota `Plan`
whose limits carry Zion's `used` figure (`ExternalUsage`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from sentinel.backoff import Backoff
from sentinel.breaker import CircuitBreaker, State
from sentinel.domain.identity import Identity, external_id_of
from sentinel.domain.numbers import MAX_TOKENS, parse_retry_after
from sentinel.domain.plans import MAX_LIMIT, ExternalUsage, Limit, Metric, Plan
from sentinel.domain.usage import UsageRecord
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.jwt import unverified_expiry
from sentinel.observability.logging import Repeated, clipped
from sentinel.providers.http import read_capped

log = logging.getLogger("sentinel.zion")

MAX_BATCH = 1000
MAX_ANSWER_BYTES = 1024 * 1024  # no Zion answer comes near: a larger one is refused, not read whole
# Consecutive outage answers (per attempt) that open the breaker, and how long it stays open.
BREAKER_THRESHOLD = 3
BREAKER_COOLDOWN_SECONDS = 5.0
# What `/users/me` answers for a token that names no usable user: malformed (400), invalid or expired
# (401), a deactivated user (403), a deleted one (404). Exactly like 401: no identity.
NO_IDENTITY = (400, 401, 403, 404)
# The 4xx answers that say Zion could not take the call now rather than anything of the token: a
# timeout (408) and "call less" (429). Outages, as a 5xx is; any other 4xx to `/users/me` (431, 414,
# 413 for a token too large for Zion or a proxy in front of it, 405, 422, ...) means Zion did not
# accept the token: no identity, never a 503.
NOT_A_VERDICT = (408, 429)
# The longest token (UTF-8 bytes) sent to Zion's `/users/me`: a longer one is refused (no identity)
# without asking. No JWT Zion issues comes near it, and web servers and proxies commonly refuse a
# header line past 8 KiB (431, 414, 400); the gateway itself takes 16 KiB of headers in all.
MAX_ZION_TOKEN_BYTES = 8 * 1024
PERIOD_SECONDS = {"DAILY": 86400, "WEEKLY": 7 * 86400, "MONTHLY": 30 * 86400, "NEVER": 10 * 365 * 86400}
# Zion's metric names and Sentinel's quota metrics, in the same order.
WIRE_METRICS: dict[str, Metric] = {
    "aiInputTokens": "input_tokens",
    "aiOutputTokens": "output_tokens",
    "aiRequests": "requests",
}


class ZionStatusError(GovernanceUnavailable):
    """Zion answered with an unexpected status; `zion_status` keeps it (4xx ones are not retryable),
    `retry_after` Zion's Retry-After seconds when it sent one (e.g. with a 429), also the
    `resend_after` unless another is given."""

    def __init__(
        self, message: str, *, zion_status: int, retry_after: float | None = None, resend_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after or 1.0,
                         resend_after=retry_after if resend_after is None else resend_after)
        self.zion_status = zion_status


@dataclass(frozen=True)
class MetricReading:
    """One metric of a Zion limit: `limit` None (or negative) means unlimited."""

    limit: int | None
    used: int
    remaining: int | None


@dataclass(frozen=True)
class UserLimit:
    name: str
    display_name: str | None
    metrics: dict[str, MetricReading]  # keyed by Zion's wire name, e.g. "aiInputTokens"
    reset_period: str | None
    period_start: datetime | None
    period_end: datetime | None


@dataclass(frozen=True)
class ZionLimits:
    """`GET /limits/external/{id}`: the user's limits as Zion reported them."""

    user_id: str
    external_id: str | None
    limits: tuple[UserLimit, ...]


@dataclass(frozen=True)
class ItemResult:
    """What became of one record: `applied`, `failed` (retry it under a new key) or `skipped` (no email)."""

    request_id: str
    status: Literal["applied", "failed", "skipped"]
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    items: tuple[ItemResult, ...]

    @property
    def applied(self) -> list[str]:
        return [r.request_id for r in self.items if r.status == "applied"]

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items if r.status == "failed"]


class ZionClient:
    """Zion's HTTP API. Pass the app's session, or let the client own one (then `aclose()` it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 3.0,
        usage_timeout: float = 30.0,
        connect_timeout: float = 1.0,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        usage_breaker: CircuitBreaker | None = None,
    ) -> None:
        self._base = base_url.rstrip("/") + "/api/v1"
        self._api_key = api_key
        self._session = session
        self._owned = session is None
        # Identity, limits and tier config are on the request path: a short timeout. A usage batch
        # (up to MAX_BATCH increments Zion applies one by one) gets one that fits it
        # (ZION_USAGE_TIMEOUT_SECONDS): cut at 3 s it was sent again while Zion still applied it.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._usage_timeout = aiohttp.ClientTimeout(total=usage_timeout, connect=connect_timeout)
        self._backoff = backoff or Backoff(base=0.1, cap=2.0, attempts=3)
        # Identity, limits and tier config share one breaker; usage delivery has its own: the usage
        # endpoint failing (or one batch Zion answers 500 to, sent again under its key for as long)
        # must not make every user Sentinel has not cached a 503 (the deliverer backs off anyway).
        self.breaker = breaker or CircuitBreaker(BREAKER_THRESHOLD, BREAKER_COOLDOWN_SECONDS)
        self.usage_breaker = usage_breaker or CircuitBreaker(BREAKER_THRESHOLD, BREAKER_COOLDOWN_SECONDS)
        self._refusals = Repeated(log)  # unexpected 4xx refusals of users' tokens: once a minute per status
        for name, watched in (("zion", self.breaker), ("zion_usage", self.usage_breaker)):
            if watched.on_change is None:
                watched.on_change = self._watcher(name, watched)

    def __repr__(self) -> str:  # never show the key
        return f"ZionClient({self._base!r})"

    async def aclose(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    async def me(self, token: str) -> Identity | None:
        """The user behind a JWT, per Zion; None when Zion refuses it (NO_IDENTITY: an invalid token, a
        deactivated or deleted user). Such a refusal is an answer, not an outage: no cached identity
        may stand in for it. So is any other 4xx but NOT_A_VERDICT (logged: it may be Zion's
        misconfiguration), and a token longer than MAX_ZION_TOKEN_BYTES is refused without asking.
        A profile whose `externalId` is neither null, "", a string nor a number is unreadable
        (GovernanceUnavailable), as one without an `id` is."""
        if len(token.encode("utf-8", "surrogatepass")) > MAX_ZION_TOKEN_BYTES:
            return None
        try:
            data = await self._call(
                "GET", "/users/me", headers={"Authorization": f"Bearer {token}"}, none_on=NO_IDENTITY
            )
        except ZionStatusError as exc:
            if not 400 <= exc.zion_status < 500 or exc.zion_status in NOT_A_VERDICT:
                raise
            self._refusals.warning("Zion answered %d to /users/me: the token is refused (401)",
                                   exc.zion_status, key=str(exc.zion_status))
            return None
        if data is None:
            return None
        user_id, email = _str(data, "id"), data.get("email")
        email = email if isinstance(email, str) and email else None
        named = data.get("externalId")
        external_id = external_id_of(named)
        if external_id is None and named is not None and named != "":
            # Unreadable (a list, an object, a boolean, 0), not "none": keyed by Zion's id instead, the
            # user's limits were read by that id (404: DEFAULT_PLAN, every Zion limit lifted) and the
            # user's objects, sessions and counters kept apart from its own. As a JWT's claims are read.
            raise GovernanceUnavailable("Zion's answer to /users/me has an unreadable 'externalId'")
        if external_id is None:  # null or "" falls back to id
            log.debug("Zion profile %s has no externalId; keying it by its id", user_id)
        return Identity(external_id=external_id or user_id, user_id=user_id, email=email, source="zion")

    async def limits(self, external_id: str) -> ZionLimits | None:
        """The user's limits, or None when Zion does not know the user (404)."""
        if not external_id:
            raise ValueError("external_id must not be empty")
        segment = quote(external_id, safe="")  # the original inserted it raw
        if segment in (".", ".."):  # would be read as dot-segments
            segment = segment.replace(".", "%2E")
        data = await self._call("GET", "/limits/external/" + segment, service=True, none_on=(404,))
        return None if data is None else _parse_limits(data)

    async def tier_config(self) -> dict[str, Any]:
        """`GET /tiers/config`'s data as Zion sent it."""
        data = await self._call("GET", "/tiers/config", service=True)
        return cast(dict[str, Any], data)

    async def increment(self, record: UsageRecord, idempotency_key: str | None = None) -> dict[str, Any]:
        """Report one record through the single-increment endpoint; its data as sent."""
        if not record.email:
            raise ValueError("Zion usage is keyed by email; the record has none")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self._call(
            "POST", "/usage/external/increment", service=True, body=_item(record), headers=headers, usage=True
        )
        return cast(dict[str, Any], data)

    async def batch_increment(self, items: Sequence[UsageRecord], idempotency_key: str) -> BatchResult:
        """Report records, one increment each, in calls of at most 1000 carrying `Idempotency-Key`.

        Results are matched to records per item (by email only where their order contradicts the
        increments' and the emails are unambiguous: `_paired`). Chunks after the first use
        `<key>:<n>`, so retrying the same records with the same key repeats the same calls. Raises
        GovernanceUnavailable when a call fails: retry the whole batch with the same key.
        Whether a repeat is really applied once depends on Zion honouring the key.
        """
        results: list[ItemResult] = []
        sendable = [r for r in items if r.email]
        for n, start in enumerate(range(0, len(sendable), MAX_BATCH)):
            chunk = sendable[start : start + MAX_BATCH]
            key = idempotency_key if n == 0 else f"{idempotency_key}:{n}"
            body = {"increments": [_item(r) for r in chunk]}
            data = await self._call(
                "POST",
                "/usage/external/batch-increment",
                service=True,
                body=body,
                headers={"Idempotency-Key": key},
                usage=True,
            )
            results += _match(chunk, cast(dict[str, Any], data))
        outcome = iter(results)  # one per sendable record, in order
        return BatchResult(
            tuple(
                next(outcome) if r.email else ItemResult(r.request_id, "skipped", "no email") for r in items
            )
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        service: bool = False,
        body: Any = None,
        headers: dict[str, str] | None = None,
        none_on: Collection[int] = (),
        usage: bool = False,
    ) -> Any:
        """One API call with retries; Zion's `data` (None when the status is one of `none_on`).
        `usage`: a usage delivery, behind `usage_breaker` (every other call is behind `breaker`), with
        the usage timeout; one that times out once its connection was made, or is answered with a
        `Retry-After`, is not sent again here: `resend_after` says when it may be."""
        breaker = self.usage_breaker if usage else self.breaker
        timeout = self._usage_timeout if usage else self._timeout
        sent = {**(headers or {}), "Accept-Encoding": "identity"}
        if service:
            sent["x-api-key"] = self._api_key
        payload = None
        if body is not None:
            sent["Content-Type"] = "application/json"
            payload = orjson.dumps(body)
        url = URL(self._base + path, encoded=True)
        route = path.split("/external/")[0] if path.startswith("/limits/") else path  # no user ids in logs
        for attempt in range(1, self._backoff.attempts + 1):
            last = attempt == self._backoff.attempts
            if not breaker.allow():
                raise GovernanceUnavailable(
                    f"Zion is unavailable (circuit open) on {method} {route}",
                    retry_after=max(1.0, breaker.retry_after()),
                )
            try:
                # Not redirected (the service key would go wherever Zion pointed), not compressed
                # (the app's session does not inflate answers).
                async with self._http().request(
                    method, url, headers=sent, data=payload, timeout=timeout, allow_redirects=False
                ) as resp:
                    status, raw, wait = resp.status, await _read_capped(resp), resp.headers.get("Retry-After", "")
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                breaker.failure()
                problem = f"Zion unreachable on {method} {route}: {type(exc).__name__}"
                if usage and isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
                    # Sent, maybe still being applied: sent again at once under its key, it was counted
                    # twice by a Zion that looks a key up only once it has applied it. Not before
                    # the timeout has passed once more (the deliverer waits it).
                    raise GovernanceUnavailable(problem, resend_after=timeout.total) from exc
                if last:
                    raise GovernanceUnavailable(problem) from exc
            else:
                if status < 500 and status != 429:
                    breaker.success()  # a whole answer, even a refusal: Zion is up
                else:  # down, or asking to be called less (429): calls stop while the circuit is open
                    breaker.failure()
                if status in none_on:
                    return None
                if 200 <= status < 300:
                    return _data(raw, route)
                problem = f"Zion answered {status} to {method} {route}"
                retry_after = parse_retry_after(wait, now=time.time())
                # A usage delivery Zion asks to wait (a 503 with Retry-After) is not sent again now:
                # the deliverer waits what Zion asked, and meanwhile calls it for nothing else. A 504
                # (a proxy in front of Zion that stopped waiting) is a timed-out call: Zion may still
                # be applying it.
                resend = timeout.total if usage and status == 504 and retry_after is None else retry_after
                if status < 500 or last or (usage and resend is not None):
                    raise ZionStatusError(problem, zion_status=status, retry_after=retry_after, resend_after=resend)
            if breaker.state == "open":  # this failure opened it: do not keep trying
                raise GovernanceUnavailable(f"{problem}; circuit open", retry_after=breaker.retry_after())
            log.warning("%s; retrying (attempt %d of %d)", problem, attempt + 1, self._backoff.attempts)
            await asyncio.sleep(self._backoff.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _watcher(name: str, breaker: CircuitBreaker) -> Callable[[State, State], None]:
        """What logs the state changes of `breaker`, called `name` ("zion", or "zion_usage" for usage)."""
        calls = ("usage deliveries to Zion fail at once for %.0f s; usage waits in the outbox" if name == "zion_usage"
                 else "Zion calls fail at once for %.0f s; cached identities and limits are served")

        def changed(old: State, new: State) -> None:
            if new == "open":
                log.warning("Zion circuit open: " + calls, breaker.cooldown, extra={"breaker": name, "from_state": old})
            elif new == "closed":
                log.warning("Zion circuit closed: Zion answers again", extra={"breaker": name, "from_state": old})

        return changed

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
                cookie_jar=aiohttp.DummyCookieJar(),  # calls for every user: no state carried between them
            )
        return self._session


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused (GovernanceUnavailable) past MAX_ANSWER_BYTES: no Zion answer is
    that large, and reading one whole would let a hostile or broken Zion exhaust memory."""
    raw = await read_capped(resp, MAX_ANSWER_BYTES)
    if raw is None:
        raise GovernanceUnavailable(f"Zion sent an answer larger than {MAX_ANSWER_BYTES} bytes")
    return raw


def _data(raw: bytes, route: str) -> Any:
    try:
        data = orjson.loads(raw)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise GovernanceUnavailable(f"Zion sent an unreadable answer to {route}") from None
    if not isinstance(data, dict):
        raise GovernanceUnavailable(f"Zion sent an unreadable answer to {route}")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise GovernanceUnavailable(f"Zion's answer lacks {key!r}")
    return value


def _int(value: Any, name: str) -> int:
    """A whole number, kept within ±MAX_TOKENS (a larger limit is as good as none; quota arithmetic
    and the cache's JSON stay in range), else GovernanceUnavailable."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
        float("inf"), float("-inf")) or value != int(value):
        raise GovernanceUnavailable(f"Zion's {name} is not an integer")
    return max(-MAX_TOKENS, min(int(value), MAX_TOKENS))


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise GovernanceUnavailable(f"Zion sent an unreadable time {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_limits(data: dict[str, Any]) -> ZionLimits:
    limits = []
    entries = data.get("limits")
    if entries is None:  # none (null, or no such key): the user has no limits in Zion
        entries = []
    # Any other non-list (`false`, `0`, `""`, `{}`) is unreadable, not "no limits": read as none, it
    # lifted every Zion limit of the user.
    if not isinstance(entries, list):
        raise GovernanceUnavailable("Zion sent unreadable limits")
    for entry in entries:
        if not isinstance(entry, dict):
            raise GovernanceUnavailable("Zion sent an unreadable limit")
        metrics = {}
        for wire in WIRE_METRICS:
            meter = entry.get(wire)
            if meter is not None and not isinstance(meter, dict):  # `"aiRequests": 100`: not a limit to drop
                raise GovernanceUnavailable(f"Zion sent an unreadable {wire}")
            if isinstance(meter, dict):
                limit, used, remaining = meter.get("limit"), meter.get("used"), meter.get("remaining")
                metrics[wire] = MetricReading(
                    None if limit is None else _int(limit, f"{wire}.limit"),
                    # null or absent: nothing used; `false` or `""` is unreadable (was read as 0 used)
                    0 if used is None else _int(used, f"{wire}.used"),
                    None if remaining is None else _int(remaining, f"{wire}.remaining"),
                )
        period = entry.get("resetPeriod")
        if period is not None and (not isinstance(period, str) or period not in PERIOD_SECONDS):
            log.warning("unknown Zion resetPeriod %s; treating it as NEVER", clipped(repr(period)))
            period = None
        limits.append(
            UserLimit(
                str(entry.get("name") or "limit"),
                display if isinstance(display := entry.get("displayName"), str) else None,
                metrics,
                period,
                _time(entry.get("periodStart")),
                _time(entry.get("periodEnd")),
            )
        )
    return ZionLimits(_str(data, "userId"), data.get("externalId"), tuple(limits))


def _timestamp(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds and `Z`, e.g. 2024-01-15T10:30:00.123Z (records are UTC)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _item(record: UsageRecord) -> dict[str, Any]:
    """One increment: metrics only when > 0 (every record is one request)."""
    item: dict[str, Any] = {"email": record.email, "aiRequests": 1}
    if record.input_tokens > 0:
        item["aiInputTokens"] = record.input_tokens
    if record.output_tokens > 0:
        item["aiOutputTokens"] = record.output_tokens
    if record.model:
        item["model"] = record.model
    item["timestamp"] = _timestamp(record.finished_at)
    return item


def _match(records: list[UsageRecord], data: dict[str, Any]) -> list[ItemResult]:
    """Pair Zion's results with the records sent, by position: one result per increment (by email
    when the results name other emails than their positions' and the emails say which is which).

    An answer that does not name one result per increment (none, fewer, more, or not all objects)
    says nothing of which record became what. It counts as all applied only when Zion's counts
    say so (`processed` is every record, `failed` 0 or missing, and no result it gives is a
    failure); otherwise it is a wrong shape, an outage: the same batch goes again under the same
    key (a Zion that honours the key answers as before) — never split into applied and failed
    records by guess. Marking a record without a result failed sent it again under a new key
    (applied twice: truncated results, one per email); pairing by email when there were more
    results than records could mark a failed record applied (lost).
    """
    raw = data.get("results")
    results = raw if isinstance(raw, list) else []
    if len(results) == len(records) and all(isinstance(r, dict) for r in results):
        paired = _paired(records, results)
        if paired is not None:
            return [
                ItemResult(record.request_id, "applied")
                if result.get("success") is True
                else ItemResult(record.request_id, "failed", str(result.get("error") or "rejected by Zion"))
                for record, result in paired
            ]
    processed, failed = data.get("processed"), data.get("failed")
    if (
        _count(processed) == len(records)
        and (failed is None or _count(failed) == 0)
        and not any(isinstance(r, dict) and r.get("success") is not True for r in results)
    ):
        if results:
            log.warning("Zion sent %d results for %d increments; its counts say all were applied",
                        len(results), len(records))
        return [ItemResult(r.request_id, "applied") for r in records]
    raise GovernanceUnavailable(
        f"Zion's batch answer names {len(results)} results for {len(records)} increments "
        f"(processed {clipped(repr(processed))}, failed {clipped(repr(failed))})"
    )


def _paired(records: list[UsageRecord], results: list[dict[str, Any]]) -> list[tuple[UsageRecord, dict[str, Any]]] | None:
    """Each record with its result: by position, unless the results name the records' emails in
    another order (Zion answered in another order: emails of its own spelling say nothing of order).
    Then by email, where that says which record each result is: every email's results all succeeded
    or all failed. None when it cannot say (the answer is then judged by its counts alone)."""

    def email(result: dict[str, Any]) -> str | None:
        named = result.get("email")
        return named.casefold() if isinstance(named, str) else None

    def matches(record: UsageRecord, result: dict[str, Any]) -> bool:
        named = email(result)
        return named is None or named == (record.email or "").casefold()

    in_order = list(zip(records, results, strict=True))
    if all(matches(record, result) for record, result in in_order) or Counter(map(email, results)) != Counter(
        (record.email or "").casefold() for record in records
    ):
        return in_order
    by_email: dict[str | None, list[dict[str, Any]]] = {}
    for result in results:
        by_email.setdefault(email(result), []).append(result)
    paired = []
    for record in records:
        group = by_email.get((record.email or "").casefold())
        if not group or len({r.get("success") is True for r in group}) > 1:
            return None
        paired.append((record, group.pop()))
    return paired


def _count(value: Any) -> int | None:
    """A count from Zion's answer (a whole number, not a boolean), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ZionIdentitySource:
    """IdentitySource over Zion's `/users/me` (one Zion call per token not yet cached).

    Zion vouches for the token; its `exp` claim, read without verification (it can only shorten
    the identity's life), sets `expires_at` = `exp + LEEWAY_SECONDS`, so no cache serves the
    identity past the token's expiry. Opaque (non-JWT) tokens carry no expiry.
    """

    name = "zion"

    def __init__(self, client: ZionClient) -> None:
        self.client = client

    async def authenticate(self, token: str) -> Identity | None:
        identity = await self.client.me(token)
        expires_at = unverified_expiry(token)
        if identity is None or expires_at is None:
            return identity
        return replace(identity, expires_at=expires_at)


LATEST_RESET = 253402214400.0  # 9999-12-31T00:00:00Z: a later period end is read as this


def plan_from_limits(limits: ZionLimits, *, max_window_seconds: int | None = None) -> Plan:
    """A Plan with one Limit per metric that has a limit (null or negative = unlimited).

    The window is Zion's period (capped by `max_window_seconds`: it is how long the local count of
    one reading is kept); `external` carries Zion's `used`, the period end, and a snapshot id that
    changes whenever the reading does (so the local count restarts once Zion includes it, from what
    is still running: see `sentinel.quota.limiter`).
    """
    out = []
    for n, user_limit in enumerate(limits.limits):
        window = PERIOD_SECONDS[user_limit.reset_period or "NEVER"]
        if max_window_seconds is not None:
            window = min(window, max_window_seconds)
        # Kept where dates and Retry-After make sense (.NET's DateTime.MaxValue means "never").
        resets_at = (min(max(user_limit.period_end.timestamp(), 0.0), LATEST_RESET)
                     if user_limit.period_end else None)
        for wire, meter in user_limit.metrics.items():
            if meter.limit is None or meter.limit < 0:
                continue
            # The entry's place and period too: two unnamed entries (DAILY, MONTHLY) capped to the same
            # window read alike, and a plan cannot hold one limit twice.
            reading = (
                f"{n}|{user_limit.name}|{user_limit.reset_period}|{wire}|{meter.limit}|{meter.used}|"
                f"{user_limit.period_start}|{resets_at}"
            )
            snapshot = hashlib.sha256(reading.encode()).hexdigest()[:16]
            external = ExternalUsage(max(0, meter.used), snapshot, resets_at)
            out.append(Limit(WIRE_METRICS[wire], window, min(meter.limit, MAX_LIMIT), external))
    names = ",".join(dict.fromkeys(ul.name for ul in limits.limits)) or "none"
    return Plan(f"zion:{names}", tuple(out))


class ZionPlanSource:
    """Quota plans from Zion's limits (uncached: put a cache in front of it)."""

    def __init__(self, client: ZionClient, *, max_window_seconds: int | None = None) -> None:
        self.client = client
        self.max_window_seconds = max_window_seconds

    async def plan_for_user(self, external_id: str) -> Plan | None:
        """The user's plan, None when Zion does not know the user; GovernanceUnavailable when down."""
        limits = await self.client.limits(external_id)
        if limits is None:
            return None
        return plan_from_limits(limits, max_window_seconds=self.max_window_seconds)
