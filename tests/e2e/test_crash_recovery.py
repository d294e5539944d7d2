"""`kill -9` Sentinel with usage still in its outbox; after a restart the ledger is exact.

Sentinel starts with USAGE_FLUSH_INTERVAL_SECONDS=30, so the deliverer (which runs once at start-up,
then every interval) has not moved anything when the load ends: the records sit in the outbox, the
Redis stream or, without Redis, the `usage_outbox` table. A third of them are also claimed by a
consumer that never acknowledges (what a replica that died mid-delivery leaves behind). Then
SIGKILL, a restart with a short flush interval and a 1 s lease, and the ledger must hold exactly
the requests and tokens the client received: nothing lost, nothing counted twice.

A second test kills Sentinel in the middle of the load: every response the client received in
full is in the ledger with its exact usage, and every ledger row is a request the client sent. A
third pins the ordering that makes this hold for streams: the end of a stream reaches the client
only after its usage record is stored.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select, update

from sentinel.db.engine import create_engine, session_factory
from sentinel.db.models import UsageOutboxRow, utcnow
from sentinel.quota.outbox import RedisStreamOutbox
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    Outcome,
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
    sql_outbox_depth,
    wait_for_rows,
)
from tests.support.process import SentinelProcess

REQUESTS = 60
PARALLEL = 15
LEASE = "1"


@dataclass
class Outbox:
    """Where the records wait: a Redis stream (redis_url set) or the SQL table."""

    database_url: str
    redis_url: str | None

    async def depth(self) -> int:
        if self.redis_url is None:
            return await sql_outbox_depth(self.database_url)
        with redis.Redis.from_url(self.redis_url) as r:
            return int(r.xlen(RedisStreamOutbox.KEY))

    async def claim_as_dead_replica(self, count: int) -> int:
        """Lease `count` records to a deliverer that will never acknowledge them."""
        if self.redis_url is not None:
            with redis.Redis.from_url(self.redis_url) as r:
                got = r.xreadgroup(
                    RedisStreamOutbox.GROUP, "dead-replica", {RedisStreamOutbox.KEY: ">"}, count=count
                )
                return sum(len(entries) for _, entries in got or [])
        engine = create_engine(self.database_url)
        try:
            async with session_factory(engine)() as session:
                ids = (
                    await session.scalars(select(UsageOutboxRow.id).order_by(UsageOutboxRow.id).limit(count))
                ).all()
                await session.execute(
                    update(UsageOutboxRow)
                    .where(UsageOutboxRow.id.in_(ids))
                    .values(next_attempt_at=utcnow() + timedelta(seconds=2), attempts=1)
                )
                await session.commit()
                return len(ids)
        finally:
            await engine.dispose()

    async def pending(self) -> int:
        """Records claimed but not acknowledged (Redis) / still in the table (SQL)."""
        if self.redis_url is None:
            return await sql_outbox_depth(self.database_url)
        with redis.Redis.from_url(self.redis_url) as r:
            return int(r.xpending(RedisStreamOutbox.KEY, RedisStreamOutbox.GROUP)["pending"])


@pytest.fixture(params=["redis-stream", "ledger-direct"])
def outbox(request: pytest.FixtureRequest, processes: Processes, sqlite_url: str) -> Iterator[Outbox]:
    yield Outbox(sqlite_url, processes.redis().url if request.param == "redis-stream" else None)


async def load(
    url: str, key: str, count: int, *, stream_delay_ms: int = 0, finished: list[Outcome] | None = None
) -> list[Outcome]:
    """`count` chat calls, PARALLEL at a time: odd ones plain, even ones streamed with usage.

    Each outcome is also appended to `finished` as soon as its call ends.
    """
    gate = asyncio.Semaphore(PARALLEL)

    async def one(http: httpx.AsyncClient, i: int) -> Outcome:
        async with gate:
            text = "tell me about crash recovery " * (1 + i % 7)
            if i % 2:
                outcome = await chat(http, chat_body(text))
            else:
                headers = {"X-Mock-Chunk-Delay-Ms": str(stream_delay_ms)} if stream_delay_ms else None
                outcome = await chat(http, chat_body(text, stream=True), headers=headers)
        if finished is not None:
            finished.append(outcome)
        return outcome

    async with client(url, key) as http:
        return await asyncio.gather(*(one(http, i) for i in range(count)))


async def start_holding_usage(
    processes: Processes, outbox: Outbox, upstream: str, label: str
) -> tuple[str, str, SentinelProcess]:
    """A new user (id, key) and a Sentinel whose deliverer will not run again for 30 s: usage
    stays in the outbox; leases last LEASE seconds once it restarts."""
    user = new_user(label)
    key = await provision(outbox.database_url, user)
    env = sentinel_env(
        upstream, outbox.database_url, outbox.redis_url, USAGE_FLUSH_INTERVAL_SECONDS="30", USAGE_LEASE_SECONDS=LEASE
    )
    return user, key, processes.sentinel(env)


async def test_kill9_with_a_full_outbox_then_restart_delivers_exactly(
    processes: Processes, outbox: Outbox, upstream: str
) -> None:
    user, key, gw = await start_holding_usage(processes, outbox, upstream, "crash")

    outcomes = await load(gw.url, key, REQUESTS)
    assert all(o.status == 200 and o.complete for o in outcomes), [o for o in outcomes if o.status != 200]
    received = client_totals(outcomes)
    assert received["requests"] == REQUESTS

    if outbox.redis_url is None:
        # One process on the built-in ledger: each record went straight into the ledger before its
        # response ended, so a crash now has nothing left to lose or to deliver twice.
        gw.kill9()
        rows = await ledger_rows(outbox.database_url, user)
        assert ledger_totals(rows) == received and await outbox.depth() == 0
        gw.restart(USAGE_FLUSH_INTERVAL_SECONDS="0.1")
        assert ledger_totals(await wait_for_rows(outbox.database_url, user, REQUESTS)) == received
        return
    # Nothing delivered yet: every record waits in the outbox when the process dies.
    assert len(await ledger_rows(outbox.database_url, user)) < REQUESTS
    assert await outbox.depth() == REQUESTS
    assert await outbox.claim_as_dead_replica(REQUESTS // 3) == REQUESTS // 3
    gw.kill9()
    assert len(await ledger_rows(outbox.database_url, user)) < REQUESTS

    gw.restart(USAGE_FLUSH_INTERVAL_SECONDS="0.1")
    rows = await wait_for_rows(outbox.database_url, user, REQUESTS)
    assert ledger_totals(rows) == received, processes.logs()
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes)
    assert await eventually(lambda: _drained(outbox)), "delivered records must leave the outbox"
    assert ledger_totals(await ledger_rows(outbox.database_url, user)) == received


async def _drained(outbox: Outbox) -> bool:
    return await outbox.depth() == 0 and await outbox.pending() == 0


async def test_kill9_mid_load_loses_no_received_response(
    processes: Processes, outbox: Outbox, upstream: str
) -> None:
    user, key, gw = await start_holding_usage(processes, outbox, upstream, "midload")
    finished: list[Outcome] = []
    running = asyncio.ensure_future(load(gw.url, key, REQUESTS, stream_delay_ms=15, finished=finished))
    # Kill once a third of the load was received in full; requests in flight then fail on the client side.
    assert await eventually(lambda: _received_at_least(finished, REQUESTS // 3), within=20, every=0.01)
    gw.kill9()
    outcomes = await running

    received = [o for o in outcomes if o.status == 200 and o.complete]
    assert REQUESTS // 3 <= len(received) < REQUESTS, (
        f"the kill must fall in the middle of the load: {len(received)}"
    )
    assert all(o.status in (0, 200) for o in outcomes), [o for o in outcomes if o.status not in (0, 200)]
    gw.restart(USAGE_FLUSH_INTERVAL_SECONDS="0.1")
    await wait_for_rows(outbox.database_url, user, len(received))
    assert await eventually(lambda: _drained(outbox)), processes.logs()
    rows = {r.request_id: r for r in await ledger_rows(outbox.database_url, user)}
    for o in received:
        row = rows.get(o.request_id)
        assert row is not None, (f"received response {o.request_id} has no usage record", processes.logs())
        assert (row.input_tokens, row.output_tokens) == o.usage
    # Requests cut by the kill may have been recorded (served, answer lost) but nothing else.
    assert set(rows) <= {o.request_id for o in outcomes}


async def _received_at_least(outcomes: list[Outcome], count: int) -> bool:
    return sum(1 for o in outcomes if o.status == 200 and o.complete) >= count


async def test_a_stream_ends_only_once_its_usage_is_durable(
    processes: Processes, tmp_path: Path, upstream: str
) -> None:
    """The client must not see the end of a stream whose usage record a crash could still lose.

    The SQLite database is write-locked by the test, so the usage record cannot be stored yet;
    the client must not have its complete answer while that lasts (the wait below is a bound, not
    a timing assertion). After the kill, whatever the client did receive in full is in the ledger.
    """
    db_path = tmp_path / "sentinel.db"
    database_url = f"sqlite+aiosqlite:///{db_path}"
    user = new_user("durable")
    key = await provision(database_url, user)
    gw = processes.sentinel(sentinel_env(upstream, database_url, USAGE_FLUSH_INTERVAL_SECONDS="30"))
    async with client(gw.url, key) as http:
        warm = await chat(http, chat_body("warm the identity and plan caches"))
        assert warm.status == 200
        lock = sqlite3.connect(db_path, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            streaming = asyncio.ensure_future(chat(http, chat_body("a streamed answer", stream=True)))
            await asyncio.wait({streaming}, timeout=2)
            received_while_locked = streaming.done() and streaming.result().complete
            gw.kill9()
        finally:
            lock.close()
        outcome = await streaming
    assert not received_while_locked, "the stream ended before its usage record was stored"
    assert outcome.status == 0 or not outcome.complete

    gw.restart(USAGE_FLUSH_INTERVAL_SECONDS="0.1")
    rows = await wait_for_rows(database_url, user, 1)
    assert warm.request_id in {r.request_id for r in rows}
