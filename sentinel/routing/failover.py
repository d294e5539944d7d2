"""Retry once before the first byte: which failures count against a provider, and the retry loop.

A request whose chosen candidate fails with a provider failure (5xx, connect timeout, connection
error, provider 429, a 401, 402 or 403 refusing Sentinel's provider key or account itself: see
`UpstreamStatusError.key_refused`) is recorded against that candidate's health and, when the
router allows it (see `TierRouter.alternative`), sent once more to another healthy candidate of the
tier — unless the provider may have served it: a read timeout or a connection dropped after it was
made (the request was sent) is not retried, so that the attempt is recorded (504 or 502, its
estimated input and all the output it reserved) rather than billed twice and recorded once. A
client's own error (4xx), a 401/403 that refuses only what was asked (a model, feature or endpoint
the key may not use: a client can cause one), a 2xx answer Sentinel cannot read
(`UnreadableAnswer`: a client can cause one at will) and a read timeout after the request was sent
(the caller's request was long: a huge `max_tokens` makes a call outlast any timeout) never count
against a provider's health — else one user's slow request took a model out of service for everyone.
Nor does a 429 refusing the request itself as larger than the provider account's per-minute limit
(`provider_request_too_large`: its input plus `max_tokens`; a client picks the cap): one request took
the model out for everyone, its retry the tier's other model too (a 503 for every user of a two-model
tier), again every backoff period, for free. It was not served, so it is still
sent to another candidate when the router allows (`too_large_here`): another model may take it
(refused by every one, it counts one request: `Meter.fail`).

An Anthropic stream whose `overloaded_error` event came before any block of its answer, its opening
held back (`OverloadedAtStart`), is that 529: counted, and sent to the next candidate; with none, the
stream is relayed as it came (its opening, then the error event, counted as it ends).

A 404 saying the provider no longer serves the model (`ModelRetired`) is no provider failure either
(no backoff brings a withdrawn model back): the request goes once to another model of the tier, and
a conversation bound to the old one moves with it, under `keep` too (`TierRouter.retired`).

A connection dropped after the request was sent — before an answer (`UpstreamConnectionError` with
`sent`) or while a 2xx answer was read (`BrokenOffAnswer`) — counts only when it came within
QUICK_DROP_SECONDS of the moment the request began to be sent (its `elapsed`; the wait for a
connection and the connect included). A provider that crashed, restarted or shed the call drops it
at once. A load balancer or proxy in front of a provider that cuts a request it held too long cuts it
tens of seconds in (AWS's load balancers idle out at 60 s by default, Google Cloud's backend timeout
is 30 s, nginx's `proxy_read_timeout` 60 s, Cloudflare's 100 s; one cutting within a few seconds would
cut ordinary answers too) — and a caller can make any call last that long (a huge prompt or
`max_tokens`): counted, one user's long request put the model in backoff for everyone, and again
every backoff period. A later drop (or one not measured: `elapsed` None) is recorded as before (502,
its estimated input and all the output it reserved; never sent elsewhere) and says nothing of the
provider's health. A provider that is really down still shows it: its next calls are refused or time
out connecting, answer 5xx, or drop at once. A drop at once and a 5xx other than 503/529 are ones a
request's content can cause (a proxy resetting an oversized body, a backend's 500 for an `image_url` it
cannot fetch): they count only once a second user meets one (`client_may_cause`). One that accepts calls and then hangs until a proxy cuts
them does not — unless SENTINEL_UPSTREAM_TIMEOUT_SECONDS is below the proxy's cut: a streamed request
whose answer never began in time then counts (`UpstreamTimeout.stalled`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sentinel.errors import (
    InvalidRequest,
    RateLimited,
    SentinelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    sent_unanswered,
)
from sentinel.providers.chat import ChatProvider
from sentinel.providers.errors import (
    OVERLOADED_ERROR,
    REQUEST_TOO_LARGE,
    BrokenOffAnswer,
    ModelRetired,
    OverloadedAtStart,
    UnreadableAnswer,
)
from sentinel.routing.router import RouteChoice, TierRouter

T = TypeVar("T")

QUICK_DROP_SECONDS = 5.0  # a connection dropped this soon after sending began counts (module docstring)
# The error a provider sends inside a stream it had begun that counts against its health, as its status
# before the first byte would: Anthropic's `overloaded_error` (its 529: the provider's load, never the
# request's). Any other (an `api_error`, a broken connection) does not: a client may cause one; nor
# does an OpenAI-format server's error chunk, whose type and code are any text the server chose.
OVERLOADED_MID_STREAM = OVERLOADED_ERROR


def overloaded_mid_stream(kind: str, code: str | None) -> bool:
    """Whether a stream's error event of type (or code) `code`, from a provider of wire format `kind`,
    counts against the provider's health."""
    return kind == "anthropic" and code == OVERLOADED_MID_STREAM


def dropped_quickly(elapsed: float | None) -> bool:
    """Whether a connection dropped `elapsed` seconds after its request began to be sent was dropped
    too soon for the request's length to have caused it (see the module docstring)."""
    return elapsed is not None and elapsed < QUICK_DROP_SECONDS


def is_provider_failure(exc: SentinelError) -> bool:
    """Errors that say the provider is unhealthy (not that the request was bad, nor that it was long)."""
    if isinstance(exc, RateLimited):
        return exc.code == "provider_rate_limited"
    if isinstance(exc, UnreadableAnswer):  # a client can make an answer unreadable; not cut it off at once
        return isinstance(exc, BrokenOffAnswer) and dropped_quickly(exc.elapsed)
    if isinstance(exc, UpstreamTimeout) and exc.sent and not exc.stalled:  # a client can make a call that long
        return False
    if isinstance(exc, UpstreamConnectionError) and exc.sent:  # ... and a proxy may cut a long one
        return dropped_quickly(exc.elapsed)
    if isinstance(exc, ModelRetired):  # the model withdrawn: no backoff brings it back (`TierRouter.retired`)
        return False
    if isinstance(exc, UpstreamStatusError) and exc.code == "provider_auth_error":
        return exc.key_refused  # the provider key revoked or invalid, not a refusal of this request
    return isinstance(exc, UpstreamError)


# A provider's own load or unavailability, never a request's: counts against its health at once.
PROVIDER_LOAD_STATUSES = (503, 529)


def client_may_cause(exc: SentinelError) -> bool:
    """Whether a provider failure is one a client can cause with its request's content — a 5xx
    answer other than 503 or 529 (a backend's 500 for an `image_url` it cannot fetch, a proxy's 504
    for a long call), a connection dropped after the request was sent (a proxy resetting an
    oversized body instead of answering 413) —, which counts against the provider's health only
    when another user met one too (`ProviderHealth.record_failure`'s `caller`)."""
    if isinstance(exc, UpstreamStatusError):
        return exc.code == "provider_error" and exc.upstream_status not in PROVIDER_LOAD_STATUSES
    return isinstance(exc, BrokenOffAnswer) or (isinstance(exc, UpstreamConnectionError) and exc.sent)


def witness(exc: SentinelError, caller: str | None) -> str | None:
    """The `caller` to record a provider failure with: theirs when a client may have caused it."""
    return caller if client_may_cause(exc) else None


def too_large_here(exc: SentinelError) -> bool:
    """Whether the provider refused the request as larger than its account's per-minute limit: no
    failure of the provider's, nothing served — another candidate may take it."""
    return isinstance(exc, RateLimited) and exc.code == REQUEST_TOO_LARGE


def asked_wait(exc: SentinelError) -> float | None:
    """The seconds a provider failure's answer asked to wait (its `Retry-After`: a 429's or a 5xx's),
    which the provider's backoff lasts (see `ProviderHealth.record_failure`); None when it asked none."""
    if isinstance(exc, RateLimited | UpstreamStatusError):
        return exc.retry_after
    return None


def may_retry(exc: SentinelError) -> bool:
    """Whether a provider failure may be sent to another candidate: not when the provider may have
    served (and billed) it — a read timeout, a connection dropped after it was made, an answer cut
    off while it was read."""
    return not (sent_unanswered(exc) or isinstance(exc, UnreadableAnswer))


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """The answer, and the choice and provider that gave it (after a retry, not the first choice)."""

    result: T
    choice: RouteChoice
    provider: ChatProvider


class Failover:
    """Calls the chosen provider, retrying once on another candidate when a provider failure allows it."""

    def __init__(self, router: TierRouter, providers: dict[str, ChatProvider]) -> None:
        self.router = router
        self.providers = providers

    async def call(
        self,
        choice: RouteChoice,
        wire: dict[str, Any],
        *,
        translate: Callable[[RouteChoice], Awaitable[dict[str, Any]]],
        send: Callable[[ChatProvider, dict[str, Any], RouteChoice], Awaitable[T]],
        on_attempt: Callable[[RouteChoice], None] | None = None,
        caller: str | None = None,
    ) -> Attempt[T]:
        """`send` the translated `wire` body; on a retryable failure, translate for the alternative
        and send again (`translate` is awaited: a large request's runs in a worker thread). Raises the last failure. The session is the caller's to commit, to the
        choice that answered (`Attempt.choice`): none is written for a request no model answered.
        `caller`: the user's id, which a failure a client can cause is recorded with (`witness`)."""
        while True:
            provider = self.providers[choice.provider]
            if on_attempt is not None:
                on_attempt(choice)
            try:
                return Attempt(await send(provider, wire, choice), choice, provider)
            except SentinelError as exc:
                if isinstance(exc, ModelRetired):  # gone for good: the conversation moves off it
                    retry = await self.router.retired(choice)
                    carried = None if retry is None else await self._translated(retry, translate)
                    if retry is None or carried is None:
                        raise
                    drawn = (retry.provider, retry.model)
                    if not await self.router.moved(retry):  # (the move written once it suits the request)
                        raise
                    choice, wire = carried
                    if (choice.provider, choice.model) != drawn:  # it follows another turn's move
                        carried = await self._translated(choice, translate)
                        if carried is None:
                            raise
                        wire = carried[1]
                    continue
                if isinstance(exc, OverloadedAtStart):  # a stream overloaded before its first block
                    carried = None if choice.tried else await self.carrier(choice, translate)
                    if carried is None:  # nowhere else to go: the stream as it came (counted as it ends)
                        return Attempt(exc.relay(), choice, provider)
                    exc.drop()
                    await self.router.report(choice, ok=False, retry_after=None, caller=None)  # as its 529
                    choice, wire = carried
                    continue
                if is_provider_failure(exc):
                    await self.router.report(choice, ok=False, retry_after=asked_wait(exc), caller=witness(exc, caller))
                elif not too_large_here(exc):
                    raise
                if not may_retry(exc):
                    raise
                carried = None if choice.tried else await self.carrier(choice, translate)
                if carried is None:
                    raise
                choice, wire = carried

    async def _translated(
        self, choice: RouteChoice, translate: Callable[[RouteChoice], Awaitable[dict[str, Any]]]
    ) -> tuple[RouteChoice, dict[str, Any]] | None:
        """`choice` and the request translated for it; None when its wire format cannot carry it."""
        try:
            return choice, await translate(choice)
        except InvalidRequest:
            return None

    async def carrier(
        self, choice: RouteChoice, translate: Callable[[RouteChoice], Awaitable[dict[str, Any]]]
    ) -> tuple[RouteChoice, dict[str, Any]] | None:
        """The tier's next candidate other than `choice` (`TierRouter.alternative`) whose wire format
        can carry the request, and the request translated for it; None when there is none. A
        candidate whose translation refuses the request (InvalidRequest) is passed over: it says
        nothing of the request's validity, which the first choice accepted (or a later one will)."""
        candidate = await self.router.alternative(choice)
        while candidate is not None:
            try:
                return candidate, await translate(candidate)
            except InvalidRequest:
                candidate = await self.router.alternative(candidate)
        return None
