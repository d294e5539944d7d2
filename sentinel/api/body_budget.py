"""How many bytes of request bodies this process holds in memory at once.

`SENTINEL_MAX_IN_FLIGHT` and the per-caller share bound how many requests run, not how large
their bodies are: a few keys sending bodies just under `SENTINEL_MAX_BODY_BYTES` and holding the
last byte until the body deadline could make the process hold 1024 x 10 MiB. The bytes a request
has read are counted here while it runs (`RequestContext.body_bytes`, given back by
`RequestMiddleware` when its answer is sent); a body that would take the total past `limit` is
refused with 503 `overloaded` + `Retry-After: 1` as soon as the chunk that would cross it arrives.
Counted per process, like the in-flight limits.
"""

from __future__ import annotations

from sentinel.api.context import RequestContext
from sentinel.errors import Overloaded


class BodyBudget:
    """Request-body bytes held by this process's requests, up to `limit` in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, ctx: RequestContext, size: int) -> None:
        """Count `size` more bytes of `ctx`'s body; Overloaded (503) when they would not fit."""
        if self.held + size > self.limit:
            raise Overloaded("Too many request bodies in memory on this server; retry shortly", retry_after=1)
        self.held += size
        ctx.body_bytes += size

    def give_back(self, ctx: RequestContext) -> None:
        """The request is over: its body's bytes no longer count."""
        self.held -= ctx.body_bytes
        ctx.body_bytes = 0
