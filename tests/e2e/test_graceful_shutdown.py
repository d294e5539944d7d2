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
    ledger_rows,
    ledger_totals,
    new_user,
    provision,
    sentinel_env,
)


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
            asyncio.ensure_future(chat(http, chat_body("plain"), headers={"X-Mock-Latency-Ms": "800"}))
            for _ in range(5)
        ]
        await asyncio.sleep(0.4)
        gw._signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # New connections are refused while the old requests drain.
        try:
            late = await httpx.AsyncClient(timeout=2).get(gw.url + "/health/live")
            refused = late.status_code >= 500
        except httpx.TransportError:
            refused = True
        outcomes = await asyncio.gather(*streams, *plain)
    assert refused
    assert all(o.status == 200 and o.complete for o in outcomes), outcomes
    # uvicorn re-raises SIGTERM after its graceful shutdown: "terminated by SIGTERM" is the clean end.
    assert await asyncio.to_thread(gw.proc.wait, 30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    # Every usage record was flushed before exit.
    assert ledger_totals(await ledger_rows(sqlite_url, user)) == client_totals(outcomes)
