"""`POST /native/v1/chat/completions`: parse and validate, call the native chat service, render."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.bodies import parse_json_object
from sentinel.api.context import context
from sentinel.api.deps import Deps
from sentinel.api.replies import render
from sentinel.errors import InvalidRequest
from sentinel.native import NativeValidationError, parse_chat_request
from sentinel.services.native_chat import NativeChat


class NativeRoutes:
    """The native chat endpoint, bound to the app's dependencies and the native chat service."""

    def __init__(self, deps: Deps, service: NativeChat) -> None:
        self.deps = deps
        self.service = service

    def routes(self) -> list[Route]:
        return [Route("/native/v1/chat/completions", self.chat, methods=["POST"], name="native_chat")]

    async def chat(self, request: Request) -> Any:
        identity = await self.deps.authenticate(request)
        body = await self.deps.read_body(request)
        payload = parse_json_object(body)
        try:
            req = parse_chat_request(payload)
        except NativeValidationError as exc:
            raise InvalidRequest(exc.message, details={"param": exc.param} if exc.param else None) from None
        return render(await self.service.chat(context(request.scope), identity, req, size=len(body)))
