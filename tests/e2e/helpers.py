"""What end-to-end tests do to a running Sentinel: provision users, call it, read the ledger.

Provisioning and ledger reads go straight to the database Sentinel uses (the same URL), through
the package's own repositories, as an operator's `sentinel keys create` / `usage show` would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import orjson
from sqlalchemy import func, select

from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageLedgerRow, UsageOutboxRow
from tests.support.accounts import create_key, set_user_plan
from tests.support.upstream import UPSTREAM_KEY
from tests.support.waiting import eventually

__all__ = ["UPSTREAM_KEY", "eventually"]  # re-exported for the e2e tests

CHAT_PATH = "/v1/chat/completions"


def sentinel_env(
    upstream: str, database_url: str, redis_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of one Sentinel process: the mock upstream, the given stores, quiet logs."""
    env = {
        "OPENAI_API_URL": upstream + "/v1",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "DATABASE_URL": database_url,
        "SENTINEL_ACCESS_LOG": "false",
        "SENTINEL_LOG_LEVEL": "warning",
        "SENTINEL_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "DOCS_API_KEY": "docs-key-for-tests",
        "DEFAULT_PLAN": "requests=100000/1d",
        "USAGE_FLUSH_INTERVAL_SECONDS": "0.1",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def new_user(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


async def provision(database_url: str, external_id: str, plan: str | None = None) -> str:
    """Create `external_id` with an API key (returned) and, given a spec, a plan of its own."""
    _, key = await create_key(database_url, external_id, "e2e")
    if plan is not None:
        await set_user_plan(database_url, external_id, plan)
    return key


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    status: int
    input_tokens: int
    output_tokens: int
    usage_source: str


async def ledger_rows(database_url: str, external_id: str) -> list[LedgerRow]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            result = await session.execute(
                select(
                    UsageLedgerRow.request_id,
                    UsageLedgerRow.status,
                    UsageLedgerRow.input_tokens,
                    UsageLedgerRow.output_tokens,
                    UsageLedgerRow.usage_source,
                ).where(UsageLedgerRow.external_id == external_id)
            )
            # The ledger key is `<client X-Request-Id>~<server nonce>`: match rows by the client's id.
            return [LedgerRow(row[0].split("~")[0], *row[1:]) for row in result.all()]
    finally:
        await engine.dispose()


async def sql_outbox_depth(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(UsageOutboxRow)) or 0)
    finally:
        await engine.dispose()


async def wait_for_rows(
    database_url: str, external_id: str, count: int, *, within: float = 20
) -> list[LedgerRow]:
    """The user's ledger rows once at least `count` arrived (or whatever is there at the deadline)."""
    rows: list[LedgerRow] = []

    async def arrived() -> bool:
        nonlocal rows
        rows = await ledger_rows(database_url, external_id)
        return len(rows) >= count

    await eventually(arrived, within=within)
    return rows


@dataclass
class Outcome:
    """What the client saw of one call."""

    status: int
    request_id: str
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens) the client received
    complete: bool = True
    error: dict[str, Any] | None = None
    seconds: float = 0.0


def client(url: str, key: str, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(20.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        **kw,
    )


def chat_body(
    text: str = "hello sentinel", *, stream: bool = False, include_usage: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


async def chat(
    http: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    url: str = "",
) -> Outcome:
    """One chat completion, read to the end; usage is taken from the body or the final chunk.

    Transport failures give status 0; a stream is `complete` only when it ended with `[DONE]`.
    """
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    try:
        async with http.stream(
            "POST", url + CHAT_PATH, json=body, headers={"X-Request-Id": request_id, **(headers or {})}
        ) as response:
            raw = await response.aread()
    except httpx.TransportError as exc:
        # No complete response (the server died or hung up): status 0, the client got nothing.
        return Outcome(
            0, request_id, error={"transport": type(exc).__name__}, seconds=time.perf_counter() - started
        )
    outcome = Outcome(response.status_code, request_id, seconds=time.perf_counter() - started)
    if response.status_code != 200:
        try:
            outcome.error = orjson.loads(raw).get("error")
        except orjson.JSONDecodeError:
            outcome.error = {"raw": raw.decode(errors="replace")}
        return outcome
    if body.get("stream"):
        outcome.complete = b"data: [DONE]" in raw
        for line in raw.decode().splitlines():
            if line.startswith("data: {"):
                usage = orjson.loads(line[6:]).get("usage")
                if usage:
                    outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"])
    else:
        usage = orjson.loads(raw)["usage"]
        outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"])
    return outcome


def statuses(outcomes: Iterable[Outcome]) -> Counter[int]:
    return Counter(o.status for o in outcomes)


def client_totals(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """requests / input / output of the complete successful responses, as the client received them."""
    served = [o for o in outcomes if o.status == 200 and o.complete]
    assert all(o.usage is not None for o in served), "a 200 response without usage"
    return {
        "requests": len(served),
        "input_tokens": sum(o.usage[0] for o in served if o.usage),
        "output_tokens": sum(o.usage[1] for o in served if o.usage),
    }


def ledger_totals(rows: Iterable[LedgerRow]) -> dict[str, int]:
    rows = list(rows)
    return {
        "requests": len(rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
    }


class RawConnection:
    """One HTTP/1.1 connection of our own (h11 over asyncio streams), so a test knows its local port
    and can tell, from /proc, which server process accepted it (tests.support.process)."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.local_port = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def open(self) -> RawConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.local_port = self._writer.get_extra_info("sockname")[1]
        self._conn = h11.Connection(h11.CLIENT)
        return self

    async def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        """Send a whole request (the response is read by `receive`)."""
        assert self._writer is not None, "open() first"
        all_headers = [("Host", f"{self.host}:{self.port}"), ("Content-Length", str(len(body))), *headers.items()]
        data = self._conn.send(h11.Request(method=method, target=path, headers=all_headers))
        data += self._conn.send(h11.Data(data=body)) + self._conn.send(h11.EndOfMessage())
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The response's status and body (status 0: the connection ended without a response)."""
        assert self._reader is not None, "open() first"
        status, body = 0, b""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.ConnectionClosed):
                return 0, b""
            elif isinstance(event, h11.EndOfMessage):
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()
                return status, body

    async def chat(self, key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Outcome:
        """One non-streaming chat completion on this connection (X-Request-Id generated)."""
        started = time.perf_counter()
        try:
            request_id = await self.send_chat(key, body, headers)
        except OSError as exc:
            return Outcome(0, "", error={"transport": type(exc).__name__})
        outcome = await self.receive_chat(request_id)
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def send_chat(self, key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        """Send a non-streaming chat completion; returns its X-Request-Id (read it with `receive_chat`)."""
        request_id = uuid.uuid4().hex
        await self.send(
            "POST",
            CHAT_PATH,
            orjson.dumps(body),
            {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "X-Request-Id": request_id,
                **(headers or {}),
            },
        )
        return request_id

    async def receive_chat(self, request_id: str) -> Outcome:
        """The outcome of the chat sent as `request_id` (status 0: no complete response)."""
        try:
            status, raw = await self.receive()
        except (OSError, h11.RemoteProtocolError) as exc:
            return Outcome(0, request_id, error={"transport": type(exc).__name__})
        outcome = Outcome(status, request_id)
        if status == 200:
            usage = orjson.loads(raw)["usage"]
            outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"])
        elif raw:
            try:
                outcome.error = orjson.loads(raw).get("error")
            except orjson.JSONDecodeError:
                outcome.error = {"raw": raw.decode(errors="replace")}
        return outcome

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` (with at least these labels) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total
