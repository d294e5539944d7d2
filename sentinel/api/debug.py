"""`/debug/*`: operator views of routing state, only when SENTINEL_DEBUG is on.

- `GET /debug/sessions/{conversation_id}`: the caller's own session (conversation ids are per user; 404 when
  there is none), with the seconds its TTL has left; `GET /debug/session?conversation_id=` the same,
  for an id no path segment can hold (`a/b`, `50%`: a native `conversation_id` may be any text);
- `GET /debug/health`: the backoff table for every tier candidate.

Both need a bearer API key like `/v1` (the original left them unauthenticated). With debug off every
`/debug/...` path answers 404 `debug_disabled` to every method, before any authentication, as the
original did: no debug route is registered then but the catch-all (a registered `GET /debug/health`
made `POST /debug/health` a 405, telling the route apart from an unknown path). With debug on only
the routes above are: another method on them is 405, as on every served path (the catch-all made it a
404 on `/debug/sessions/{id}`, and not on `/debug/health`), any other path 404 `endpoint_not_found`.
"""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.bodies import path_or_query
from sentinel.api.deps import Deps
from sentinel.api.responses import RawResponse, operator_json
from sentinel.errors import InvalidRequest, NotFound, StoreUnavailable
from sentinel.observability.logging import clipped
from sentinel.routing.router import TierRouter
from sentinel.services.admin_live import candidate_views

DISABLED_MESSAGE = "Debug endpoints are disabled. Set SENTINEL_DEBUG=true to enable."


class DebugRoutes:
    """Read-only views of the router's sessions and provider health (see the module docstring)."""

    def __init__(self, deps: Deps, router: TierRouter) -> None:
        self.deps = deps
        self.router = router

    def routes(self) -> list[Route]:
        if not self.deps.settings.debug:
            rest = Route("/debug/{rest:path}", self.disabled)
            rest.methods = None  # every method (Starlette gives a function endpoint GET and HEAD): never a 405
            return [rest]
        return [
            Route("/debug/sessions/{conversation_id}", self.session, methods=["GET"]),
            Route("/debug/session", self.session, methods=["GET"]),
            Route("/debug/health", self.health, methods=["GET"]),
        ]

    async def _guard(self, request: Request) -> None:
        if not self.deps.settings.debug:
            raise NotFound(DISABLED_MESSAGE, code="debug_disabled")

    async def session(self, request: Request) -> RawResponse:
        await self._guard(request)
        identity = await self.deps.authenticate(request)
        conversation_id = path_or_query(request, "conversation_id")
        if not conversation_id:
            raise InvalidRequest("Name the conversation: ?conversation_id=", details={"param": "conversation_id"})
        sessions = self.router.sessions
        found = await sessions.get(conversation_id, identity.external_id)  # the caller's own only
        if found is None:
            raise NotFound(f"No session for conversation '{clipped(conversation_id)}'", code="session_not_found")
        try:
            ttl = await sessions.store.ttl(sessions.key(identity.external_id, conversation_id))
        except StoreUnavailable:
            ttl = None
        return operator_json({**found.view(), "ttl_remaining_seconds": ttl})

    async def health(self, request: Request) -> RawResponse:
        await self._guard(request)
        await self.deps.authenticate(request)
        views = await candidate_views(self.router.health, await self.router.tiers.table(), self.router.providers,
                                      digits=3)
        return operator_json({"store": self.deps.store.backend, "candidates": [asdict(view) for view in views]})

    async def disabled(self, request: Request) -> RawResponse:
        raise NotFound(DISABLED_MESSAGE, code="debug_disabled")
