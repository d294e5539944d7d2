"""Structured JSON logs, one object per line, carrying the current request id.

The request id lives in a ContextVar set by the request middleware, so every log line emitted
while serving a request (ours or a library's) carries it without being passed around.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("sentinel_request_id", default=None)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a LogRecord as one JSON object; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            data["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                data[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            data["exc"] = self.formatException(record.exc_info)
        return visible(orjson.dumps(data, default=str)).decode()


def visible(line: bytes) -> bytes:
    """A JSON line (orjson's: C0 controls escaped already) with every other character that is not
    printable written as a JSON escape: DEL, the C1 controls (CSI U+009B and OSC U+009D start escape
    sequences in VTE terminals and GNU screen), bidi overrides and other format characters, line
    separators. A client's path or a provider's message then reaches an operator's terminal or log
    viewer as text, never as a command or reordered; the line decodes to the same values."""
    if line.isascii() and b"\x7f" not in line:  # the common case, in C
        return line
    text = line.decode()
    if text.isprintable():
        return line
    return printable(text).encode()


def printable(text: str, keep: str = "") -> str:
    """`text` with every character that is not printable (C0 and C1 controls, DEL, bidi overrides and
    other format characters, line separators) but those in `keep` written as a `\\uXXXX` escape: text
    from a client or a provider shown on an operator's terminal (`sentinel usage show`, the usage
    CSV) reads as text, never as a command or reordered."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond the BMP as a surrogate pair
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


MAX_LOGGED_CHARS = 256


def clipped(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` cut to `limit` characters (marked with "…"): what a client sends (a path, an error
    message quoting it) never makes a log line larger than this, whatever its length."""
    return text if len(text) <= limit else text[:limit] + "…"


REPEAT_INTERVAL = 60.0


@dataclass
class _Seen:
    written: float  # when the message was last written
    suppressed: int = 0  # how many times it came since, unwritten


class Repeated:
    """`logger`'s recurring messages — an outage's, met by every request — written the first time,
    then at most once per `interval` seconds: the occurrences in between are counted, and the next
    line written says how many it stands for (`suppressed`). At 2,000 requests/s an outage is one
    line a minute per message, not thousands a second, when operators need readable logs.

    A message is its template (`msg`, before `%` formatting) and its `key` (what fails, when one
    template speaks of several: a backend, a source, so that a second one's outage is not hidden in
    the first one's count): the arguments and `extra` may differ between occurrences (those of the
    occurrence written are written); so `msg` and `key` must come from a small fixed set, never a
    string with values formatted in, or each value would be a message of its own (and kept forever).
    """

    def __init__(
        self, logger: logging.Logger, *, interval: float = REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def warning(
        self, msg: str, *args: object, extra: Mapping[str, object] | None = None, key: str = ""
    ) -> bool:
        """`log` at WARNING."""
        return self._log(logging.WARNING, msg, args, extra, key)

    def log(
        self, level: int, msg: str, *args: object, extra: Mapping[str, object] | None = None, key: str = ""
    ) -> bool:
        """Write `msg % args` unless (`msg`, `key`) was written less than `interval` seconds ago (then
        count it); whether it was written."""
        return self._log(level, msg, args, extra, key)

    def _log(
        self, level: int, msg: str, args: tuple[object, ...], extra: Mapping[str, object] | None, key: str
    ) -> bool:
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        seen = self._seen.get((msg, key))
        if seen is not None and now - seen.written < self.interval:
            seen.suppressed += 1
            return False
        fields = dict(extra or {})
        if seen is not None and seen.suppressed:
            fields["suppressed"] = seen.suppressed
        self._seen[(msg, key)] = _Seen(now)
        self.logger.log(level, msg, *args, extra=fields, stacklevel=3)  # the line of our caller's call
        return True

    def forget(self, msg: str, key: str = "") -> int | None:
        """End (`msg`, `key`)'s repetition (what it reported is over): its next occurrence is written
        at once. How many occurrences went unwritten since it last was; None when it had not been written."""
        seen = self._seen.pop((msg, key), None)
        return None if seen is None else seen.suppressed


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's output to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our own access log replaces uvicorn's (it has the request id, route and upstream status).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Migrations at start-up are routine: their step-by-step lines would bury the start-up banner.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # aiosqlite (the SQLite driver) writes two debug lines per database call, each with the statement
    # and its parameters: an API key's hash and prefix at every lookup, users' ids and emails.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))


class AccessLog:
    """The access log: one JSON line per request, in the format of every other log line.

    Built without the logging machinery (a LogRecord and a formatter per request cost more than the
    rest of the line) and written to `stream` in batches: at most `interval` seconds after the
    request, when `max_pending` lines wait, and at shutdown. A crash can lose the last `interval`
    seconds of access lines (never a usage record: those are stored before the response ends).
    After `stop` each line is written at once: a request the server cancelled past its shutdown
    deadline ends after the last batch was written.
    """

    def __init__(self, stream: IO[bytes], *, interval: float = 0.2, max_pending: int = 256) -> None:
        self.stream = stream
        self.interval = interval
        self.max_pending = max_pending
        self._lines: list[bytes] = []
        self._second = -1
        self._stamp = ""
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def record(self, request_id: str, fields: dict[str, Any]) -> None:
        """Queue one line: `fields` (method, path, route, status, latency, ...) after the usual keys."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        data = {
            "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info", "logger": "sentinel.access",
            "msg": "request", "request_id": request_id, **fields,
        }
        self._lines.append(visible(orjson.dumps(data, default=str)))
        if self._stopped or len(self._lines) >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        """Write every queued line now."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail requests
            pass

    def start(self) -> None:
        """Flush every `interval` seconds in the running loop."""
        self._stopped = False
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    async def stop(self) -> None:
        """Stop the periodic flush and write what is left; lines recorded later are written at once."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


def access_log_wanted() -> bool:
    """Whether the configured log level lets access lines through (INFO or lower)."""
    return logging.getLogger("sentinel.access").isEnabledFor(logging.INFO)
