"""Tools for tests written as an attacker would try them.

- `raw_request`: one HTTP/1.1 request over a plain socket with the request target sent byte for
  byte (no client-side normalisation of dot segments, percent-escapes or control characters);
- `SpyUpstream`: wraps the mock upstream and records every request that reaches it, including
  paths the mock itself does not route (a request that escaped the provider's `/v1` base);
- ledger/outbox readers for a gateway's SQLite database and Redis stream: which usage records
  exist right now (a record is in the outbox before its answer completes, so no waiting);
- `openai_error`: the OpenAI error shape, asserted.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.servers import ServerThread, serving
from tests.support.waiting import wait_for  # noqa: F401  (re-exported for the gate tests)

REDIS_OUTBOX = "sentinel:usage:outbox"


# --- raw HTTP ----------------------------------------------------------------------------------
@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def raw_request(
    base_url: str, method: str, target: bytes | str, *, headers: dict[str, str] | None = None,
    body: bytes = b"", timeout: float = 15.0,
) -> RawAnswer:
    """Send `method target HTTP/1.1` exactly as given (bytes are not encoded or normalised) and read
    the whole answer (`Connection: close`)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    if answer_headers.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return RawAnswer(int(status_line.split(" ")[1]), answer_headers, payload)


@contextmanager
def read_until(
    base_url: str, target: str, marker: bytes, *, headers: dict[str, str], body: bytes, timeout: float = 15.0
) -> Iterator[bytes]:
    """POST `body` and read the answer only until `marker` has arrived, then stop reading and yield
    what was read while the connection is still open (a client that stops at `[DONE]`)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}"]
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        seen = b""
        while marker not in seen:
            data = conn.recv(65536)
            if not data:
                break
            seen += data
        yield seen


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


# --- a recording upstream ----------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: bytes
    path: str
    query: bytes
    content_type: str = ""


@dataclass
class SpyUpstream:
    """An ASGI wrapper recording every HTTP request (method, raw path, decoded path, query, Content-Type)."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)
    url: str = ""  # the root URL it is served on (set by `spying`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/__mock/"):
            raw = scope.get("raw_path") or scope["path"].encode()
            content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
            self.seen.append(Seen(scope["method"], raw, scope["path"], scope.get("query_string", b""), content_type))
        await self.app(scope, receive, send)

    def clear(self) -> None:
        self.seen.clear()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@contextmanager
def spying(app: ASGIApp) -> Iterator[tuple[ServerThread, SpyUpstream]]:
    """Serve `app` behind a SpyUpstream; yields (server, spy)."""
    spy = SpyUpstream(app)
    with serving(spy) as server:
        spy.url = server.url
        yield server, spy


# --- usage records -----------------------------------------------------------------------------
def sqlite_file(database_url: str) -> str:
    prefix = "sqlite+aiosqlite:///"
    if not database_url.startswith(prefix):
        raise ValueError(f"not a SQLite URL: {database_url}")
    return database_url[len(prefix) :]


def _query(database_url: str, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(sqlite_file(database_url), timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def ledger_rows(database_url: str, external_id: str | None = None) -> list[dict[str, Any]]:
    """Rows of `usage_ledger` (optionally one user's), oldest first."""
    sql = "SELECT * FROM usage_ledger"
    args: tuple[Any, ...] = ()
    if external_id is not None:
        sql, args = sql + " WHERE external_id = ?", (external_id,)
    return [dict(r) for r in _query(database_url, sql + " ORDER BY id", args)]


def outbox_records(database_url: str, redis_url: str | None = None) -> list[dict[str, Any]]:
    """Usage records still waiting in the outbox: the SQL table, and the Redis stream when given."""
    records = [orjson.loads(r["payload"]) for r in _query(database_url, "SELECT payload FROM usage_outbox")]
    if redis_url is not None:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            records += [orjson.loads(fields[b"r"]) for _, fields in client.xrange(REDIS_OUTBOX)]
        finally:
            client.close()
    return records


def recorded_ids(database_url: str, redis_url: str | None = None, external_id: str | None = None) -> set[str]:
    """Request ids with a usage record anywhere durable (outbox or ledger), right now. The outbox is
    read first: a record delivered meanwhile is in the ledger by the time the ledger is read."""
    ids = {
        record["request_id"] for record in outbox_records(database_url, redis_url)
        if external_id is None or record.get("external_id") == external_id
    }
    return ids | {r["request_id"] for r in ledger_rows(database_url, external_id)}


# --- answers -----------------------------------------------------------------------------------
def openai_error(body: Any) -> dict[str, Any]:
    """`body["error"]` after checking the OpenAI error shape (message, type and code strings)."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert all(isinstance(error.get(k), str) and error[k] for k in ("message", "type", "code")), body
    return error
