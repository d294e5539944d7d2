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
from sentinel.native import ChatRequest, NativeValidationError, parse_chat_request
from sentinel.native.types import schemas_remembered
from sentinel.offload import large, off_loop
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
        heavy = large(body)
        if heavy:  # parsed and validated in a worker thread (`sentinel.offload`)
            req = await off_loop(lambda: _chat_request(parse_json_object(body), body), True)
        else:  # and one with a tool schema not checked before: ~0.5 ms and up to check
            payload = parse_json_object(body)
            req = await off_loop(lambda: _chat_request(payload, body), not schemas_remembered(payload.get("tools")))
        return render(await self.service.chat(context(request.scope), identity, req, size=len(body), heavy=heavy))


def _chat_request(payload: dict[str, Any], body: bytes) -> ChatRequest:
    """The request validated (its tools' schemas checked), or InvalidRequest (400) naming the field;
    `payload` is `body` read."""
    try:
        return parse_chat_request(payload, text=body)
    except NativeValidationError as exc:
        raise InvalidRequest(exc.message, details={"param": exc.param} if exc.param else None) from None
