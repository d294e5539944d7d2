"""Per-request facts the handlers and services fill in and the request middleware reports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from starlette.types import Scope

from sentinel.services.exchange import Exchange


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

    @classmethod
    def start(cls, request_id: str, started: float, *, client_supplied_id: bool) -> RequestContext:
        """The context of a new request."""
        usage_id = f"{request_id}~{uuid.uuid4().hex[:12]}" if client_supplied_id else request_id
        return cls(usage_id=usage_id, request_id=request_id, started=started)


def context(scope: Scope) -> RequestContext:
    """The current request's context (set by `RequestMiddleware`)."""
    ctx: RequestContext = scope["sentinel.ctx"]
    return ctx
