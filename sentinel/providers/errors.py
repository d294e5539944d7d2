"""Upstream error answers mapped to Sentinel errors: the one place that reads a provider's error body.

Both surfaces use the same mapping (documented in the README's error table):
- 401/402/403, and a 400 that refuses the key or the account (Google's `API_KEY_INVALID`, Anthropic's
  "Your credit balance is too low" and "You have reached your specified API usage limits"): Sentinel's own provider
  credentials were refused -> 502 `provider_auth_error`, with a generic message (a provider's message
  can quote the tail of the key, or name the account's credit). One that refuses the key or the
  account itself (`UpstreamStatusError.key_refused`, see `_key_refused`: a revoked or invalid key, an
  account out of credit, the host's region blocked) is a provider failure (backoff, a retry
  elsewhere) and never the user's cost; one that refuses only what was asked is not;
- 429 -> 429 `provider_rate_limited`, with the provider's Retry-After (seconds, or an HTTP date
  turned into seconds) when it sent one and a generic message: the provider's names the company's
  account (organisation id) and its limits and usage. A 429 that refuses the request itself as larger
  than the account's per-minute limit (OpenAI's "Request too large for <model> ... on tokens per min",
  `_too_large`: its input plus `max_tokens`, which no wait lets through) is 429
  `provider_request_too_large` without a Retry-After (`x-should-retry: false`): a client can send one
  at will, so it is no provider failure (see `sentinel.routing.failover`). So is Anthropic's 429 naming
  a per-minute limit ("… would exceed the rate limit for your organization … of 8,000 output tokens per
  minute") below what the request alone asks (`wanted`: its estimated input, its `max_tokens`, from
  which Anthropic reckons output tokens per minute): its message reads the same for the minute's traffic;
- other 4xx: the request was refused. The native API answers 400 (`context_length_exceeded` or
  `provider_rejected_request`); the OpenAI-compatible `/v1` surface relays the provider's status,
  type, code and message (`relay_client_errors=True`) so the official SDKs raise their own errors;
- 5xx -> 502 `provider_error`, with a generic message: a provider's failure is about its own or the
  company's account, never something the client can act on. Its Retry-After is kept
  (`UpstreamStatusError.retry_after`) for the provider's health (see `sentinel.routing.health`).
The provider's own message of a 429 or a 5xx is logged at info (`sentinel.upstream`), for operators
only; the request's error line (the middleware's) says what the client got. An error event inside a
provider's stream is a provider failure too: `stream_error` gives the error object a relayed stream's
error event carries instead of the provider's (its labels kept, its message replaced).

An error answer's body reaches this module with the provider key Sentinel sent replaced by `***`
(`observability.redaction.redact`, in `UpstreamResponse.read_error`): a provider quotes a refused key's ends, and a proxy
or an OpenAI-compatible server may echo a whole header; the key then reached the client (a relayed
4xx, "rejected the request: ...") and the logs. So is an error event of a stream (its relayed
fields, its logged message). 2xx answers are never scanned otherwise.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from sentinel.domain.numbers import parse_retry_after
from sentinel.domain.usage import Usage
from sentinel.errors import InvalidRequest, RateLimited, SentinelError, UpstreamError, UpstreamStatusError
from sentinel.observability.logging import clipped
from sentinel.observability.metrics import Metrics
from sentinel.observability.redaction import redact

log = logging.getLogger("sentinel.upstream")

_CONTEXT_HINTS = ("context_length_exceeded", "context length", "prompt is too long", "maximum context", "too many tokens")
_MAX_MESSAGE = 500


class UnreadableAnswer(UpstreamError):
    """The provider answered 2xx with a body Sentinel cannot turn into a reply (e.g. a forced tool
    call cut off by `max_tokens`, its arguments broken JSON). The provider served, and billed, the
    call: it is recorded (`usage`, when the body's own usage could be read), never given back, and
    it says nothing about the provider's health (a client can cause it at will)."""

    code = "provider_bad_response"

    def __init__(self, message: str, *, usage: Usage | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.usage = usage
        if type(self) is UnreadableAnswer:
            # The official SDKs retry a 502 (twice by default) unless told not to: each retry was
            # served, billed and charged again, for an answer as unreadable (`x-should-retry`, which
            # both SDKs read first). An answer broken off (`BrokenOffAnswer`) was not served: retried.
            self.headers.setdefault("x-should-retry", "false")


class BrokenOffAnswer(UnreadableAnswer):
    """A 2xx answer whose connection broke while its body was read: served and billed, unread. Unlike
    an answer a client can make unreadable, this is the provider's fault — when it broke soon after
    the request was sent (`elapsed`: the seconds from the start of sending to the break, None when
    not measured): then it counts toward backoff (see `sentinel.routing.failover`; still never sent
    again elsewhere: it was billed)."""

    def __init__(self, message: str, *, elapsed: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.elapsed = elapsed


class ModelRetired(UpstreamStatusError):
    """The provider answered 404 that it no longer serves the model the request named (`retired`):
    OpenAI's `model_not_found`, Anthropic's `not_found_error` "model: <name>" — the model retired or
    withdrawn for good, Sentinel's configuration out of date. Nothing was served, and it is neither
    the caller's doing (the native API names no model: the tier table does) nor the provider's health
    (a 5xx, a timeout or a 429 is that): the native API moves the conversation off the model
    (`sentinel.routing.failover`), a `/v1` alias goes on to its next target
    (`sentinel.routing.model_routes`), and the caller is never charged for it."""

    code = "provider_model_retired"

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(
            f"Provider {provider} no longer serves the model {model}; there is no other model to send the request to",
            upstream_status=404, provider=provider,
        )
        self.model = model
        # The official SDKs retry a 502 (twice by default): each retry would be the same 404 again.
        self.headers.setdefault("x-should-retry", "false")


# Anthropic's error type for its own load (its 529), sent as an `error` event inside a stream it began.
OVERLOADED_ERROR = "overloaded_error"


class OverloadedAtStart(UpstreamStatusError):
    """An Anthropic stream whose `overloaded_error` event came before any block of its answer (right
    after `message_start`, its `ping`s), read while its opening was held back
    (`sentinel.providers.anthropic.overloaded_at_start`): nothing reached the client, so the attempt
    failed as its 529 before the first byte would — a provider failure, counted against the model's
    health and sent to the next candidate or target (`sentinel.routing.failover`,
    `sentinel.routing.model_routes`), nothing settled for it. With nowhere else to go, `relay()` gives
    the caller's answer as it would have been without the hold (the stream, its held opening then the
    error event: counted as it ends); otherwise `drop()` lets its connection go."""

    def __init__(self, provider: str, relay: Callable[[], Any], drop: Callable[[], None]) -> None:
        super().__init__(f"Provider {provider} failed with HTTP 529", upstream_status=529, code="provider_error",
                         provider=provider)
        self.relay = relay
        self.drop = drop

    def count_dropped(self, count: Callable[[], None]) -> None:
        """Call `count` too when the attempt is dropped (`drop`: retried elsewhere, as its 529 would be),
        never when it is relayed (then its stream's error event is counted as it ends): its
        `upstream_errors_total{kind="provider_error"}` (`count_failure`)."""
        dropped = self.drop

        def drop() -> None:
            count()
            dropped()

        self.drop = drop


def count_failure(metrics: Metrics, provider: str, error: BaseException) -> None:
    """Count an upstream attempt that failed before its answer was relayed in
    `upstream_errors_total{provider,kind}` — the one home of that count for every surface (`/v1`,
    `/v1/messages`, translated chat, the native API), called where a surface's attempt raises, once
    per attempt, whether a failover then moves on or the error reaches the client: any
    `UpstreamError` by its code (a provider's error status — `provider_error`, `provider_auth_error`,
    `provider_model_retired` —, `upstream_timeout`, `upstream_unreachable`, an unreadable answer's
    `provider_bad_response`); an `OverloadedAtStart` as `provider_error` when it is dropped
    (`count_dropped`: retried elsewhere), never when relayed (its stream's error event is counted as it
    ends: `count_stream_failure`). Anything else (a refusal relayed to the client, a provider's 429:
    the request's or the account's limit, no failure) is not counted. Nothing runs on a success."""
    if isinstance(error, OverloadedAtStart):
        error.count_dropped(metrics.upstream_errors.labels(provider, error.code).inc)
    elif isinstance(error, UpstreamError):
        metrics.upstream_errors.labels(provider, error.code).inc()


def count_stream_failure(metrics: Metrics, provider: str, kind: str) -> None:
    """Count a relayed answer (a stream) that an upstream failure ended, once, as `kind` (`stream_…`: a
    provider's error event `stream_upstream_error`, a cut `stream_connection_closed`, one past its
    time limit `stream_time_limit`...; a relayed `/v1` stream's cut keeps its error's code, as it
    always was): the other half of `count_failure`'s one home."""
    metrics.upstream_errors.labels(provider, kind).inc()


def retired(status: int, raw: bytes, model: str) -> bool:
    """Whether an error answer says the provider no longer serves `model` (the model the request
    named): a 404 coded `model_not_found` (OpenAI) or typed `not_found_error` (Anthropic) whose message
    names `model` itself. A 404 about anything else (a file, a stored object) or one that does not name
    the model never is: nothing a request's content holds can make it one for the model it was sent to."""
    if status != 404:
        return False
    fields = _error_fields(raw)
    if fields.code != "model_not_found" and fields.type != "not_found_error":
        return False
    message = fields.message
    return any(f"{quote}{model}{end}" in message for quote, end in (("`", "`"), ("'", "'"), ('"', '"'))) or (
        message.strip() == f"model: {model}"
    )


def broken_off(provider: str, elapsed: float | None = None) -> BrokenOffAnswer:
    """The error for a 2xx answer cut off while it was read, `elapsed` seconds after the request
    began to be sent (see `BrokenOffAnswer`)."""
    return BrokenOffAnswer(f"Provider {provider} broke off its answer", usage=None, provider=provider, elapsed=elapsed)


def stream_failure(provider: str, error: object, secret: str | None = None) -> str:
    """The message that replaces the provider's in an error event of a relayed stream; logs the
    provider's (`secret`, the provider key the stream was asked with, replaced: see `redact`)."""
    log.info("provider stream failed", extra={"provider": provider, "error": clipped(redact(str(error), secret))})
    return f"Provider {provider} failed during the stream"


# What the error event of a relayed stream keeps of the provider's error object: its labels (scalars,
# clipped). The rest — the message, and any other field (OpenRouter's `metadata.raw` quotes the
# provider's own answer) — is the provider's text, which names the company's account: logged, never relayed.
_STREAM_ERROR_LABELS = ("type", "code", "param")
_MAX_LABEL = 100


def stream_error(provider: str, error: object, default_type: str | None, secret: str | None = None) -> dict[str, Any]:
    """The error object a relayed stream's error event carries instead of the provider's `error`
    (an object, or what a provider breaking the format sends: a string, a list): its labels
    (`_STREAM_ERROR_LABELS`, the provider key `secret` replaced: `redact`), `type` defaulting to
    `default_type` (None: none added), and a generic message (`stream_failure`, which logs the provider's)."""
    fields: dict[str, Any] = error if isinstance(error, dict) else {}
    kept = {key: redact(value, secret)[:_MAX_LABEL] if isinstance(value, str) else value
            for key in _STREAM_ERROR_LABELS
            if key in fields and isinstance(value := fields[key], str | int | float | bool | None)}
    if default_type is not None:
        kept.setdefault("type", default_type)
    said = fields["message"] if "message" in fields else error
    return {**kept, "message": stream_failure(provider, said, secret)}


def upstream_error(
    provider: str,
    status: int,
    raw: bytes,
    headers: list[tuple[str, str]],
    *,
    relay_client_errors: bool = False,
    client_switched: bool = False,
    wanted: tuple[int, int] | None = None,
) -> SentinelError:
    """The Sentinel error for an upstream error answer (`status` >= 400). `client_switched`: the
    request carried a client's beta switch (`UpstreamResponse.client_switched`): a 401/403 then
    refused that request, never the key itself (`key_refused`: a client could otherwise take a model
    out of service for everyone at will) — but Anthropic's 400 for the account (`_account_refused`). `wanted`: the request's (input, output) tokens — its
    estimated input and its output cap —, to tell a 429 refusing the request alone (`_too_large`)."""
    fields = _error_fields(raw)
    message, code, err_type = fields.message, fields.code, fields.type
    asked = next((v for k, v in headers if k.lower() == "retry-after"), None)
    retry_after = parse_retry_after(asked, now=time.time()) if asked is not None else None
    key_refused = _account_refused(status, fields) or (not client_switched and _key_refused(status, fields))
    if status in (401, 402, 403) or key_refused:
        refused = UpstreamStatusError(
            f"Provider {provider} rejected Sentinel's credentials (HTTP {status}); check the provider configuration",
            upstream_status=status, code="provider_auth_error", provider=provider,
        )
        refused.key_refused = key_refused
        return refused
    if status == 429:
        log.info("provider rate limited",
                 extra={"provider": provider, "upstream_status": status, "error": clipped(message)})
        if _too_large(message, wanted):
            return RateLimited(
                f"Provider {provider} refused the request as larger than its per-minute token limit allows; "
                "shorten the input or lower max_tokens", code=REQUEST_TOO_LARGE, retryable=False, provider=provider,
            )
        return RateLimited(
            f"Provider {provider} is rate limiting the gateway; retry later", code="provider_rate_limited",
            retry_after=retry_after, provider=provider,
        )
    if 400 <= status < 500:
        if relay_client_errors:
            return SentinelError(
                message, status=status, code=code or "provider_rejected_request",
                error_type=err_type or "invalid_request_error", provider=provider, param=fields.param,
            )
        if status in (400, 413, 422) and any(h in f"{message} {code}".lower() for h in _CONTEXT_HINTS):
            return InvalidRequest(f"Context too long for the selected model: {message}",
                                  code="context_length_exceeded", provider=provider)
        return InvalidRequest(f"Provider {provider} rejected the request: {message}",
                              code="provider_rejected_request", provider=provider)
    log.info("provider failed", extra={"provider": provider, "upstream_status": status, "error": clipped(message)})
    return UpstreamStatusError(
        f"Provider {provider} failed with HTTP {status}", upstream_status=status, code="provider_error",
        provider=provider, retry_after=retry_after,
    )


REQUEST_TOO_LARGE = "provider_request_too_large"


# Anthropic's 429 for its organisation's per-minute token limits: "This request would exceed the rate
# limit for your organization (<id>) of 8,000 output tokens per minute. …" — the limit it met.
_PER_MINUTE = re.compile(r"of ([\d,]{1,20}) (input|output) tokens per minute")


def _too_large(message: str, wanted: tuple[int, int] | None = None) -> bool:
    """Whether a 429's message refuses the request itself, not the traffic: OpenAI's "Request too large
    for gpt-4o in organization ... on tokens per min (TPM): Limit 30000, Requested 36278. The input or
    output tokens must be reduced ..." (its "Rate limit reached for ... Please try again in 2s" is the
    traffic's). It counts the request's input and `max_tokens`: a client makes one with a large cap.
    Anthropic's says the same for both ("… of 8,000 output tokens per minute"): the request alone is
    refused when what it `wanted` (input, output) is more than the limit named — Anthropic reckons output
    tokens per minute from `max_tokens` as a request starts, so a cap above the limit never passes (one
    user's `max_tokens: 64000` on an account allowed 8,000 a minute put the model in backoff for
    everyone, again every backoff period, for free: a 429 is given back)."""
    if message.lower().startswith("request too large"):
        return True
    found = _PER_MINUTE.search(message) if wanted is not None else None
    if wanted is None or found is None:
        return False
    digits = found.group(1).replace(",", "")
    return bool(digits) and (wanted[1] if found.group(2) == "output" else wanted[0]) > int(digits)


_SCOPE_HINTS = ("scope", "permission")  # OpenAI's restricted keys: "insufficient permissions ... Missing scopes"
# OpenAI's codes for a refusal of Sentinel's own setup: its key, or the region of the host it calls from
# ("Country, region, or territory not supported": no request of that host is served).
_KEY_CODES = frozenset({"invalid_api_key", "unsupported_country_region_territory"})
# Google's (Gemini's, its OpenAI-compatible endpoint's too) `ErrorInfo` reasons for a refusal of the key
# or its project: invalid or expired, blocked for the API, an IP or a referrer; the API off; the project
# suspended. A leaked key's 403 carries none: its message says "Your API key was reported as leaked".
_GOOGLE_KEY_REASONS = frozenset({
    "API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED", "API_KEY_IOS_APP_BLOCKED",
    "SERVICE_DISABLED", "CONSUMER_SUSPENDED", "CONSUMER_INVALID",
})
_GOOGLE_KEY_MESSAGES = ("api key", "your api key")  # at the start of the message, which a client's text never is
# Anthropic's answer for the account itself, a 400 `invalid_request_error` (it sends no 402): out of
# credit ("Your credit balance is too low to access the Anthropic API. ..."), or past the monthly spend
# limit set in its console ("You have reached your specified API usage limits. You will regain access
# on ..."); at the start of the message, which a client's text never is (its own refusals name a field).
_ANTHROPIC_ACCOUNT_MESSAGES = ("your credit balance is too low", "you have reached your specified api usage limits")


def _account_refused(status: int, fields: _ErrorFields) -> bool:
    """Whether an error answer is Anthropic's for the account itself, a 400 `invalid_request_error`
    (`_ANTHROPIC_ACCOUNT_MESSAGES`: out of credit, past its spend limit): every request is refused so
    until an operator pays, whatever beta switch a client sent (no beta makes an account run dry)."""
    return status == 400 and fields.type == "invalid_request_error" and (
        fields.message.lower().startswith(_ANTHROPIC_ACCOUNT_MESSAGES))


def _key_refused(status: int, fields: _ErrorFields) -> bool:
    """Whether an error answer refuses Sentinel's own provider key or account (revoked, invalid, out of
    credit, the host's region blocked), not this request — the operator's to fix, never the user's cost:
    - any 402 (Payment Required: the account out of credit or its billing off, OpenRouter's and other
      OpenAI-compatible providers');
    - an error typed `authentication_error` (Anthropic) or coded as in `_KEY_CODES` (OpenAI);
    - Anthropic's 400 for the account out of credit or past its spend limit (`_account_refused`);
    - a Google-shaped error (`{"error": {"code": 403, "status": "PERMISSION_DENIED", ...}}`, or a list
      of them) whose `ErrorInfo` reason is one of `_GOOGLE_KEY_REASONS` or whose message begins by
      naming the API key (a leaked key) — a 400 `API_KEY_INVALID` included;
    - else any 401 but one about the key's scopes (a restricted key may call some endpoints and not
      others: a client picks the endpoint).
    Any other 403 says no to what was asked (Anthropic's `permission_error`, OpenAI's: a model or
    feature the key may not use; Google's `PERMISSION_DENIED` for a file or tuned model; a content
    policy) — a client can cause one."""
    if not 400 <= status < 500 or status == 429:
        return False
    if status == 402 or fields.type == "authentication_error" or fields.code in _KEY_CODES:
        return True
    if _account_refused(status, fields):
        return True
    if fields.reasons & _GOOGLE_KEY_REASONS or (
        fields.google and fields.message.lower().startswith(_GOOGLE_KEY_MESSAGES)
    ):
        return True
    return status == 401 and not any(hint in fields.message.lower() for hint in _SCOPE_HINTS)


class _ErrorFields(NamedTuple):
    """What an error body says: its message, code and type (OpenAI's or Anthropic's labels; "" when
    absent), whether it is Google-shaped (a numeric `code` and a `status`) and, of a Google one, the
    `reason`s of its `details`; OpenAI's `param` (clipped; None when absent)."""

    message: str
    code: str = ""
    type: str = ""
    google: bool = False
    reasons: frozenset[str] = frozenset()
    param: str | None = None


def _error_fields(raw: bytes) -> _ErrorFields:
    """The fields of an OpenAI-, Anthropic- or Google-shaped error body (Google's may come as a list
    of one), tolerant of anything."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _ErrorFields(raw[:200].decode("utf-8", "replace").strip() or "no details")
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return _ErrorFields("no details")
    message = err.get("message")
    code, err_type, details, param = err.get("code"), err.get("type"), err.get("details"), err.get("param")
    google = isinstance(err.get("status"), str) and type(code) is int
    reasons = frozenset(
        each["reason"] for each in (details if google and isinstance(details, list) else ())
        if isinstance(each, dict) and isinstance(each.get("reason"), str)
    )
    return _ErrorFields(
        str(message)[:_MAX_MESSAGE] if message else "no details",
        code if isinstance(code, str) else "",
        err_type if isinstance(err_type, str) else "",
        google,
        reasons,
        param[:_MAX_LABEL] if isinstance(param, str) else None,
    )
