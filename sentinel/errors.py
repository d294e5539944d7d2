"""Sentinel's exception tree. Every error knows its HTTP status, its `type` and its `code`.

    SentinelError
    ├── ClientError                      the caller's fault (4xx)
    │   ├── InvalidRequest               400 invalid_request_error
    │   ├── PayloadTooLarge              413 invalid_request_error
    │   ├── RequestTimeout               408 invalid_request_error   (the body did not arrive in time)
    │   ├── AuthenticationError          401 authentication_error   (+ WWW-Authenticate)
    │   ├── PermissionDenied             403 permission_error
    │   ├── NotFound                     404 not_found_error
    │   ├── MethodNotAllowed             405 invalid_request_error
    │   ├── Conflict                     409 invalid_request_error   (the change conflicts with how Sentinel is set up)
    │   └── RateLimited                  429 rate_limit_error        (+ Retry-After, X-RateLimit-*)
    ├── ServiceUnavailable               503 service_unavailable     (+ Retry-After)   retryable
    │   ├── Overloaded                   503 too many requests in flight
    │   ├── StoreUnavailable             503 Redis unreachable or slow
    │   │   ├── StoreRefused             503 the command did not run (refused by Redis, or never sent): safe to send again
    │   │   ├── RevocationIncomplete     503 a key revoked in the database whose cached identity the store did not drop
    │   │   └── PlanChangeIncomplete     503 a plan change saved in the database whose users' cached plans the store did not drop
    │   └── GovernanceUnavailable        503 identity/limits source unreachable, nothing cached
    │       └── UsageBatchRefused        a usage sink refused a batch whole for its content (deliver it apart)
    ├── UpstreamError                    502 upstream_error          (provider set when known)
    │   ├── UpstreamStatusError          the upstream answered with an error status (4xx relayed as is)
    │   ├── UpstreamConnectionError      502 refused / DNS (not sent) or reset, dropped (sent)
    │   ├── UpstreamTimeout              504
    │   │   └── AnswerTimeLimit          504 an answer's body read past SENTINEL_STREAM_MAX_SECONDS, nothing relayed yet
    │   └── StreamTimeLimit              a body relayed past SENTINEL_STREAM_MAX_SECONDS (mid-answer only)
    └── InternalError                    500 server_error (the last resort; never carries a traceback)

Foreign exceptions (aiohttp, redis, SQLAlchemy) are translated into this tree once, at the boundary
that calls them; everything above that boundary only sees SentinelError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard


class SentinelError(Exception):
    """Base of every error Sentinel turns into an HTTP answer."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        provider: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
        error_type: str | None = None,
        param: str | None = None,
    ) -> None:
        if not message.isascii():
            # A message quoting a client's text may hold a lone surrogate (`"\\ud800"` read by Python's
            # json): not text any answer or log line can hold (orjson refused it, a 500). Shown escaped.
            message = message.encode("utf-8", "backslashreplace").decode()
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if error_type is not None:
            self.type = error_type
        if status is not None:
            self.status = status
        self.provider = provider
        self.headers: dict[str, str] = dict(headers or {})
        self.details = details
        named = details.get("param") if details else None
        # The request parameter the error is about: `param` (a relayed provider's own), else `details.param`.
        self.param: str | None = param if param is not None else named if isinstance(named, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The error body in OpenAI's shape, `{"error": {"message", "type", "param", "code", ...}}`:
        `param` (null when none) where the official SDKs read it (`exc.param`)."""
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.provider:
            err["provider"] = self.provider
        if self.details:
            err["details"] = self.details
        return {"error": err}


# The longest `Retry-After` an answer leaves the official SDKs to wait through before they retry (twice
# by default, on a 429 or a 5xx). The anthropic SDK sleeps for whatever it says (a day's quota: hours,
# twice, its caller's call held all the while); older openai SDKs retry at once past 60 s, refused again.
SDK_RETRY_WAIT_MAX = 60.0


def _retry_after(headers: dict[str, str], seconds: float | None, *, retryable: bool = True) -> float | None:
    """Set `Retry-After` (whole seconds, at least 1) unless already set; returns `seconds`. When no
    wait can help (`retryable=False`) or the wait is past SDK_RETRY_WAIT_MAX, also `x-should-retry:
    false`, which both official SDKs obey before anything else: the caller gets its error at once."""
    if seconds is not None:
        headers.setdefault("Retry-After", str(max(1, int(seconds + 0.999))))
    if not retryable or (seconds is not None and seconds > SDK_RETRY_WAIT_MAX):
        headers.setdefault("x-should-retry", "false")
    return seconds


class ClientError(SentinelError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(ClientError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class ClientClosedRequest(ClientError):
    """The client went away before its request body arrived (nginx's 499: nothing is sent back)."""

    status = 499
    code = "client_closed_request"


class AuthenticationError(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid authentication token", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class Conflict(ClientError):
    """A change the configuration does not allow (e.g. editing plans while Zion governs them)."""

    status = 409
    code = "conflict"


class RateLimited(ClientError):
    """`retryable=False`: no wait can help (a request larger than its limit): `x-should-retry: false`
    (`_retry_after`)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: float | None = None, retryable: bool = True, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = _retry_after(self.headers, retry_after, retryable=retryable)


class ServiceUnavailable(SentinelError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = _retry_after(self.headers, retry_after)


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class StoreRefused(StoreUnavailable):
    """The store did not run the command: Redis refused it before it wrote anything (out of memory,
    a read-only replica, a cluster redirection) or it was never sent (the circuit open, no
    connection to be had). Sent again, it runs once; a plain `StoreUnavailable` (a timeout, a
    connection lost after sending) may have run."""


class RevocationIncomplete(StoreUnavailable):
    """A key was revoked in the database, but its tombstone could not be written to the store: a
    cached identity may serve it until it expires. Revoking the key again re-sends the tombstone."""

    code = "revocation_incomplete"

    def __init__(self, message: str, *, key_id: str, external_id: str, **kw: Any) -> None:
        super().__init__(message, details={"key_id": key_id, "user": external_id, "revoked": True}, **kw)
        self.key_id = key_id
        self.external_id = external_id


class PlanChangeIncomplete(StoreUnavailable):
    """A plan change (a user's plan, a plan's limits, a plan deleted) was saved in the database, but
    its follow-up was not done: the cached plans of its users could not be dropped from the store
    (they may be enforced until they expire) or its new windows' counters seeded. `finishing`: the
    change is kept in the database and a running gateway finishes it once the store (and the
    database) answer — always so since the follow-up is written with the change, in its transaction;
    the key stays for the clients that read it. Making the change again finishes it at once (for a
    deleted plan: putting its users on the default plan again). `users`: whose cached plans were not
    dropped (the first 100 in `details`)."""

    code = "plan_change_incomplete"

    def __init__(self, message: str, *, users: Sequence[str], finishing: bool = False, **kw: Any) -> None:
        listed = list(users[:100])
        details = {"saved": True, "users": listed, "user_count": len(users), "finishing": finishing}
        super().__init__(message, details=details, **kw)
        self.users = tuple(users)
        self.finishing = finishing


class GovernanceUnavailable(ServiceUnavailable):
    """The governance source (Zion, the database) could not answer. `resend_after`: seconds before
    which the same call should not be made again — Zion's `Retry-After` (a 429, a 503), or a usage
    batch whose call timed out, which Zion may still be applying; None when nothing was asked. The
    usage deliverer honours it (`sentinel.quota.deliverer`)."""

    code = "governance_unavailable"

    def __init__(self, message: str, *, resend_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.resend_after = resend_after


class UsageBatchRefused(GovernanceUnavailable):
    """A usage sink refused a whole batch for what it holds (Zion's 400, 413 or 422: one value it
    rejects is enough), not for an outage or Sentinel's credentials. The deliverer then delivers the
    batch's records one by one (`sentinel.quota.deliverer`); anything else that meets it treats it as
    the outage it derives from (the batch retried whole)."""


class UpstreamError(SentinelError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; `upstream_status` keeps it. `retry_after`: the
    seconds the provider's `Retry-After` asked for (a 5xx's: the provider's health reads it, the
    client is not told). `key_refused`: an answer that refused Sentinel's provider key or account
    itself (revoked, invalid, out of credit, the host's region blocked: see
    `sentinel.providers.errors._key_refused`), not only the request."""

    key_refused = False

    def __init__(
        self, message: str, *, upstream_status: int, body: Any = None, retry_after: float | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.body = body
        self.retry_after = retry_after


class UpstreamConnectionError(UpstreamError):
    """The connection failed before an answer began. `sent`: the request may have reached the
    provider (the connection was made and dropped afterwards, not a failure to connect), so the
    provider may have spent on it. `elapsed`: of a sent one, the seconds from the start of sending
    to the drop (None: not measured), which tells a provider that fails at once from a cut a long
    request may have caused (see `sentinel.routing.failover`)."""

    code = "upstream_unreachable"

    def __init__(self, message: str, *, sent: bool = True, elapsed: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.sent = sent
        self.elapsed = elapsed


class UpstreamTimeout(UpstreamError):
    """No upstream byte in time. `sent`: the request may have reached the provider (a read timeout,
    not a connect timeout), so the provider may have spent on it. `stalled`: a streamed request
    whose answer never began (a provider sends a stream's headers at once, however long the answer:
    it is stuck, unlike a long non-streamed generation)."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    stalled = False

    def __init__(self, message: str, *, sent: bool = True, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.sent = sent


class AnswerTimeLimit(UpstreamTimeout):
    """An answer whose body was still being read, before anything of it was relayed, after
    `SENTINEL_STREAM_MAX_SECONDS` (`UpstreamResponse.iter_chunks`): the read timeout bounds only the
    gap between bytes, so a provider (or anything between) sending a byte now and then held the
    request, its slot and its reservation for ever. A read timeout after the request was sent, as
    far as charging and health go: the provider may have served it (charged as reserved, never sent
    again elsewhere), and a client can make a long answer (never a provider failure)."""

    code = "answer_time_limit"


class StreamTimeLimit(UpstreamError):
    """A body relayed as it arrives (a stream, a large answer or download passed through) that ran
    past `SENTINEL_STREAM_MAX_SECONDS` (`UpstreamResponse.iter_chunks`): Sentinel ends it, as it ends
    a stream whose connection broke. Raised mid-answer only (the answer began: its status line is
    gone), so the client gets an error event (or the end of the body), never this status."""

    code = "stream_time_limit"


def sent_unanswered(exc: BaseException) -> TypeGuard[UpstreamError]:
    """Whether `exc` is a request that may have reached the provider, which never answered (a read
    timeout, a connection dropped after it was made): the provider may have served and billed it, so
    it is recorded as reserved and never sent again elsewhere."""
    return isinstance(exc, (UpstreamTimeout, UpstreamConnectionError)) and exc.sent


class InternalError(SentinelError):
    status = 500
    type = "server_error"
    code = "internal_error"
