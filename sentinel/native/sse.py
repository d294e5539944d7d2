"""An incremental Server-Sent Events parser (the WHATWG event-stream rules), bytes in, events out.

Network reads split a stream anywhere: inside a line, between `\\r` and `\\n`, inside a multi-byte UTF-8
character. The parser keeps the unfinished line as bytes and decodes only whole lines, so every split
is harmless. Lines end in `\\n`, `\\r\\n` or `\\r`; `:` starts a comment; `data:` lines of one event are
joined with `\\n`; a blank line dispatches the event. An unterminated event at the end of the stream is
discarded, as the standard says, and reported by `SSEParser.close`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sentinel.native.errors import StreamError

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: `event` defaults to "message"; `data` lines joined with newlines."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Feed it the body's bytes as they arrive; it returns the events completed by each piece."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._max_event_bytes = max_event_bytes
        self._event_bytes = 0
        self._skip_lf = False  # the last piece ended in "\r": a leading "\n" finishes that line ending
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._pending = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk` (possibly none)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        scanned = len(self._buffer)  # the kept tail holds no line ending: scan only the new bytes
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_END.finditer(self._buffer, scanned):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                self._skip_lf = True  # maybe the first half of "\r\n"
            self._line(bytes(self._buffer[start : match.start()]), events)
            start = match.end()
        del self._buffer[:start]
        if self._event_bytes + len(self._buffer) > self._max_event_bytes:
            raise StreamError(f"SSE event larger than {self._max_event_bytes} bytes", code="parse_error")
        return events

    def close(self) -> bool:
        """End of stream. True when an unterminated event (or line) was discarded."""
        dangling = bool(self._buffer) or self._pending
        self._buffer.clear()
        self._reset()
        return dangling

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch(events)
            return
        self._event_bytes += len(raw)
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._pending = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        # any other field name is ignored, as the standard says

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry))
        self._reset()

    def _reset(self) -> None:
        self._event, self._data, self._retry, self._pending, self._event_bytes = "", [], None, False, 0
