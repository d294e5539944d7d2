"""Small, fast ASGI responses: JSON bodies (orjson), error bodies, and the streaming relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from sentinel.errors import MethodNotAllowed, NotFound, SentinelError
from sentinel.observability.logging import clipped

HeaderList = list[tuple[bytes, bytes]]


def encode_headers(headers: Iterable[tuple[str, str]] | dict[str, str] | None) -> HeaderList:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]


class RawResponse:
    """A complete response with a bytes body."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: HeaderList) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = self.headers
        if self.status != 304:  # a 304's length would be the content's it stands for (RFC 9110 8.6)
            headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


NOSNIFF = (b"x-content-type-options", b"nosniff")  # a browser never reads a JSON answer as a page or script
NO_STORE = (b"cache-control", b"no-store")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> RawResponse:
    h = encode_headers(headers)
    h.append((b"content-type", b"application/json"))
    return RawResponse(status, orjson.dumps(data), h)


def operator_json(data: Any, status: int = 200, *, no_store: bool = False) -> RawResponse:
    """A JSON answer of an operator surface (admin API, ops, debug): `nosniff`, and with `no_store`
    `Cache-Control: no-store` (operator data kept out of every cache)."""
    headers = [(b"content-type", b"application/json"), NOSNIFF]
    if no_store:
        headers.append(NO_STORE)
    return RawResponse(status, orjson.dumps(data), headers)


def error_response(err: SentinelError, extra_headers: dict[str, str] | None = None) -> RawResponse:
    """The Sentinel-shape error answer (every surface but Anthropic's), with `nosniff`."""
    headers = dict(err.headers)
    if extra_headers:
        headers.update(extra_headers)
    response = json_response(err.to_dict(), err.status, headers)
    response.headers.append(NOSNIFF)
    return response


def endpoint_not_found(scope: Scope) -> NotFound:
    """The 404 for a path no route serves."""
    return NotFound(
        f"Endpoint {scope['method']} {clipped(scope['path'])} not found. API endpoints are under /v1/ and /native/",
        code="endpoint_not_found",
    )


def method_not_allowed(scope: Scope, allowed: str | None = None) -> MethodNotAllowed:
    """The 405 for a method the path's route does not serve (`allowed`: the `Allow` header)."""
    return MethodNotAllowed(f"Method {scope['method']} not allowed on {clipped(scope['path'])}",
                            headers=None if allowed is None else {"Allow": allowed})


class StreamingRelay:
    """Stream body chunks to the client as they arrive, watching for client disconnect.

    While relaying, a watcher waits for `http.disconnect`; when the client goes away the relay task
    is cancelled, so the body iterator's `finally` (which closes the upstream request and records
    usage) runs at once instead of when the next upstream chunk arrives.
    """

    def __init__(
        self,
        status: int,
        headers: HeaderList,
        body: AsyncIterator[bytes],
        on_close: Callable[[bool], Awaitable[asyncio.Future[None] | None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.on_close = on_close
        self.client_disconnected = False

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        async for chunk in self.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await asyncio.wait((relay, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                self.client_disconnected = True
                relay.cancel()
            watcher.cancel()
            try:
                await relay
            except asyncio.CancelledError:
                if not self.client_disconnected:
                    raise
        finally:
            if not relay.done():
                relay.cancel()
            watcher.cancel()
            # The relay must have stopped before the body is closed (closing a generator another task
            # is still running raises) and settled — also when this task is the one cancelled (the
            # server stopping past its shutdown deadline): the stream is then recorded, not lost.
            await asyncio.gather(relay, return_exceptions=True)
            try:
                closer = getattr(self.body, "aclose", None)
                if closer is not None:
                    await closer()
            finally:
                if self.on_close is not None:
                    read_on = await asyncio.shield(self.on_close(self.client_disconnected))
                    if read_on is not None and (ctx := scope.get("sentinel.ctx")) is not None:
                        ctx.read_on = read_on  # its caller's in-flight slot held until it is done
