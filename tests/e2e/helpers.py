"""What end-to-end tests do to a running Sentinel: provision users, call it, read the ledger.

Provisioning and ledger reads go straight to the database Sentinel uses (the same URL), through
the package's own repositories, as an operator's `sentinel keys create` / `usage show` would.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
