"""The OpenAI-compatible surface `/v1/*`: parse, authenticate, call the relay, render."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.context import context
from sentinel.api.deps import Deps
from sentinel.api.replies import render
from sentinel.errors import InvalidRequest, MethodNotAllowed
from sentinel.services.relay import OpenAIRelay

METERED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
TYPED_PATHS = {*METERED, "/v1/models"}


class OpenAIRoutes:
    """Handlers for `/v1/*`, bound to the app's dependencies and the relay service."""

    def __init__(self, deps: Deps, relay: OpenAIRelay) -> None:
        self.deps = deps
        self.relay = relay

    def routes(self) -> list[Route]:
        routes = [Route(path, self.metered, methods=["POST"], name=name) for path, name in METERED.items()]
        routes += [
            Route("/v1/models", self.list_models, methods=["GET"], name="models"),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"], name="model"),
            Route(
                "/v1/{path:path}",
                self.passthrough,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                name="passthrough",
            ),
        ]
        return routes

    async def metered(self, request: Request) -> Any:
        path: str = request.scope["path"]  # not request.url: building a URL parses the Host header
        identity = await self.deps.authenticate(request)
        body = await self.deps.read_body(request)
        reply = await self.relay.metered(
            context(request.scope), identity, endpoint=METERED[path], path=path[3:], payload=parse_json_object(body),
            body=body, headers=request.scope["headers"], query=_query(request),
        )
        return render(reply)

    async def list_models(self, request: Request) -> Any:
        await self.deps.authenticate(request)
        return render(await self.relay.list_models(context(request.scope), request.scope["headers"]))

    async def get_model(self, request: Request) -> Any:
        await self.deps.authenticate(request)
        model_id: str = request.path_params["model_id"]
        return render(await self.relay.get_model(context(request.scope), model_id, request.scope["headers"]))

    async def passthrough(self, request: Request) -> Any:
        path: str = request.scope["path"]
        if path in TYPED_PATHS:
            allowed = "GET" if path == "/v1/models" else "POST"
            raise MethodNotAllowed(f"Method {request.method} not allowed on {path}", headers={"Allow": allowed})
        await self.deps.authenticate(request)
        body = await self.deps.read_body(request) if request.method not in ("GET", "HEAD") else None
        reply = await self.relay.passthrough(
            context(request.scope), request.method, path[3:], body, request.scope["headers"], _query(request)
        )
        return render(reply)


def _query(request: Request) -> list[tuple[str, str]] | None:
    return list(request.query_params.multi_items()) or None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest (400)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return payload
