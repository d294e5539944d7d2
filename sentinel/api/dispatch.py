"""Request dispatch: the route table's exact paths by one dict lookup, parametrised paths in order.

Every hot route (`/v1/chat/completions`, `/native/v1/chat/completions`, ...) has a fixed path, so
a dict beats walking a route list with a regex per route. The matched route's path template is
what the request is reported under (`RequestContext.route`: metrics, access log), so handlers
never name their own route and an unmatched path never becomes a metric label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from sentinel.api.context import context
from sentinel.api.responses import method_not_allowed
from sentinel.errors import MethodNotAllowed, NotFound

Endpoint = Callable[[Request], Awaitable[Any]]


class Dispatcher:
    """An ASGI app serving `routes`; `not_found(scope)` builds the error for paths no route matches."""

    def __init__(self, routes: list[Route], not_found: Callable[[Scope], NotFound]) -> None:
        self.exact: dict[str, dict[str, Endpoint]] = {}
        self.patterned: list[Route] = []
        self.not_found = not_found
        for route in routes:
            if "{" in route.path:
                self.patterned.append(route)
                continue
            methods = self.exact.setdefault(route.path, {})
            for method in route.methods or {"GET", "HEAD"}:
                methods[method] = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        methods = self.exact.get(path)
        if methods is not None:
            context(scope).route = path
            endpoint = methods.get(scope["method"])
            if endpoint is None:
                raise _method_not_allowed(scope, methods)
        else:
            endpoint = self._match(scope)
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> Endpoint:
        partial: Route | None = None
        for route in self.patterned:
            match, child = route.matches(scope)
            if match is Match.FULL:
                context(scope).route = route.path
                scope.update(child)
                endpoint: Endpoint = route.endpoint
                return endpoint
            if match is Match.PARTIAL and partial is None:
                partial = route
        if partial is not None:
            context(scope).route = partial.path
            raise _method_not_allowed(scope, dict.fromkeys(partial.methods or ()))
        raise self.not_found(scope)


def _method_not_allowed(scope: Scope, methods: dict[str, Any]) -> MethodNotAllowed:
    allowed = ", ".join(sorted(m for m in methods if m != "HEAD"))
    return method_not_allowed(scope, allowed)
