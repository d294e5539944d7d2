"""Upstreams for tests: the provider key the gateways are configured with, a gated upstream and a
scripted one.

`GatedUpstream` is an OpenAI-like chat endpoint whose answers wait until the test opens the gate:
a request is provably in flight (`arrived` counts it) for as long as the test needs, without a
latency guessed in milliseconds. `ScriptedUpstream` answers with what the test queued: what a
provider breaking its own rules might send, which the mock upstream never does, or a stream held
open until the gateway leaves it (a client that left mid-stream), or a body that keeps trickling in
until then. Serve them with
`tests.support.servers.serving`. `RawUpstream` writes an answer's bytes as they are (what no ASGI
server writes, a 101), on its own socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
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


async def read_body(receive: Any) -> bytes:
    """The whole body of the request an ASGI test app is answering."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


MiB = 1024 * 1024


class Flood:
    """Answers every request with a 200 of `pieces` MiB of `byte` (no length given), sent a MiB at a
    time, under `headers`: an upstream sending more than any answer may hold."""

    def __init__(self, pieces: int, headers: list[tuple[bytes, bytes]], byte: bytes = b" ") -> None:
        self.pieces = pieces
        self.headers = headers
        self.piece = byte * MiB  # (made once: the upstream's own bytes are not what is measured)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        for _ in range(self.pieces):
            await send({"type": "http.response.body", "body": self.piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


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


class ScriptedUpstream:
    """Answers each request, on any path and in either wire format, with the next queued answer (an
    empty queue is a 500). Bodies are written by the standard library's encoder: integers of any size."""

    def __init__(self) -> None:
        # (type, body, headers, whether the body is left open until the other side leaves, status,
        # the seconds between the bytes sent after `body` while it is left open: 0 for none)
        self._answers: deque[tuple[bytes, bytes, list[tuple[bytes, bytes]], bool, int, float]] = deque()
        self.received: list[bytes] = []  # the request bodies, as they arrived
        self.received_headers: list[dict[str, str]] = []  # and their headers (lower-case names)
        self.left = threading.Event()  # the other side left a stream held open

    def json(self, body: Any, headers: dict[str, str | bytes] | None = None, status: int = 200) -> None:
        """Queue a JSON answer (with extra response `headers`, e.g. a `Set-Cookie`; a str value is
        sent UTF-8 encoded, bytes as they are), of `status` (an error body with a 4xx)."""
        self._answers.append((b"application/json", json.dumps(body).encode(), _raw_headers(headers), False, status, 0))

    def json_bytes(self, body: bytes) -> None:
        """Queue a JSON answer written by the test (e.g. nested deeper than the standard library's
        encoder writes)."""
        self._answers.append((b"application/json", body, [], False, 200, 0))

    def typed(
        self, content_type: bytes, body: bytes, *, trickle: float = 0, headers: dict[str, str | bytes] | None = None
    ) -> None:
        """Queue a 200 answer of `content_type` with `body` as it is (an HTML page, say), with extra
        `headers` (a `Content-Encoding`, say). With `trickle` (seconds) the body does not end: one
        more byte comes every `trickle` seconds until the gateway leaves (`left`)."""
        self._answers.append((content_type, body, _raw_headers(headers), trickle > 0, 200, trickle))

    def empty(self, status: int, headers: dict[str, str | bytes] | None = None) -> None:
        """Queue an answer without a body (a 304), with `status` and `headers`."""
        self._answers.append((b"", b"", _raw_headers(headers), False, status, 0))

    def sse(self, *events: Any, headers: dict[str, str | bytes] | None = None, hold: bool = False) -> None:
        """Queue an event stream: one `data:` line per event (a str as it is, e.g. "[DONE]", else JSON).
        With `hold` the stream is not ended: it stays open until the gateway closes it (`left`)."""
        data = b"".join(
            b"data: " + (event if isinstance(event, str) else json.dumps(event)).encode() + b"\n\n"
            for event in events
        )
        self._answers.append((b"text/event-stream", data, _raw_headers(headers), hold, 200, 0))

    def drop_queued(self) -> None:
        """Drop the answers queued and not asked for (a request the gateway refused never came)."""
        self._answers.clear()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append(received)
        self.received_headers.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        content_type, body, extra, hold, status, trickle = (
            self._answers.popleft() if self._answers else (b"", b"", [], False, 500, 0)
        )
        length = [] if hold or status == 304 else [(b"content-length", str(len(body)).encode())]
        headers = [*([(b"content-type", content_type)] if content_type else []), *length, *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": hold})
        if hold:
            gone = asyncio.ensure_future(_disconnected(receive))
            while not gone.done():
                if trickle:
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.wait({gone}, timeout=trickle or None)
            self.left.set()


class RawUpstream:
    """Answers every request with `answer`, bytes written as they are on the socket (an HTTP answer no
    ASGI server writes: a 101, a malformed one), then closes. Served on its own loop in a thread;
    `url` once constructed."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self._ready = threading.Event()
        self._port = 0
        threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True).start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await asyncio.Event().wait()  # (a daemon thread: it ends with the test process)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _raw_headers(headers: dict[str, str | bytes] | None) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


class StalledOpening:
    """Answers every request with an Anthropic Messages stream that stalls right after its
    `message_start` — sending nothing, or a `ping` every `ping_every` seconds — until the test calls
    `resume()` (or `timeout` passed: `timed_out` is then set), then ends as Anthropic's streams do:
    one text block of `TEXT`, `message_delta` with OUTPUT_TOKENS, `message_stop`; or, `overloaded`, with
    Anthropic's `overloaded_error` event instead (the provider overloaded after the stall). A gateway
    that holds the opening back until the first block gives its client nothing before `resume()`."""

    INPUT_TOKENS, OUTPUT_TOKENS, TEXT = 21, 7, "after the stall"

    def __init__(self, *, ping_every: float = 0, overloaded: bool = False, timeout: float = 10.0) -> None:
        self.ping_every = ping_every
        self.overloaded = overloaded
        self.timeout = timeout
        self.resumed = threading.Event()
        self.timed_out = False
        self.arrived = 0

    def resume(self) -> None:
        self.resumed.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        model = json.loads(await read_body(receive)).get("model", "claude")
        self.arrived += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await chunk(_event("message_start", {"message": {
            "id": "msg_stalled", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.INPUT_TOKENS, "output_tokens": 1}}}))
        waited = 0.0
        step = self.ping_every or 0.02
        while not self.resumed.is_set():
            if waited >= self.timeout:
                self.timed_out = True
                break
            if self.ping_every:
                await chunk(_event("ping", {}))
            await asyncio.sleep(step)
            waited += step
        if self.overloaded:
            await chunk(_event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
        else:
            await chunk(_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
            await chunk(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": self.TEXT}}))
            await chunk(_event("content_block_stop", {"index": 0}))
            await chunk(_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": {"output_tokens": self.OUTPUT_TOKENS}}))
            await chunk(_event("message_stop", {}))
        await send({"type": "http.response.body", "body": b""})
