"""Request dispatch: exact paths through one dict lookup, parametrised paths through Starlette.

Every hot route (`/v1/chat/completions`, `/native/v1/chat/completions`, ...) has a fixed path, so
a dict beats walking Starlette's route list with a regex per route; the rest (`/v1/models/{id}`,
the `/v1/*` pass-through, `/debug/*`) still go through Starlette's Router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from sentinel.errors import MethodNotAllowed

Endpoint = Callable[[Request], Awaitable[Any]]


class Dispatcher:
    """An ASGI app routing `routes`; `default` answers paths no route matches."""

    def __init__(self, routes: list[Route], default: ASGIApp) -> None:
        self.exact: dict[str, dict[str, Endpoint]] = {}
        patterned: list[Route] = []
        for route in routes:
            if "{" in route.path:
                patterned.append(route)
                continue
            methods = self.exact.setdefault(route.path, {})
            for method in route.methods or {"GET"}:
                methods[method] = route.endpoint
        self.router = Router(routes=patterned, default=default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.exact.get(scope["path"])
        if methods is None:
            await self.router(scope, receive, send)
            return
        endpoint = methods.get(scope["method"])
        if endpoint is None:
            allowed = ", ".join(sorted(m for m in methods if m != "HEAD"))
            raise MethodNotAllowed(
                f"Method {scope['method']} not allowed on {scope['path']}", headers={"Allow": allowed}
            )
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)
