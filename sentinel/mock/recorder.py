"""A bounded history of the requests the mock upstream received, and its `/__mock/*` routes.

Tests assert what the upstream saw (headers the gateway sent, the body it rebuilt) through
``GET /__mock/last_request[?path=/v1/chat/completions]`` or, in-process, `RequestLog.last()`.
`/__mock/*` requests are never recorded themselves.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sentinel.mock.asgi import Call


class RequestLog:
    """The last `maxlen` requests (oldest dropped first), and how many were `received` in all."""

    def __init__(self, maxlen: int = 256) -> None:
        self._calls: deque[Call] = deque(maxlen=maxlen)
        # Every request since start (`clear` too leaves it): a test that counts the requests its
        # own calls made reads this, not the history, which stops growing once full.
        self.received = 0

    def record(self, call: Call) -> None:
        """Remember one request (the Call object is kept as is; rendering happens on read)."""
        self._calls.append(call)
        self.received += 1

    def last(self, path: str | None = None) -> dict[str, Any] | None:
        """The most recent request, or the most recent one to `path`; None if there is none."""
        for call in reversed(self._calls):
            if path is None or call.path == path:
                return call.recorded()
        return None

    def all(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every remembered request (oldest first), optionally only those to `path`."""
        return [c.recorded() for c in self._calls if path is None or c.path == path]

    def clear(self) -> None:
        """Forget everything."""
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def control_routes(log: RequestLog) -> list[Route]:
    """The `/__mock/*` inspection routes bound to one RequestLog."""

    async def last_request(request: Request) -> Response:
        found = log.last(request.query_params.get("path"))
        if found is None:
            return _json({"error": {"message": "no request recorded", "type": "not_found"}}, 404)
        return _json(found)

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            log.clear()
            return _json({"cleared": True})
        return _json({"data": log.all(request.query_params.get("path"))})

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "recorded": len(log), "received": log.received})

    return [
        Route("/__mock/last_request", last_request, methods=["GET"]),
        Route("/__mock/requests", requests, methods=["GET", "DELETE"]),
        Route("/__mock/health", health, methods=["GET"]),
    ]
