"""Zion counts every request once, though it loses its answers and Sentinel is killed mid-delivery.

Sentinel runs as a process with GOVERNANCE=zion against the fake Zion, which honours
Idempotency-Key. Every user first makes one request that is delivered normally (so identities and
limits are cached). Then Zion starts applying batch-increments and dropping the connection instead
of answering, for the next 4 calls: the client gives up on a batch after 3 attempts and the
deliverer retries it later (Sentinel's Zion breaker opens meanwhile), while new requests keep
arriving, one every 150 ms. After the fourth lost answer — the
batch is applied in Zion and still in Sentinel's outbox — Sentinel is killed with SIGKILL and
started again; it takes the batch over after the lease (1 s) and sends it again. At the end each
user's totals in Zion equal what that user was served: every batch went out with the same records
under the same key every time, so Zion's idempotency made every repeat a replay. (Before batch keys
were kept, a retried batch was merged with newer records under a new key and counted again.)

Each user has their own email, and each request a different size, so a record counted twice (or
not at all) shows in that user's totals. Runs with the Redis stream outbox and with the SQL table.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis

from sentinel.quota.batch import is_batch_key
from sentinel.quota.outbox import RedisStreamOutbox
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    Outcome,
    chat,
    chat_body,
    client,
    client_totals,
    eventually,
    sentinel_env,
    sql_outbox_depth,
)
from tests.support.fake_zion import BATCH, FakeZion
from tests.support.servers import serving

USERS = 16
LOST = 4  # batch calls applied by Zion whose answer never arrives: one whole delivery, then one retry


class Load:
    """Requests per user, as the client saw them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: dict[int, list[Outcome]] = defaultdict(list)

    async def send(self, users: Iterable[int], phase: int) -> None:
        async def one(n: int) -> None:
            async with client(self.url, f"tok-{n}") as http:
                text = f"phase {phase} user {n} " * (1 + n % 3 + 2 * phase)
                outcome = await chat(http, chat_body(text, stream=n % 2 == 0))
            assert outcome.status == 200 and outcome.complete, outcome
            self.outcomes[n].append(outcome)

        await asyncio.gather(*(one(n) for n in users))

    def served(self, n: int) -> dict[str, int]:
        return client_totals(self.outcomes[n])


def zion_totals(zion: FakeZion, n: int) -> dict[str, int]:
    counted = zion.totals.get(f"user-{n}@example.com", {})
    return {
        "requests": counted.get("aiRequests", 0),
        "input_tokens": counted.get("aiInputTokens", 0),
        "output_tokens": counted.get("aiOutputTokens", 0),
    }


@pytest.fixture(params=["redis-stream", "sql-table"])
def redis_url(request: pytest.FixtureRequest, processes: Processes) -> str | None:
    return processes.redis(durable=True).url if request.param == "redis-stream" else None


async def outbox_empty(database_url: str, redis_url: str | None) -> bool:
    if await sql_outbox_depth(database_url):
        return False
    if redis_url is None:
        return True
    with redis.Redis.from_url(redis_url) as r:
        return int(r.xlen(RedisStreamOutbox.KEY)) == 0


async def test_lost_answers_and_a_kill9_mid_delivery_count_each_request_once(
    processes: Processes, upstream: str, sqlite_url: str, redis_url: str | None
) -> None:
    zion = FakeZion()
    for n in range(USERS):
        zion.add_user(f"tok-{n}", f"ext-{n}", f"user-{n}@example.com")
    with serving(zion) as server:
        zion.url = server.url
        env = sentinel_env(
            upstream, sqlite_url, redis_url,
            GOVERNANCE="zion", ZION_API_URL=zion.url, ZION_API_KEY=zion.api_key, USAGE_LEASE_SECONDS="1",
        )  # fmt: skip
        gw = processes.sentinel(env)
        load = Load(gw.url)

        # Everyone once, delivered normally: identities and limits are cached from here on.
        await load.send(range(USERS), phase=0)
        assert await eventually(lambda: _all_counted(zion, load, range(USERS)), within=30), processes.logs()

        # Zion applies and loses its answers; requests keep arriving while the batch is retried.
        zion.lose_batch_answers(LOST)
        await load.send(range(0, 4), phase=1)
        assert await eventually(lambda: _true(zion.lost_answers >= 1), within=30), processes.logs()
        trickle = 0
        while zion.lost_answers < LOST:
            assert trickle < 400, processes.logs()  # about 60 s
            await load.send([4 + trickle % 8], phase=2 + trickle // 8)
            await asyncio.sleep(0.15)  # pacing the load, not waiting for a result
            trickle += 1

        # Mid-delivery: the batch is applied in Zion and still in the outbox.
        gw.kill9()
        gw.restart()
        await load.send(range(12, USERS), phase=1)

        assert await eventually(lambda: outbox_empty(sqlite_url, redis_url), within=60), processes.logs()
        assert await eventually(lambda: _all_counted(zion, load, range(USERS)), within=30), processes.logs()
    assert zion.lost_answers == LOST
    for n in range(USERS):
        assert zion_totals(zion, n) == load.served(n), (n, processes.logs())
    served = sum(len(outcomes) for outcomes in load.outcomes.values())
    assert served == USERS + 8 + trickle and len(zion.applied) == served


async def _true(value: bool) -> bool:
    return value


async def _all_counted(zion: FakeZion, load: Load, users: Iterable[int]) -> bool:
    return all(zion_totals(zion, n)["requests"] >= load.served(n)["requests"] for n in users)


async def test_a_batch_delivered_from_memory_outlives_a_kill9_once_the_outbox_table_is_back(
    processes: Processes, upstream: str, sqlite_url: str
) -> None:
    """No outbox takes a record (no Redis; the SQLite file write-locked by another process), so its
    batch is delivered from memory, and Zion's usage endpoint fails. The lock ends, Zion still fails:
    the batch is stored in the outbox table under its key, and after a `kill -9` and a restart it is
    delivered from there, counted once. (It stayed in memory until Zion answered: the kill lost it.)"""
    db = Path(sqlite_url.split("///", 1)[1])
    zion = FakeZion()
    zion.add_user("tok-0", "ext-0", "user-0@example.com")
    with serving(zion) as server:
        zion.url = server.url
        env = sentinel_env(
            upstream, sqlite_url, GOVERNANCE="zion", ZION_API_URL=zion.url, ZION_API_KEY=zion.api_key,
            USAGE_LEASE_SECONDS="1", DATABASE_TIMEOUT_SECONDS="0.5",
        )  # fmt: skip
        gw = processes.sentinel(env)
        async with client(gw.url, "tok-0") as http:
            warm = await chat(http, chat_body("warm the identity and limits caches"))
            assert warm.status == 200, warm
            assert await eventually(lambda: _true(zion_totals(zion, 0)["requests"] == 1), within=30), processes.logs()
            # Settled too: a lock taken between Zion's answer and the settlement would hold the
            # deliverer on that settlement, and the record below would never be sent.
            assert await eventually(lambda: outbox_empty(sqlite_url, None), within=30), processes.logs()
            zion.fail_batches(503)
            tried = zion.attempts[BATCH]
            lock = sqlite3.connect(db, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                held = await chat(http, chat_body("a record no outbox takes"))
                assert held.status == 200 and held.complete, held
                # The deliverer sent it from memory (and Zion failed it) while the table was locked.
                assert await eventually(lambda: _true(zion.attempts[BATCH] > tried), within=30), processes.logs()
            finally:
                lock.close()
        assert await eventually(lambda: _true(_kept_under_a_key(db)), within=30), processes.logs()
        gw.kill9()
        zion.fail_batches(None)
        gw.restart()
        assert await eventually(lambda: outbox_empty(sqlite_url, None), within=30), processes.logs()
    assert zion_totals(zion, 0) == client_totals([warm, held]), processes.logs()


def _kept_under_a_key(db: Path) -> bool:
    """Whether the outbox table holds a record as a batch (a key of its own), as a takeover finds it."""
    with closing(sqlite3.connect(db)) as connection:
        keys = connection.execute("SELECT batch_key FROM usage_outbox").fetchall()
    return len(keys) == 1 and keys[0][0] is not None and is_batch_key(keys[0][0])


def test_the_fake_drops_answers_it_applied() -> None:
    """The fault this file relies on: applied, remembered under its key, answer lost."""
    zion = FakeZion()
    zion.add_user("tok", "ext", "u@example.com")
    body = {"increments": [{"email": "u@example.com", "aiRequests": 1}]}
    headers = {"x-api-key": zion.api_key, "Idempotency-Key": "k1"}
    with serving(zion) as server:
        zion.lose_batch_answers(1)
        url = server.url + "/api/v1/usage/external/batch-increment"
        with pytest.raises(httpx.TransportError):
            httpx.post(url, json=body, headers=headers, timeout=5)
        again = httpx.post(url, json=body, headers=headers, timeout=5)
    assert again.status_code == 200 and again.json()["data"]["processed"] == 1
    assert zion.totals["u@example.com"]["aiRequests"] == 1 and zion.lost_answers == 1
