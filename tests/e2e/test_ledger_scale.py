"""The ledger at scale: two Sentinel processes on one Redis and one PostgreSQL under concurrent load.

For SENTINEL_LEDGER_SCALE_SECONDS (default 60) a client keeps CONCURRENCY calls in flight, spread
over both processes (plain and streamed chat, each with its own X-Request-Id). Afterwards the
ledger holds exactly one row per 200 response and nothing else (failed and refused calls are not
billed; a client that hangs up mid-stream would be, with status 499, but this client never does).
The only refusals allowed are the gate failing closed when Redis answers too slowly (503, at most 1 %).

Every second the outbox depth is sampled twice: the `sentinel_usage_outbox_depth` gauge of each
process (/metrics) and the real depth (the Redis stream's length plus the SQL outbox table), since a
deliverer stuck inside a cycle would leave its gauge stale. The bound allows one full batch per
process plus PATIENCE_S seconds of traffic on top of a flush interval; a deliverer that stopped,
or fell steadily behind, crosses it within a few seconds of a 60 s run. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aioredis

from sentinel.db.engine import create_engine, migrate
from sentinel.quota.outbox import RedisStreamOutbox
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    Outcome,
    chat,
    chat_body,
    client,
    metric_value,
    new_user,
    provision,
    sentinel_env,
    wait_for_rows,
)
from tests.support.process import SentinelProcess

DURATION_S = float(os.environ.get("SENTINEL_LEDGER_SCALE_SECONDS", "60"))
CONCURRENCY = 32
FLUSH_INTERVAL_S = 0.5  # the default USAGE_FLUSH_INTERVAL_SECONDS
BATCH = 500  # UsageDeliverer's default batch size
PATIENCE_S = 5.0
FAILED_CLOSED = {"quota_unavailable", "store_unavailable"}  # the 503 codes of a store too slow to answer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(int(DURATION_S) + 240),
]


@dataclass
class Depths:
    """Outbox depth samples, one per second: per-process gauges and the real depth."""

    gauges: list[float] = field(default_factory=list)
    real: list[int] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max([0.0, *self.gauges, *self.real])


async def load(urls: list[str], key: str, until: float) -> list[Outcome]:
    """CONCURRENCY loops, each bound to one process, calling until `until` (monotonic)."""
    outcomes: list[Outcome] = []

    async def loop(url: str, n: int) -> None:
        async with client(url, key) as http:
            i = 0
            while time.monotonic() < until:
                stream = (n + i) % 4 == 0  # a quarter streamed
                outcomes.append(await chat(http, chat_body(f"ledger load {n}-{i}", stream=stream)))
                i += 1

    await asyncio.gather(*(loop(urls[n % len(urls)], n) for n in range(CONCURRENCY)))
    return outcomes


async def sample_depths(urls: list[str], redis_url: str, database_url: str, stop: asyncio.Event) -> Depths:
    depths = Depths()
    store = aioredis.Redis.from_url(redis_url)
    engine = create_engine(database_url)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            while not stop.is_set():
                for url in urls:
                    page = (await http.get(url + "/metrics")).text
                    depths.gauges.append(metric_value(page, "sentinel_usage_outbox_depth"))
                async with engine.connect() as conn:
                    sql_rows = (await conn.exec_driver_sql("SELECT count(*) FROM usage_outbox")).scalar_one()
                depths.real.append(int(await store.xlen(RedisStreamOutbox.KEY)) + int(sql_rows))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
    finally:
        await store.aclose()
        await engine.dispose()
    return depths


async def test_two_processes_bill_every_response_exactly_once_under_load(
    processes: Processes, pg_url: str, upstream: str
) -> None:
    await migrate(pg_url)  # once, before both processes start
    redis = processes.redis()
    user = new_user("scale")
    key = await provision(pg_url, user, plan="requests=100000000/1d")
    env = sentinel_env(upstream, pg_url, redis.url, USAGE_FLUSH_INTERVAL_SECONDS=str(FLUSH_INTERVAL_S))
    gateways: list[SentinelProcess] = [processes.sentinel(env), processes.sentinel(env)]
    urls = [g.url for g in gateways]

    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_depths(urls, redis.url, pg_url, stop))
    started = time.monotonic()
    outcomes = await load(urls, key, until=started + DURATION_S)
    load_s = time.monotonic() - started
    served = [o for o in outcomes if o.status == 200 and o.complete]
    rows = await wait_for_rows(pg_url, user, len(served), within=120)
    settled_s = time.monotonic() - started
    stop.set()
    depths = await sampler

    rate = len(served) / load_s
    bound = BATCH * len(gateways) + rate * (FLUSH_INTERVAL_S + PATIENCE_S)
    print(
        f"\nledger at scale: {len(served)} responses in {load_s:.0f} s ({rate:.0f}/s) from 2 processes; "
        f"{len(rows)} ledger rows {settled_s - load_s:.1f} s after the load "
        f"({len(rows) / settled_s:.0f} records/s end to end); outbox depth peak {depths.peak:.0f} "
        f"(bound {bound:.0f}, {len(depths.real)} samples)"
    )
    # On a machine this busy a Redis call can outlast REDIS_TIMEOUT_SECONDS (0.25 s): the gate then
    # fails closed with a 503 (QUOTA_FAILURE_MODE=closed, documented), which bills nothing — the
    # billed set below must equal the served set exactly. Anything else, or more than 1 %, fails.
    refused = [o for o in outcomes if o.status != 200]
    assert all(o.status == 503 and (o.error or {}).get("code") in FAILED_CLOSED for o in refused), [
        (o.status, o.error) for o in refused[:5]]
    assert len(refused) <= len(outcomes) // 100, Counter(o.status for o in outcomes)
    assert len(served) == len(outcomes) - len(refused), "every stream ended with [DONE]"
    billed = Counter(r.request_id for r in rows)
    assert not [rid for rid, n in billed.items() if n > 1], "a request billed twice"
    assert set(billed) == {o.request_id for o in served}
    assert len(depths.real) >= DURATION_S / 2, "the sampler kept sampling"
    assert depths.peak <= bound, (depths.gauges, depths.real)
    assert await _real_depth(redis.url) == 0, "the outbox drained"


async def _real_depth(redis_url: str) -> int:
    store = aioredis.Redis.from_url(redis_url)
    try:
        return int(await store.xlen(RedisStreamOutbox.KEY))
    finally:
        await store.aclose()
