"""N concurrent requests against a limit of K admit exactly K, on one and on two Sentinel processes.

3K requests are fired at once (asyncio.gather) at a fresh user whose plan allows K requests a day;
exactly K must get 200 and the other 2K 429, and exactly K usage records must reach the ledger.
Each topology runs 10 times in a row (K = 10..19) against the same processes:

- memory+sqlite:   one process, the in-memory store;
- redis+sqlite:    one process on a real Redis;
- redis+sqlite x2: two processes sharing one Redis and one database, half the requests each;
- redis+postgres x2: the same on PostgreSQL.

A day-long window makes a window boundary falling inside one burst practically impossible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentinel.db.engine import migrate
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    chat,
    chat_body,
    client,
    new_user,
    provision,
    sentinel_env,
    statuses,
    wait_for_rows,
)
from tests.support.process import SentinelProcess

REPEATS = 10


@dataclass
class Cluster:
    database_url: str
    sentinels: list[SentinelProcess]


TOPOLOGIES = [
    pytest.param(("memory", "sqlite", 1), id="memory+sqlite"),
    pytest.param(("redis", "sqlite", 1), id="redis+sqlite", marks=pytest.mark.redis),
    pytest.param(("redis", "sqlite", 2), id="redis+sqlite-x2", marks=pytest.mark.redis),
    pytest.param(
        ("redis", "postgres", 2), id="redis+postgres-x2", marks=[pytest.mark.redis, pytest.mark.postgres]
    ),
]


@pytest.fixture(scope="module", params=TOPOLOGIES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_bin: str | None,
    upstream: str,
) -> Iterator[Cluster]:
    store, database, replicas = request.param
    log_dir: Path = tmp_path_factory.mktemp("concurrency")
    group = Processes(log_dir, redis_bin)
    try:
        database_url = (
            request.getfixturevalue("pg_url")
            if database == "postgres"
            else f"sqlite+aiosqlite:///{log_dir}/sentinel.db"
        )
        # Migrate once up front so the replicas start on a ready schema.
        asyncio.run(migrate(database_url))
        redis_url = group.redis().url if store == "redis" else None
        env = sentinel_env(upstream, database_url, redis_url)
        sentinels = [group.sentinel(env) for _ in range(replicas)]
        yield Cluster(database_url, sentinels)
    finally:
        group.close()


@pytest.mark.parametrize("run", range(REPEATS))
async def test_exactly_k_of_3k_concurrent_requests_are_admitted(cluster: Cluster, run: int) -> None:
    k = 10 + run
    user = new_user(f"burst{run}")
    key = await provision(cluster.database_url, user, plan=f"requests={k}/1d")
    urls = [s.url for s in cluster.sentinels]

    async with client("", key) as http:
        outcomes = await asyncio.gather(
            *(chat(http, chat_body(f"burst {i}"), url=urls[i % len(urls)]) for i in range(3 * k))
        )

    assert statuses(outcomes) == {200: k, 429: 2 * k}, [
        (o.status, o.error) for o in outcomes if o.status not in (200, 429)
    ]
    rows = await wait_for_rows(cluster.database_url, user, k)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes if o.status == 200)
