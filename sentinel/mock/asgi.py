"""Raw ASGI plumbing of the mock: the request context, JSON and SSE replies, deliberate cuts.

Replies are sent straight through ASGI `send` (no Starlette Response objects, no middleware) so
per-request work stays minimal. A deliberate connection cut (the `disconnect_after` knob) is an
ASGI app returning before its last body message: uvicorn then closes the socket mid-body; so is a
stream that pinged until its client left (`pings_after`), and a body sent a byte at a time whose
client left before its end (`trickle_ms`). A connection closed before any answer
(`drop_after_ms`, see `drop`) is an interim 103 Early Hints and then the same return: an ASGI app
that returns before it began its answer gets a 500 written by uvicorn instead, and clients discard
an interim answer (they see a connection closed before its answer).
`CutLogFilter` hides the error line uvicorn logs for such a cut, and only for a cut the mock made.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from sentinel.mock.faults import Faults, WireError, directive_knobs, header_knobs, query_knobs

# Set inside the app task when the mock cuts a connection on purpose; uvicorn logs from that task.
_DELIBERATE_CUT: ContextVar[bool] = ContextVar("sentinel_mock_deliberate_cut", default=False)
_UNCOMPLETED = "ASGI callable returned without completing response."


class CutLogFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" error for the mock's own cuts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DELIBERATE_CUT.get() and record.getMessage() == _UNCOMPLETED)


def install_cut_log_filter() -> None:
    """Attach `CutLogFilter` to uvicorn's error logger once (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, CutLogFilter) for f in logger.filters):
        logger.addFilter(CutLogFilter())


@dataclass(slots=True)
class Call:
    """One request as the mock handlers see it: decoded headers, query, parsed JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    raw: bytes
    path_params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    json_error: str | None = None
    faults: Faults = field(default_factory=Faults)
    knob_error: WireError | None = None
    # The most characters of answer the request may get, all its choices together (None: any): the
    # embedded mock's bound (`text.EMBEDDED_ANSWER_CHARS`), set by its endpoint.
    answer_chars: int | None = None
    _knobs: tuple[dict[str, str], dict[str, str]] = ({}, {})

    @classmethod
    async def receive(cls, scope: Scope, receive: Receive) -> Call:
        """Read the whole request: headers (lower-case, repeats joined), query and body."""
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        call = cls(scope["method"], scope["path"], headers, query, raw, dict(scope.get("path_params", {})))
        if raw:
            try:
                call.body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                call.json_error = str(exc)
        call._knobs = (header_knobs(headers.items()), query_knobs(query))
        try:
            call.faults = Faults.resolve(*call._knobs)
        except WireError as exc:  # answered by the endpoint, in the caller's wire format
            call.knob_error = exc
        return call

    def resolve_faults(self, user_text: str) -> Faults:
        """Add the directives found in the last user text (headers and query still win)."""
        self.faults = Faults.resolve(*self._knobs, directive_knobs(user_text))
        return self.faults

    def recorded(self) -> dict[str, Any]:
        """The request as `/__mock/last_request` shows it."""
        body: Any = self.body
        if self.json_error is not None:
            body = self.raw.decode("utf-8", "replace")
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": body,
        }


Headers = list[tuple[bytes, bytes]]


def _headers(content_type: bytes, extra: dict[str, str]) -> Headers:
    out = [(b"content-type", content_type)]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    return out


class JSONReply:
    """A JSON answer; for status 200 it obeys the `malformed` and `disconnect_after` knobs, for any
    status `trickle_ms` (the body one byte at a time, until it is sent or the client leaves)."""

    __slots__ = ("body", "status", "headers")

    def __init__(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}

    content_type = b"application/json"

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)

    async def send(self, send: Send, faults: Faults, extra: dict[str, str], receive: Receive | None = None) -> None:
        data = self.encoded()
        healthy = self.status == 200
        if healthy and faults.malformed:
            data = data[: len(data) // 2]
        headers = _headers(self.content_type, {**self.headers, **extra})
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if healthy and faults.disconnect_after is not None:
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            _DELIBERATE_CUT.set(True)
            return
        if faults.trickle_ms is not None and receive is not None:
            if not await _trickle(send, receive, data, faults.trickle_ms / 1000.0):
                _DELIBERATE_CUT.set(True)  # the client left before the end
                return
            data = b""
        await send({"type": "http.response.body", "body": data})


class BytesReply(JSONReply):
    """Bytes as they are (a file's content, `application/octet-stream`), with JSONReply's knobs."""

    __slots__ = ()
    content_type = b"application/octet-stream"

    def encoded(self) -> bytes:
        return bytes(self.body)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: ``[event: NAME\\n]data: JSON\\n\\n``."""
    payload = b"data: " + orjson.dumps(data) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + payload if event else payload


DONE = b"data: [DONE]\n\n"
COMMENT_PING = b": ping\n\n"  # an SSE comment: what an OpenAI-format server may send to keep a stream open
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MIN_PING_INTERVAL = 0.02  # seconds: `pings_after` without `chunk_delay_ms` pings this often


def malformed(event: bytes) -> bytes:
    """A copy of an event whose JSON payload is cut in half (never valid JSON)."""
    start = event.index(b"data: ") + 6
    payload = event[start:].rstrip(b"\n")
    return event[: start + max(1, len(payload) // 2)] + b"\n\n"


class Endless:
    """What `endless_tool_args` sends: `event` (a tool call's argument fragment) again and again, in
    place of the events from `at` on (the rest of the stream never comes)."""

    __slots__ = ("at", "event")

    def __init__(self, at: int, event: bytes) -> None:
        self.at = at
        self.event = event


ENDLESS_FRAGMENT = "x" * (64 * 1024)  # one fragment `endless_tool_args` repeats


class SSEReply:
    """A ready list of SSE events; obeys `malformed`, `disconnect_after`, `pings_after`,
    `chunk_delay_ms`, (given an `endless`) `endless_tool_args` and (given a `failure`) `error_after`.

    ``delta_index`` is the position of the first content delta: the malformed copy goes there.
    `disconnect_after=N` sends at most N events and always stops before the terminal event;
    `pings_after=N` too, then sends only pings (Anthropic's `ping` event on a stream of named
    events, an SSE comment on others) until the client leaves — a stream without end;
    `error_after=N` too, then sends `failure` (the wire's error event) and ends the stream whole.
    """

    __slots__ = ("delta_index", "endless", "events", "failure")

    def __init__(
        self, events: list[bytes], delta_index: int, endless: Endless | None = None, failure: bytes | None = None,
    ) -> None:
        self.events = events
        self.delta_index = min(delta_index, len(events) - 1)
        self.endless = endless
        self.failure = failure

    async def send(self, send: Send, faults: Faults, extra: dict[str, str], receive: Receive | None = None) -> None:
        events = self.events
        if faults.malformed:
            events = list(events)
            events.insert(self.delta_index, malformed(events[self.delta_index]))
        limit = len(events)
        if faults.disconnect_after is not None:
            limit = min(faults.disconnect_after, len(events) - 1)
        if faults.pings_after is not None:
            limit = min(faults.pings_after, limit, len(events) - 1)
        failure = self.failure if faults.error_after is not None else None
        if failure is not None and faults.error_after is not None:
            limit = min(faults.error_after, limit, len(events) - 1)
        endless = self.endless if faults.endless_tool_args and not faults.malformed else None
        if endless is not None:
            limit = min(endless.at, limit)
        headers = _headers(b"text/event-stream; charset=utf-8", {"cache-control": "no-cache", **extra})
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        delay = faults.chunk_delay_ms / 1000.0
        for index in range(limit):
            if delay and index:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": events[index], "more_body": True})
        if endless is not None and receive is not None and limit == endless.at:
            await _repeat_until_gone(send, receive, endless.event)
        elif faults.pings_after is not None and receive is not None:
            ping = ANTHROPIC_PING if events[0].startswith(b"event:") else COMMENT_PING
            await _ping_until_gone(send, receive, ping, max(delay, MIN_PING_INTERVAL))
        if failure is not None:  # the provider's own error event ends the stream: no cut
            await send({"type": "http.response.body", "body": failure})
            return
        if limit < len(events):
            _DELIBERATE_CUT.set(True)
            return
        await send({"type": "http.response.body", "body": b""})


async def _ping_until_gone(send: Send, receive: Receive, ping: bytes, interval: float) -> None:
    """Send `ping` every `interval` seconds until the client disconnects (the request's body was read)."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        while not gone.done():
            await send({"type": "http.response.body", "body": ping, "more_body": True})
            await asyncio.wait({gone}, timeout=interval)
    finally:
        gone.cancel()


async def _repeat_until_gone(send: Send, receive: Receive, event: bytes) -> None:
    """Send `event` again and again, as fast as the client reads, until it disconnects."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        while not gone.done():
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(0)  # (lets the disconnect be read)
    finally:
        gone.cancel()


async def _trickle(send: Send, receive: Receive, data: bytes, interval: float) -> bool:
    """Send `data` one byte every `interval` seconds; False when the client left before the end."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        for index in range(len(data)):
            if gone.done():
                return False
            await send({"type": "http.response.body", "body": data[index:index + 1], "more_body": True})
            await asyncio.wait({gone}, timeout=interval)
        return not gone.done()
    finally:
        gone.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def drop(send: Send) -> None:
    """Close the connection without an answer (see the module docstring): the app returns next."""
    await send({"type": "http.response.start", "status": 103, "headers": []})
    _DELIBERATE_CUT.set(True)


Reply = JSONReply | SSEReply
