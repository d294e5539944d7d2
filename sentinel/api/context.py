"""Per-request facts the handlers and services fill in and the request middleware reports."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from starlette.types import Scope

from sentinel.domain.usage import MAX_REQUEST_ID
from sentinel.services.exchange import Exchange

_NONCE_HEX = 12
# The longest X-Request-Id taken from a client: `<id>~<nonce>` must fit the ledger's request_id.
MAX_CLIENT_REQUEST_ID = MAX_REQUEST_ID - 1 - _NONCE_HEX


@dataclass
class RequestContext(Exchange):
    """One request as the middleware sees it: the service-facing `Exchange` plus transport facts.

    `usage_id` (the ledger key) is never client-controlled alone: with a client-supplied
    X-Request-Id it is `<client id>~<server nonce>`, so a client reusing an id cannot make two
    requests count once. `route` is the matched route's path template ("unmatched" otherwise).
    """

    request_id: str = ""
    started: float = 0.0
    route: str = "unmatched"
    status: int = 0
    client_address: str | None = field(default=None, repr=False)
    slot: str | None = None  # whose in-flight slot this request holds (`UserSlots`), given back at its end
    # What goes on for the request after its answer (a stream its client left, read on for its usage:
    # `StreamReply.on_close`): its `slot` is given back only once that is done.
    read_on: asyncio.Future[None] | None = field(default=None, repr=False)
    body_bytes: int = 0  # of its body read so far, counted in the process's `BodyBudget` until its answer begins
    body_caller: str | None = None  # whose share of the `BodyBudget` they are counted in
    # The credential the caller presented (`Deps.authenticate`), taken out of what is logged of the
    # request (`RequestMiddleware`): a Zion token has no shape the log redaction knows.
    credential: str | None = field(default=None, repr=False)

    @classmethod
    def start(cls, request_id: str, started: float, *, client_supplied_id: bool) -> RequestContext:
        """The context of a new request."""
        usage_id = f"{request_id}~{uuid.uuid4().hex[:_NONCE_HEX]}" if client_supplied_id else request_id
        return cls(usage_id=usage_id, request_id=request_id, started=started)


def context(scope: Scope) -> RequestContext:
    """The current request's context (set by `RequestMiddleware`)."""
    ctx: RequestContext = scope["sentinel.ctx"]
    return ctx


def caller_credentials(ctx: RequestContext, scope: Scope) -> tuple[str, ...]:
    """The caller's own credentials, to be taken out (`Redactor(text, also=...)`) of what is logged and
    traced of its request (its path, an error message quoting it): a Zion token, put in the path by
    its client, has no shape the redaction knows. The one it was authenticated with; none for a
    request served unauthenticated (a public route: what it was sent is not echoed); else (refused
    before authentication: a path no route serves) each one its headers present (`presented`)."""
    if ctx.credential is not None:
        return (ctx.credential,)
    if 200 <= ctx.status < 400:
        return ()
    return presented(scope)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of the request's first `name` header (lower-case), None without one: what
    `request.headers.get` gives (decoded, latin-1), without the KeyError it raises and catches for a
    header not sent, and without building the request's `Headers`."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def presented(scope: Scope) -> tuple[str, ...]:
    """The credentials a request's headers present, however malformed (`Authorization`'s value after
    its scheme, `x-api-key`'s)."""
    found = []
    for name, value in scope["headers"]:
        if name in (b"authorization", b"x-api-key"):
            text = value.decode("latin-1").strip()
            found.append(text.split(None, 1)[-1].strip() if name == b"authorization" and " " in text else text)
    return tuple(found)
