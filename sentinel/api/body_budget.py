"""How many bytes of request bodies this process holds in memory at once, in all and per caller.

`SENTINEL_MAX_IN_FLIGHT` and the per-caller share bound how many requests run, not how large
their bodies are: a few keys sending bodies just under `SENTINEL_MAX_BODY_BYTES` and holding the
last byte until the body deadline could make the process hold 1024 x 10 MiB. The bytes a request
has read are counted here (`RequestContext.body_bytes`) until its answer begins — by then the
handler that held them has returned (`RequestMiddleware` gives them back then, or when the request
ends without an answer); a stream may go on holding what was parsed from them, which is not counted.
A chunk that would take the total past `limit` is refused with 503 `overloaded` + `Retry-After: 1`
as soon as it arrives; one that would take its caller's bytes past `per_caller` with 429
`too_many_in_flight` + `Retry-After: 1`, so one caller cannot hold the whole budget and refuse
everyone else's bodies (as `UserSlots` shares the in-flight slots). A caller is the authenticated
user (every body counted here is read after authentication), else its client address as the
failed-authentication throttle counts it (`client_key`; an unknown address is not counted per
caller). Counted per process, like the in-flight limits.
"""

from __future__ import annotations

from starlette.types import Scope

from sentinel.api.context import RequestContext, context
from sentinel.api.throttle import client_key
from sentinel.errors import Overloaded, RateLimited


def caller_of(scope: Scope) -> str | None:
    """Whose share a request's body is counted in: its user, else its client (see the module docstring)."""
    user = context(scope).external_id
    if user is not None:
        return "user:" + user
    client = scope.get("client")
    key = client_key(client[0]) if client else None
    return None if key is None else "client:" + key


class BodyBudget:
    """Request-body bytes held by this process's requests, up to `limit` in all and `per_caller` each."""

    def __init__(self, limit: int, per_caller: int | None = None) -> None:
        self.limit = limit
        self.per_caller = limit if per_caller is None else per_caller
        self.held = 0
        self._held_by: dict[str, int] = {}

    def take(self, ctx: RequestContext, size: int, caller: str | None) -> None:
        """Count `size` more bytes of `ctx`'s body, read for `caller` (`caller_of`): RateLimited (429)
        when they would take the caller past its share, Overloaded (503) when the total past `limit`.
        Nothing counts for nothing: a body's stream ends with an empty chunk, which for a caller that
        held nothing else left a 0-byte entry no answer gave back (one per caller, for ever)."""
        if size == 0:
            return
        mine = self._held_by.get(caller, 0) if caller is not None else 0
        if caller is not None and mine + size > self.per_caller:
            raise RateLimited(
                f"Too many request-body bytes of this caller in flight (at most {self.per_caller}); retry when one "
                "of its requests has been read", code="too_many_in_flight", retry_after=1,
            )
        if self.held + size > self.limit:
            raise Overloaded("Too many request bodies in memory on this server; retry shortly", retry_after=1)
        self.held += size
        ctx.body_bytes += size
        if caller is not None:
            self._held_by[caller] = mine + size
            ctx.body_caller = caller

    def held_by(self, caller: str) -> int:
        return self._held_by.get(caller, 0)

    def give_back(self, ctx: RequestContext) -> None:
        """The request's body is no longer held: its bytes no longer count."""
        self.held -= ctx.body_bytes
        caller = ctx.body_caller
        if caller is not None:
            left = self._held_by.get(caller, 0) - ctx.body_bytes
            if left > 0:
                self._held_by[caller] = left
            else:
                self._held_by.pop(caller, None)
        ctx.body_bytes = 0
        ctx.body_caller = None
