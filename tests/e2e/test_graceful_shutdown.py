"""SIGTERM: stop accepting, let in-flight requests and streams finish, flush usage, exit cleanly."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    chat,
    chat_body,
    client,
    client_totals,
    eventually,
    ledger_rows,
    ledger_totals,
    new_user,
    provision,
    sentinel_env,
)
from tests.support.metrics import sample_sum


async def test_sigterm_drains_streams_and_flushes_usage(processes: Processes, sqlite_url: str, upstream: str) -> None:
    user = new_user("drain")
    key = await provision(sqlite_url, user)
    # A long flush interval: only the shutdown flush can deliver the records in time.
    gw = processes.sentinel(sentinel_env(upstream, sqlite_url, USAGE_FLUSH_INTERVAL_SECONDS="60",
                                         SENTINEL_SHUTDOWN_TIMEOUT_SECONDS="20"))
    async with client(gw.url, key) as http:
        # Five slow streams (about 1.5 s each) and five slow plain calls are in flight at SIGTERM.
        slow = {"X-Mock-Chunk-Delay-Ms": "150"}
        streams = [
            asyncio.ensure_future(chat(http, chat_body("one two three four five six seven eight", stream=True),
                                       headers=slow))
            for _ in range(5)
        ]
        plain = [
            asyncio.ensure_future(chat(http, chat_body("plain"), headers={"X-Mock-Latency-Ms": "3000"}))
            for _ in range(5)
        ]
        # SIGTERM once all ten are being served (the plain ones wait 3 s for the upstream).
        assert await eventually(lambda: in_flight_at_least(gw.url, 10), every=0.02)
        gw._signal(signal.SIGTERM)
        # New connections are refused while the old requests drain.
        refused = await eventually(lambda: refuses_new_requests(gw.url), within=5, every=0.05)
        outcomes = await asyncio.gather(*streams, *plain)
    assert refused
    assert all(o.status == 200 and o.complete for o in outcomes), outcomes
    # uvicorn re-raises SIGTERM after its graceful shutdown: "terminated by SIGTERM" is the clean end.
    assert await asyncio.to_thread(gw.proc.wait, 30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    # Every usage record was flushed before exit.
    assert ledger_totals(await ledger_rows(sqlite_url, user)) == client_totals(outcomes)


async def in_flight_at_least(url: str, count: int) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        page = (await http.get(url + "/metrics")).text
    return (sample_sum(page, "sentinel_requests_in_flight") or 0) >= count


async def refuses_new_requests(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            late = await http.get(url + "/health/live")
    except httpx.TransportError:
        return True
    return late.status_code >= 500
