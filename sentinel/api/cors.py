"""CORS for browser apps (pure ASGI): SENTINEL_CORS_ORIGINS on `/v1/*` and `/native/*`.

Off unless origins are configured (the middleware is then not installed at all). For a request to an
API path with an `Origin` header:
- a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is answered
  here with 204 — no credential needed, nothing reaches the routes, nothing is metered — allowing the
  API's methods, the requested headers (e.g. `authorization`, `x-api-key`, `anthropic-version`,
  `content-type`) and caching the answer for `max_age` seconds; from any other origin it is 403
  without CORS headers, so the browser refuses the call;
- any other request is served as usual (it still needs its credential); from an allowed origin its
  answer — errors included — carries `Access-Control-Allow-Origin` and exposes Sentinel's headers
  (EXPOSED) to scripts; from another origin it carries no CORS headers, so scripts cannot read it
  (`Vary: Origin` on both, so a shared cache never hands one origin's answer to another).
Preflights are answered in front of the request middleware: no request id, not in the metrics.
Credentials mode is never allowed (no `Access-Control-Allow-Credentials`): the API authenticates with
headers, not cookies. That makes `*` (any origin) safe to offer: a page still needs a key to call.
The wrong keys a page makes its visitors' browsers send count in a second bucket of their address
(`sentinel.api.throttle.client_of`): they cannot lock the admin API or server-side clients out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sentinel.api.context import header

PREFIXES = ("/v1/", "/native/")
METHODS = "GET, POST, DELETE, OPTIONS"
EXPOSED = (
    "X-Request-Id, request-id, Retry-After, x-should-retry, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
    "X-Sentinel-Tier, X-Sentinel-Provider, X-Sentinel-Model, X-Sentinel-Estimate, "
    "Server-Timing"
)
_HEADER_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


class CorsMiddleware:
    """See the module docstring. `origins` are exact `scheme://host[:port]` values, or `["*"]`."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str], max_age: int = 600) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.max_age = str(max_age).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIXES):
            await self.app(scope, receive, send)
            return
        origin = header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin.decode("latin-1") in self.origins
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
            await self._preflight(scope, send, origin if allowed else None)
            return
        cors: list[tuple[bytes, bytes]] = [] if self.any_origin else [(b"vary", b"Origin")]
        if allowed:
            cors.append((b"access-control-allow-origin", b"*" if self.any_origin else origin))
            cors.append((b"access-control-expose-headers", EXPOSED.encode()))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, send: Send, origin: bytes | None) -> None:
        if origin is None:
            body = b"CORS: this origin is not allowed"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [
            (b"access-control-allow-origin", b"*" if self.any_origin else origin),
            (b"access-control-allow-methods", METHODS.encode()),
            (b"access-control-max-age", self.max_age),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"content-length", b"0"),
        ]
        requested = header(scope, b"access-control-request-headers")
        if requested and _HEADER_LIST.match(requested.strip()):
            headers.append((b"access-control-allow-headers", requested.strip()))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
