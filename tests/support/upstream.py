"""Upstreams for tests: the provider key the gateways are configured with, and a gated upstream.

`GatedUpstream` is an OpenAI-like chat endpoint whose answers wait until the test opens the gate:
a request is provably in flight (`arrived` counts it) for as long as the test needs, without a
latency guessed in milliseconds. Serve it with `tests.support.servers.serving`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson

UPSTREAM_KEY = "sk-upstream-secret-0123456789"

_COMPLETION = {
    "id": "chatcmpl-gated",
    "object": "chat.completion",
    "created": 1732000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "let through"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


async def lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan conversation (startup, shutdown) for a bare ASGI test app."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


class GatedUpstream:
    """Answers every request with one chat completion, once `open()` was called (or `timeout` passed)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.gate = threading.Event()
        self.timeout = timeout
        self.arrived = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self.gate.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        with self._lock:
            self.arrived += 1
        await asyncio.to_thread(self.gate.wait, self.timeout)
        body = orjson.dumps(_COMPLETION)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
