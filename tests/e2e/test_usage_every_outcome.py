"""Exactly one usage record per served request, and none (nor any quota) for unserved ones.

Sentinel runs as a real process; every call carries its own X-Request-Id, which becomes the
ledger's request id, so each outcome's row (or its absence) is checked one by one. Runs on the
in-memory store with SQLite and on Redis with PostgreSQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    CHAT_PATH,
    chat,
    chat_body,
    client,
    new_user,
    provision,
    sentinel_env,
    sql_outbox_depth,
    wait_for_rows,
)


@dataclass
class Backend:
    database_url: str
    redis_url: str | None


@pytest.fixture(
    params=["memory+sqlite", pytest.param("redis+postgres", marks=[pytest.mark.redis, pytest.mark.postgres])]
)
def backend(request: pytest.FixtureRequest, sqlite_url: str, processes: Processes) -> Backend:
    if request.param == "memory+sqlite":
        return Backend(sqlite_url, None)
    pg_url: str = request.getfixturevalue("pg_url")
    return Backend(pg_url, processes.redis().url)


async def disconnect_mid_stream(http: httpx.AsyncClient, request_id: str) -> int:
    """Read two SSE lines of a slow stream, then hang up; returns how many lines were read."""
    body = chat_body("please stream this slowly", stream=True)
    headers = {"X-Request-Id": request_id, "X-Mock-Chunk-Delay-Ms": "200"}
    read = 0
    async with http.stream("POST", CHAT_PATH, json=body, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                read += 1
            if read >= 2:
                break
    return read


async def test_one_record_per_served_request(processes: Processes, backend: Backend, upstream: str) -> None:
    user = new_user("outcomes")
    key = await provision(backend.database_url, user)
    gw = processes.sentinel(sentinel_env(upstream, backend.database_url, backend.redis_url))

    async with client(gw.url, key) as http:
        plain = await chat(http, chat_body("a plain answer"))
        streamed = await chat(http, chat_body("a streamed answer", stream=True))
        # Without include_usage Sentinel asks the upstream for usage and strips it from the stream.
        stripped = await chat(http, chat_body("usage stripped", stream=True, include_usage=False))
        cut = await chat(
            http, chat_body("cut me off " * 10, stream=True), headers={"X-Mock-Disconnect-After": "3"}
        )
        failed = await chat(http, chat_body("upstream breaks"), headers={"X-Mock-Status": "500"})
        failed_stream = await chat(
            http, chat_body("breaks too", stream=True), headers={"X-Mock-Status": "503"}
        )
        hung_up = uuid.uuid4().hex
        assert await disconnect_mid_stream(http, hung_up) == 2

    assert (plain.status, streamed.status, stripped.status, cut.status) == (200, 200, 200, 200)
    assert streamed.complete and stripped.complete and not cut.complete
    assert stripped.usage is None, "the usage chunk Sentinel added must not reach the client"
    assert (failed.status, failed_stream.status) == (502, 502)

    rows = {r.request_id: r for r in await wait_for_rows(backend.database_url, user, 5)}
    assert set(rows) == {
        plain.request_id,
        streamed.request_id,
        stripped.request_id,
        cut.request_id,
        hung_up,
    }, rows
    for outcome in (plain, streamed):
        row = rows[outcome.request_id]
        assert (row.status, row.usage_source) == (200, "measured")
        assert (row.input_tokens, row.output_tokens) == outcome.usage
    assert (rows[stripped.request_id].status, rows[stripped.request_id].usage_source) == (200, "measured")
    # Cut before the usage chunk: output counted from the text relayed so far.
    cut_row = rows[cut.request_id]
    assert cut_row.usage_source == "estimated" and cut_row.output_tokens > 0 and cut_row.input_tokens > 0
    assert rows[hung_up].status == 499 and rows[hung_up].usage_source == "estimated"
    if backend.redis_url is None:
        assert await sql_outbox_depth(backend.database_url) == 0, "delivered records must leave the outbox"


async def test_denied_and_failed_requests_consume_nothing(
    processes: Processes, backend: Backend, upstream: str
) -> None:
    user = new_user("nothing")
    key = await provision(backend.database_url, user, plan="requests=2/1d")
    gw = processes.sentinel(sentinel_env(upstream, backend.database_url, backend.redis_url))

    async with client(gw.url, key) as http:
        failed = [
            await chat(http, chat_body("no tokens spent"), headers={"X-Mock-Status": "500"}),
            await chat(http, chat_body("no tokens", stream=True), headers={"X-Mock-Status": "502"}),
        ]
        served = [await chat(http, chat_body(f"served {i}")) for i in range(2)]
        denied = [await chat(http, chat_body(f"denied {i}")) for i in range(2)]

    assert [o.status for o in failed] == [502, 502]
    # The failed calls gave their reservation back: both allowed requests are still there.
    assert [o.status for o in served] == [200, 200]
    assert [o.status for o in denied] == [429, 429]
    assert all(o.error and o.error["code"] == "quota_exceeded" for o in denied)

    rows = await wait_for_rows(backend.database_url, user, 2)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in served)
