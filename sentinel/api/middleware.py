"""The request middleware (pure ASGI): request id, backpressure, errors, timing, logs, metrics.

It wraps the router. For every HTTP request it:
- refuses with 400 `duplicate_header` a request sending a credential header (`Authorization`,
  `x-api-key`, `X-Docs-Key`, `X-CSRF-Token`) or `Host` on more than one line: Sentinel read the
  first line, a proxy in front may read the last, so which credential a request carried was a guess;
  and `anthropic-version` or a relayed header read as one value (`content-type`, `openai-beta`, a download's `range`, `if-range`, `if-modified-since`, `if-unmodified-since`) on
  more than one line (its lines were joined and sent on: the provider read another value than Sentinel);
  and with 400 `missing_host` an HTTP/1.1 request with no `Host` at all (RFC 9112 §3.2: HTTP/1.0 has none);
- takes `X-Request-Id` from the client (if sane, and holding no API key, configured secret or the
  request's own credential: the id is in every log line, the ledger and the provider's
  `X-Client-Request-Id`) or makes one, and
  returns it on the response;
- refuses new work with 503 + Retry-After when `max_in_flight` requests are already running (a
  503 `overloaded` is counted in `sentinel_overload_rejections_total` and logged at debug only: it
  comes at the rate of whoever fills the slots);
- renders any SentinelError (and the router's 404/405) in the shape of the request's surface
  (`sentinel.api.surfaces`; an Anthropic client's 404 for a route not served in Anthropic's), and any other exception as a 500 without a traceback in the body,
  logging each error once with the request id — a browser's request for a console page
  (`surfaces.is_console_page`) as the console's HTML page (`console_page`), when the console is on;
- adds `Server-Timing: upstream;dur=..., total;dur=...` and records latency, overhead and status
  metrics, and writes one JSON access-log line when the response is finished.
What the client sent that a log line holds (the path, an error message quoting it) is logged without
API keys or configured secrets in it (`observability.redaction.Redactor`), cut to 256 characters.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sentinel.api.body_budget import BodyBudget
from sentinel.api.context import MAX_CLIENT_REQUEST_ID, RequestContext, caller_credentials, presented
from sentinel.api.paths import check_raw_path
from sentinel.api.responses import RawResponse, endpoint_not_found, method_not_allowed
from sentinel.api.surfaces import is_anthropic_client, is_console_page, render_error, surface_headers
from sentinel.api.throttle import client_key
from sentinel.api.user_slots import UserSlots
from sentinel.domain.usage import new_request_id
from sentinel.errors import (
    ClientClosedRequest,
    InternalError,
    InvalidRequest,
    Overloaded,
    RateLimited,
    SentinelError,
)
from sentinel.observability.logging import AccessLog, request_id_var
from sentinel.observability.metrics import Metrics
from sentinel.observability.outcomes import RequestOutcomes
from sentinel.observability.redaction import SENTINEL_KEYS_ONLY, Redactor

log = logging.getLogger("sentinel.request")

_SAFE_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_CLIENT_REQUEST_ID}}}")  # fullmatch: `$` also matches before a final newline
# The probes and the scrape, never refused by the in-flight cap: these paths exactly (by prefix,
# `/healthz` or `/metrics-anything` — any unauthenticated 404 — passed the cap too).
_UNLIMITED_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})
# Request headers a request carries on one line at most (see the module docstring). `anthropic-version`
# names one version: two lines were joined (`", 2023-06-01"`, `forwardable_headers`) and sent to
# Anthropic, whose 400 for it was relayed and charged. So is every relayed header (RELAYED_REQUEST_HEADERS,
# DOWNLOAD_HEADERS) that HTTP or its provider reads as one value, not a comma list: two lines were
# joined (`application/json, text/plain`) and the provider read another value than the one Sentinel
# read (the first) — `content-type`, `openai-beta`, `range`, `if-range`, `if-modified-since`,
# `if-unmodified-since` (a date: it holds a comma). The lists stay joined (`accept`,
# `content-encoding`, `anthropic-beta`, `if-match`, `if-none-match`), and so does `user-agent`
# (one value, but a product string read by nobody: a client or proxy sending two is not refused); `content-length` sent
# twice is the HTTP parser's 400 before Sentinel sees the request. Each name has a bit, the ones nearly
# every request sends the lowest: the check keeps a small int (cached: nothing allocated per request).
_ONE_LINE_HEADERS = MappingProxyType({name: 1 << bit for bit, name in enumerate((
    b"host", b"authorization", b"x-api-key", b"content-type", b"anthropic-version",
    b"openai-beta", b"x-csrf-token", b"x-docs-key", b"range", b"if-range", b"if-modified-since",
    b"if-unmodified-since",
))})
_HOST_BIT = _ONE_LINE_HEADERS[b"host"]
# The sign-in forms read a body from a caller nobody has authenticated yet: they get their own few
# slots, so slow forms cannot fill the ones API traffic needs (`max_in_flight`), and one client (an
# address, as the failed-authentication throttle counts it) holds at most a few of those.
SIGN_IN_PATHS = frozenset({"/native/docs/signin", "/admin/signin"})
MAX_SIGN_IN_IN_FLIGHT = 32
MAX_SIGN_IN_PER_CLIENT = 4
_API_ROUTES = ("/v1/", "/native/v1/")  # the answers counted for the console's error rate
# The `method` label of `sentinel_http_requests_total`: any other method a client sends (a 405,
# refused before authentication) is "other", so made-up methods cannot multiply the series.
_METHOD_LABELS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


# The console's HTML page of an error (`ConsoleRoutes.error_page`): the error and the request id.
ConsolePage = Callable[[SentinelError, str], RawResponse]


@dataclass
class _Slots:
    """Requests in flight of one kind, up to `limit` (a Prometheus `gauge` follows them, if given)."""

    limit: int
    refusal: str
    gauge: Any = None
    held: int = 0


class RequestMiddleware:
    """See the module docstring."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_in_flight: int, access_log: AccessLog | None = None,
        outcomes: RequestOutcomes | None = None, slots: UserSlots | None = None, bodies: BodyBudget | None = None,
        redact: Redactor = SENTINEL_KEYS_ONLY, console_page: ConsolePage | None = None,
    ) -> None:
        self.app = app
        self.console_page = console_page
        # What the client sent (the path, an error message quoting it) is logged without keys in it.
        self.redact = redact
        self.slots = slots
        self.bodies = bodies
        self.outcomes = outcomes
        self.metrics = metrics
        self.requests = _Slots(max_in_flight, "Too many requests in flight; retry shortly", metrics.in_flight)
        # Sign-in requests (SIGN_IN_PATHS) are not counted in `requests`: they have slots of their own.
        self.sign_ins = _Slots(MAX_SIGN_IN_IN_FLIGHT, "Too many sign-ins in flight; retry shortly")
        self._sign_ins_of: dict[str, int] = {}  # client (`client_key`) -> its sign-ins in flight
        self.access_log = access_log
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, supplied = _request_id(scope, self.redact)
        ctx = RequestContext.start(rid, time.perf_counter(), client_supplied_id=supplied)
        scope["sentinel.ctx"] = ctx
        token = request_id_var.set(rid)
        path: str = scope["path"]
        started_response = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                if ctx.body_bytes and self.bodies is not None:
                    # The handler that held the body has returned its answer (a stream lasts long after).
                    self.bodies.give_back(ctx)
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.extend(surface_headers(path, rid))
                for name, value in ctx.headers:
                    headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
                total_ms = (time.perf_counter() - ctx.started) * 1000
                timing = f"total;dur={total_ms:.2f}"
                if ctx.upstream_status is not None:
                    timing = f"upstream;dur={ctx.upstream_seconds * 1000:.2f}, " + timing
                headers.append((b"server-timing", timing.encode()))
                message["headers"] = headers
            await send(message)

        try:
            check_raw_path(scope.get("raw_path") or path.encode())
            _check_one_line_headers(scope)
            if path in _UNLIMITED_PATHS:
                await self.app(scope, receive, send_wrapper)
            elif path in SIGN_IN_PATHS:
                await self._sign_in(scope, receive, send_wrapper)
            else:
                await self._in_slot(self.requests, scope, receive, send_wrapper)
        except Exception as exc:  # the one last-resort handler
            err = _as_sentinel_error(exc, scope)
            try:
                if err.status >= 500 and not isinstance(exc, SentinelError | HTTPException):
                    log.error("unhandled error", exc_info=exc, extra={"path": self._logged(path, ctx, scope)})
                else:
                    level = logging.WARNING if err.status >= 500 else logging.INFO
                    if isinstance(err, Overloaded):  # counted, not a warning: see the module docstring
                        self.metrics.rejected_overload.inc()
                        level = logging.DEBUG
                    log.log(
                        level,
                        "request failed",
                        extra={
                            "status": err.status, "code": self.redact.clipped(err.code),
                            "error": self._logged(err.message, ctx, scope), "path": self._logged(path, ctx, scope),
                        },
                    )
                _drop_tracebacks(exc)  # logged: the frames it came through (a body) are not needed to answer
                if not started_response:
                    await self._render(err, scope, rid)(scope, receive, send_wrapper)
            finally:
                # `err` is often `exc` itself, whose traceback holds this frame: kept in a local, a
                # reference cycle that kept every frame the error came through (a refused body's
                # chunks, the handler's body and payload) until a full collection, which a served
                # process runs rarely (`SentinelApp.startup`). `exc` Python unbinds itself.
                del err
        finally:
            if ctx.slot is not None and self.slots is not None:
                self._give_back_slot(self.slots, ctx.slot, ctx.read_on)
            if ctx.body_bytes and self.bodies is not None:
                self.bodies.give_back(ctx)
            self._observe(scope, ctx)
            request_id_var.reset(token)

    def _render(self, err: SentinelError, scope: Scope, rid: str) -> RawResponse:
        """The answer of `err`: the console's page for a browser's console request, else the surface's shape."""
        path: str = scope["path"]
        if self.console_page is not None and is_console_page(path, scope["headers"]):
            return self.console_page(err, rid)
        return render_error(path, err, rid, anthropic_client=is_anthropic_client(scope["headers"]))

    @staticmethod
    def _give_back_slot(slots: UserSlots, user: str, read_on: asyncio.Future[None] | None) -> None:
        """`user`'s in-flight slot given back — once `read_on` is done when the request's work goes on
        after its answer (a hidden-output stream its client left, read on for its usage, holds an
        upstream connection as the stream did: it counts as one of its caller's requests in flight)."""
        if read_on is None or read_on.done():
            slots.release(user)
        else:
            read_on.add_done_callback(lambda _: slots.release(user))

    async def _sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A sign-in, in one of `sign_ins`: 429 `too_many_in_flight` when its client already has
        MAX_SIGN_IN_PER_CLIENT in flight (a client whose address is unknown is not counted)."""
        client = scope.get("client")
        key = client_key(client[0]) if client else None
        if key is None:
            await self._in_slot(self.sign_ins, scope, receive, send)
            return
        held = self._sign_ins_of.get(key, 0)
        if held >= MAX_SIGN_IN_PER_CLIENT:
            raise RateLimited(
                f"Too many sign-ins from this address in flight (at most {MAX_SIGN_IN_PER_CLIENT}); retry when one "
                "has finished", code="too_many_in_flight", retry_after=1,
            )
        self._sign_ins_of[key] = held + 1
        try:
            await self._in_slot(self.sign_ins, scope, receive, send)
        finally:
            left = self._sign_ins_of[key] - 1
            if left:
                self._sign_ins_of[key] = left
            else:
                del self._sign_ins_of[key]

    async def _in_slot(self, slots: _Slots, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, in one of `slots` (503 Overloaded when none is free)."""
        if slots.held >= slots.limit:
            raise Overloaded(slots.refusal, retry_after=1)
        slots.held += 1
        if slots.gauge is not None:
            slots.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            slots.held -= 1
            if slots.gauge is not None:
                slots.gauge.dec()

    def _logged(self, text: str, ctx: RequestContext, scope: Scope) -> str:
        """What the client sent (its path, an error message quoting it) as logged: keys, JWTs and the
        configured secrets taken out (`redact`), and the caller's own credentials (`caller_credentials`)."""
        return self.redact.clipped(text, also=caller_credentials(ctx, scope))

    def _observe(self, scope: Scope, ctx: RequestContext) -> None:
        elapsed = time.perf_counter() - ctx.started
        method = _METHOD_LABELS.get(scope["method"], "other")
        key = (ctx.route, method, ctx.status)
        children = self._children.get(key)
        if children is None:
            # prometheus_client's labels() lookup is slow on the hot path: keep the children.
            m = self.metrics
            children = (
                m.requests.labels(ctx.route, method, str(ctx.status)),
                m.request_duration.labels(ctx.route),
                m.overhead.labels(ctx.route),
            )
            if len(self._children) < 10_000:
                self._children[key] = children
        m = self.metrics
        m.add(children[0])
        m.observe(children[1], elapsed)
        if self.outcomes is not None and ctx.route.startswith(_API_ROUTES):
            self.outcomes.record(ctx.status)
        if ctx.upstream_status is not None:
            m.observe(children[2], max(0.0, elapsed - ctx.upstream_seconds))
        if self.access_log is not None:
            extra: dict[str, Any] = {
                "method": scope["method"],
                "path": self._logged(scope["path"], ctx, scope),
                "route": ctx.route,
                "status": ctx.status,
                "latency_ms": round(elapsed * 1000, 3),
            }
            if ctx.upstream_status is not None:
                extra["upstream_status"] = ctx.upstream_status
                extra["upstream_ms"] = round(ctx.upstream_seconds * 1000, 3)
            if ctx.external_id is not None:
                extra["user"] = ctx.external_id
            self.access_log.record(ctx.request_id, extra)


def _request_id(scope: Scope, redact: Redactor = SENTINEL_KEYS_ONLY) -> tuple[str, bool]:
    """The client's X-Request-Id when it is sane (True), else a new one (False). Sane: 1 to
    MAX_CLIENT_REQUEST_ID (115) characters of `A-Z a-z 0-9 . _ : -`, so its ledger key fits, and
    nothing `redact` would take out (a Sentinel API key or a JWT is such text: a client that sent its
    key as its request id had it written unredacted in every log line of the request, in the ledger,
    and sent to the provider as `X-Client-Request-Id`), nor the credential the request presents
    (`presented`: a Zion token has no shape the redaction knows, and went out so)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.fullmatch(candidate) and redact(candidate, also=presented(scope)) == candidate:
                return candidate, True
            break
    return new_request_id(), False


def _check_one_line_headers(scope: Scope) -> None:
    """InvalidRequest (400 `duplicate_header`) when a header of _ONE_LINE_HEADERS comes on two lines,
    (400 `missing_host`) when an HTTP/1.1 request has no Host: RFC 9112 §3.2 asks a server to refuse it
    (the parser took it; an HTTP/1.0 request may have none)."""
    seen = 0  # the bits of the names met so far
    for name, _ in scope["headers"]:
        bit = _ONE_LINE_HEADERS.get(name)
        if bit is not None:
            if seen & bit:
                raise InvalidRequest(
                    f"The request has more than one {name.decode()} header: send exactly one", code="duplicate_header"
                )
            seen |= bit
    if not seen & _HOST_BIT and scope.get("http_version") == "1.1":
        raise InvalidRequest("An HTTP/1.1 request must have a Host header", code="missing_host")


def _drop_tracebacks(exc: BaseException) -> None:
    """Let go of the frames `exc` and the exceptions it was raised from came through: they hold what
    those frames held (a request's body, its payload) while the error is answered."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        item.__traceback__ = None
        stack += (item.__cause__, item.__context__)


def _as_sentinel_error(exc: Exception, scope: Scope) -> SentinelError:
    if isinstance(exc, SentinelError):
        return exc
    if isinstance(exc, ClientDisconnect):  # gone mid-body: nothing to answer, nothing to alarm about
        return ClientClosedRequest("The client closed the connection before its request body arrived")
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return endpoint_not_found(scope)
        if exc.status_code == 405:
            return method_not_allowed(scope, (exc.headers or {}).get("Allow"))
        return SentinelError(str(exc.detail), status=exc.status_code, code="http_error")
    return InternalError("Internal server error")
