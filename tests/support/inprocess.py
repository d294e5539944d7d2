"""Requests to a started Sentinel app in-process (ASGI calls, no server, no socket), with the request
target exactly as given: `raw_path` is its bytes up to `?`, and `path` is decoded from them as
uvicorn's parsers decode it, so encoded and malformed paths arrive as an attacker would send them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from sentinel.api.dispatch import Dispatcher
from sentinel.app import SentinelApp


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names; a name given twice: its last value
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(
    app: SentinelApp, method: str, target: str | bytes, *, headers: dict[str, str] | None = None,
    body: bytes = b"", client: str = "127.0.0.1",
) -> Answer:
    """`method target` with `headers` and `body` (a Content-Length is added), answered in full."""
    raw = target.encode("latin-1") if isinstance(target, str) else target
    raw_path, _, query = raw.partition(b"?")
    sent = [(b"host", b"sentinel.test"), (b"content-length", str(len(body)).encode())]
    sent += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path, "query_string": query, "root_path": "",
        "headers": sent, "client": (client, 40000), "server": ("127.0.0.1", 8080),
    }
    pending = [body]
    done = asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        await done.wait()  # the client stays until its answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    start = messages[0]
    answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
    return Answer(start["status"], answer_headers, b"".join(m.get("body", b"") for m in messages[1:]))


def route_table(app: SentinelApp) -> list[tuple[str, frozenset[str]]]:
    """Every route of a started `app` as (path template, the methods it accepts), read from its dispatcher."""
    layer: Any = app._http
    while not isinstance(layer, Dispatcher):
        layer = layer.app
    table = [(path, frozenset(methods)) for path, methods in layer.exact.items()]
    table += [(route.path, frozenset(route.methods or ())) for route in layer.patterned]
    return table
