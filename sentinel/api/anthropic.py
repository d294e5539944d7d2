"""The Anthropic-compatible surface: `POST /v1/messages`, `POST /v1/messages/count_tokens`.

Parse, authenticate (`x-api-key` or `Authorization: Bearer`), call the Messages service, render.
Errors on these paths are rendered in Anthropic's shape by the request middleware
(`sentinel.api.surfaces`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.bodies import parse_json_body
from sentinel.api.context import context
from sentinel.api.deps import Deps
from sentinel.api.replies import render
from sentinel.services.messages import MessagesService


class AnthropicRoutes:
    """Handlers for the Messages API, bound to the app's dependencies and the Messages service."""

    def __init__(self, deps: Deps, service: MessagesService) -> None:
        self.deps = deps
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/v1/messages", self.messages, methods=["POST"], name="messages"),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"], name="count_tokens"),
        ]

    async def messages(self, request: Request) -> Any:
        identity = await self.deps.authenticate(request)
        body = await self.deps.read_body(request)
        reply = await self.service.messages(
            context(request.scope), identity, payload=await parse_json_body(body), body=body,
            headers=request.scope["headers"],
        )
        return render(reply)

    async def count_tokens(self, request: Request) -> Any:
        identity = await self.deps.authenticate(request)
        body = await self.deps.read_body(request)
        reply = await self.service.count_tokens(
            context(request.scope), identity, payload=await parse_json_body(body), body=body,
            headers=request.scope["headers"],
        )
        return render(reply)
