"""Which client surface a request belongs to, and the error shape and headers that surface expects.

The one place that decides it, used by the request middleware for every error it renders (the
route table's 404/405 included) and for the response headers it adds:
- `/v1/messages` and everything below it, and the legacy `/v1/complete` (never served: refused with
  404 pointing to `/v1/messages`), is Anthropic's surface: errors are
  `{"type": "error", "error": {"type", "message"}, "request_id"}` (and `error.details.error_code` where
  the refusal is one Anthropic names: `thread_unsupported_request`) with Anthropic's statuses and type
  names (`invalid_request_error` 400, `authentication_error` 401, `permission_error` 403,
  `not_found_error` 404, `request_too_large` 413, `rate_limit_error` 429, `api_error` 500/502,
  `timeout_error` 504, `overloaded_error` 529 — Sentinel's own 503s are sent as 529, as Anthropic
  does), so the official SDKs raise their own typed exceptions; every answer carries `request-id`;
- everything else keeps Sentinel's (OpenAI's) shape `{"error": {"message", "type", "param", "code", ...}}`; under
  `/admin` (the admin API and the console) it carries `Cache-Control: no-store`, as their every
  answer does (a 404 is cacheable by default: a shared cache could keep the console's "No plan
  'gold'" after the plan is created);
- a browser's request for a console page (`is_console_page`: under `/admin` but not `/admin/api`,
  accepting `text/html`, as a navigation or a form post does) is answered an HTML page in the
  console's style by the middleware's `console_page` (`ConsoleRoutes.error_page`), when the console
  is on: the route table's 404/405, the canonical-path check's 400, a 5xx. A script (`*/*`, JSON) and
  every `/admin/api/*` request keep the JSON shape.
An Anthropic client (a request carrying `anthropic-version`, which the official SDKs always send)
naming a route Sentinel does not serve (the Files API, Skills, ...: a 404 `endpoint_not_found` or
`endpoint_not_supported`) gets that 404 in Anthropic's shape too, so its SDK raises its own
`NotFoundError`; only the shape changes (the status, the message, what is checked before are the same),
and a request without the header (every OpenAI client's) is answered as before. So is every error of
`/v1/models` and below (a 401, a 404 `model_not_found`, a 405, a 429) to an Anthropic client: the
Anthropic SDK's `models.list` and `models.retrieve` ask there, and Anthropic answers them in its shape.
The surface is read from the decoded path, tolerant of extra `/`, `\\` and `.` segments, so an
encoded or malformed variant of `/v1/messages` (refused with 400 by the canonical-path check) is still
answered in Anthropic's shape.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from sentinel.api.responses import RawResponse, encode_headers, error_response
from sentinel.errors import SentinelError, UpstreamStatusError

ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_NAMES = frozenset(ANTHROPIC_TYPES.values()) | {"billing_error"}
OVERLOADED = 529


# `/v1/messages` and below (and `/v1/complete`), also when spelled with extra `/`, `\\` or `.` segments or followed by any
# character that cannot continue the name (the canonical-path check refuses those with 400).
_ANTHROPIC_PATH = re.compile(r"^[/\\.]*v1[/\\.]+(?:messages|complete)(?![A-Za-z0-9_-])")
# `/v1/models` and below (both surfaces' model list), spelled as loosely.
_MODELS_PATH = re.compile(r"^[/\\.]*v1[/\\.]+models(?![A-Za-z0-9_-])")
# `/admin` and below (the admin API and the console), spelled as loosely.
_ADMIN_PATH = re.compile(r"^[/\\.]*admin(?![A-Za-z0-9_-])")
# `/admin/api` and below (the admin API: JSON for any client), spelled as loosely.
_ADMIN_API_PATH = re.compile(r"^[/\\.]*admin[/\\.]+api(?![A-Za-z0-9_-])")
_NO_STORE = {"Cache-Control": "no-store"}
# The codes of a 404 for a route Sentinel does not serve (not for an object or a model it does not have).
UNSERVED_ROUTE = frozenset({"endpoint_not_found", "endpoint_not_supported"})
_ANTHROPIC_VERSION = b"anthropic-version"


def is_anthropic(path: str) -> bool:
    """Whether `path` (decoded) is on the Anthropic surface."""
    return ("messages" in path or "complete" in path) and _ANTHROPIC_PATH.match(path) is not None


def is_anthropic_client(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request (its ASGI headers) is an Anthropic client's: it carries `anthropic-version`."""
    return any(name == _ANTHROPIC_VERSION for name, _ in headers)


def is_console_page(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request (decoded `path`, ASGI `headers`) is a browser's for a console page: under
    `/admin` (spelled as loosely as `render_error` reads it), not the admin API, accepting `text/html`."""
    if "admin" not in path or _ADMIN_PATH.match(path) is None or _ADMIN_API_PATH.match(path) is not None:
        return False
    return any(name == b"accept" and b"text/html" in value.lower() for name, value in headers)


def anthropic_error(err: SentinelError, request_id: str | None) -> tuple[int, dict[str, Any]]:
    """(status, body) of `err` in Anthropic's shape."""
    status = err.status
    if status == 503 or (isinstance(err, UpstreamStatusError) and err.upstream_status == OVERLOADED):
        status = OVERLOADED
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if err.provider is not None and err.type in _ANTHROPIC_NAMES and not (
        err.type == "invalid_request_error" and status in ANTHROPIC_TYPES
    ):  # an Anthropic provider's own error type, relayed; OpenAI's `invalid_request_error` (its
        # 404s and 413s too) is the type Anthropic gives the status
        kind = err.type
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message}}
    code = err.details.get("error_code") if err.details else None
    if isinstance(code, str):  # Anthropic's own code for the cause, where its SDK reads it (`exc.error_code`)
        body["error"]["details"] = {"error_code": code}
    if request_id:
        body["request_id"] = request_id
    return status, body


def render_error(
    path: str, err: SentinelError, request_id: str | None = None, *, anthropic_client: bool = False
) -> RawResponse:
    """The error response for a request to `path`, in its surface's shape (`anthropic_client`: the
    request carries `anthropic-version`, so a route-not-served 404 is in Anthropic's shape anywhere,
    and every error of `/v1/models`)."""
    admin = "admin" in path and _ADMIN_PATH.match(path) is not None
    on_surface = is_anthropic(path)
    models = anthropic_client and "models" in path and _MODELS_PATH.match(path) is not None
    if not (on_surface or models) and not (anthropic_client and err.status == 404 and err.code in UNSERVED_ROUTE):
        return error_response(err, _NO_STORE if admin else None)
    status, body = anthropic_error(err, request_id)
    headers = encode_headers({**err.headers, **_NO_STORE} if admin else err.headers)
    headers.append((b"content-type", b"application/json"))
    if request_id and not on_surface:  # the surface's own answers get it from `surface_headers`
        headers.append((b"request-id", request_id.encode()))
    return RawResponse(status, orjson.dumps(body), headers)


def surface_headers(path: str, request_id: str) -> list[tuple[bytes, bytes]]:
    """Headers the surface adds to every answer (Anthropic's `request-id`)."""
    return [(b"request-id", request_id.encode())] if is_anthropic(path) else []
