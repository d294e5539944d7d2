"""Two Sentinel processes on a real Redis Cluster (3 primaries + 3 replicas) and one PostgreSQL.

- Exact admission: a few hundred concurrent requests, spread over both processes, at a user whose
  plan allows K a day admit exactly K, three times, each time with the user's quota keys on
  another primary; exactly K usage records reach the ledger.
- Sessions: a conversation started on one process continues on the other with the same
  provider/model (the tier has three candidates, so that is not luck); concurrent first turns on
  both processes agree on one model; another user gets 403 on either process and changes nothing.
- The usage stream: every served request ends as exactly one ledger row, the records travelled
  through the cluster's usage stream (its consumer group read them), and the deliverers drain it.

The crash of a primary under load is in `test_cluster_failover.py`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sentinel.db.engine import migrate
from tests.e2e.cluster_support import USAGE_STREAM, Pair, primaries, start_pair, stream_info, user_on
from tests.e2e.conftest import Processes
from tests.e2e.helpers import (
    chat,
    chat_body,
    client,
    client_totals,
    eventually,
    ledger_totals,
    new_user,
    provision,
    sql_outbox_depth,
    statuses,
    wait_for_rows,
)
from tests.support.redis_cluster import LocalRedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

NATIVE = "/native/v1/chat/completions"
RUNS = 3
BURST = 300


@pytest.fixture(scope="module")
def pair(
    redis_cluster: LocalRedisCluster,
    pg_url: str,
    upstream: str,
    redis_bin: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    asyncio.run(migrate(pg_url))
    group = Processes(tmp_path_factory.mktemp("cluster-pair"), redis_bin)
    try:
        yield start_pair(group, redis_cluster, pg_url, upstream)
    finally:
        group.close()


@pytest.mark.parametrize("run", range(RUNS))
async def test_exactly_k_of_a_concurrent_burst_are_admitted(pair: Pair, run: int) -> None:
    k = 60 + 20 * run
    home = primaries(pair.cluster)[run % 3]
    user = user_on(pair.cluster, f"burst{run}", lambda primary: primary is home)
    key = await provision(pair.database_url, user, plan=f"requests={k}/1d")

    async with client("", key) as http:
        outcomes = await asyncio.gather(
            *(chat(http, chat_body(f"burst {i}"), url=pair.urls[i % 2]) for i in range(BURST))
        )

    assert statuses(outcomes) == {200: k, 429: BURST - k}, [
        (o.status, o.error) for o in outcomes if o.status not in (200, 429)
    ]
    rows = await wait_for_rows(pair.database_url, user, k)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes if o.status == 200)


async def native(http: httpx.AsyncClient, url: str, conversation: str, text: str) -> httpx.Response:
    body = {
        "tier": "simple",
        "conversation_id": conversation,
        "messages": [{"role": "user", "content": text}],
    }
    return await http.post(url + NATIVE, json=body)


def served(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-sentinel-provider"], response.headers["x-sentinel-model"]


def stored_session(cluster: LocalRedisCluster, user: str, conversation: str) -> dict[str, Any] | None:
    from sentinel.routing.sessions import SessionStore

    key = SessionStore.key(user, conversation)
    with cluster.primary_of(key).client() as node:
        raw = node.get(key)
    return None if raw is None else orjson.loads(raw)


async def test_conversations_stick_to_one_model_across_processes(pair: Pair) -> None:
    alice, mallory = new_user("alice"), new_user("mallory")
    alice_key = await provision(pair.database_url, alice)
    mallory_key = await provision(pair.database_url, mallory)
    a, b = pair.urls
    prefix = uuid.uuid4().hex[:8]
    one_by_one = [f"conv-{prefix}-{n}" for n in range(12)]
    racing = [f"race-{prefix}-{n}" for n in range(6)]

    async with client("", alice_key) as http:
        started = {
            conv: served(await native(http, (a, b)[n % 2], conv, "first turn"))
            for n, conv in enumerate(one_by_one)
        }
        for n, conv in enumerate(one_by_one):
            for turn, url in enumerate(((b, a)[n % 2], (a, b)[n % 2], (b, a)[n % 2])):
                assert served(await native(http, url, conv, f"turn {turn + 2}")) == started[conv], conv
        # First turns of one conversation on both processes at once: one model wins, both use it.
        for conv in racing:
            on_a, on_b = await asyncio.gather(native(http, a, conv, "hello"), native(http, b, conv, "hello"))
            assert served(on_a) == served(on_b), conv
            started[conv] = served(on_a)

    assert len(set(started.values())) > 1, "the tier has three candidates: conversations should spread"
    for conv, (provider, model) in started.items():
        session = stored_session(pair.cluster, alice, conv)
        assert session is not None, conv
        assert (session["external_id"], session["provider"], session["model"]) == (alice, provider, model)

    async with client("", mallory_key) as http:
        for n, conv in enumerate(one_by_one[:4] + racing[:2]):
            # the same id is mallory's own conversation: alice's is neither reached nor changed
            own = await native(http, (a, b)[n % 2], conv, "let me in")
            assert own.status_code == 200, own.text
    for conv in one_by_one[:4] + racing[:2]:
        assert (stored_session(pair.cluster, mallory, conv) or {}).get("external_id") == mallory, conv
        session = stored_session(pair.cluster, alice, conv)
        assert session is not None and session["external_id"] == alice
        assert (session["provider"], session["model"]) == started[conv]


async def test_every_served_request_is_one_ledger_row_via_the_cluster_stream(pair: Pair) -> None:
    user = new_user("stream")
    key = await provision(pair.database_url, user)
    read_before = int(stream_info(pair.cluster)["group"].get("entries-read") or 0)
    gate = asyncio.Semaphore(32)

    async def call(i: int, http: httpx.AsyncClient) -> Any:
        async with gate:
            return await chat(http, chat_body(f"usage {i}", stream=i % 2 == 1), url=pair.urls[i % 2])

    async with client("", key) as http:
        outcomes = await asyncio.gather(*(call(i, http) for i in range(200)))

    assert statuses(outcomes) == {200: 200}
    rows = await wait_for_rows(pair.database_url, user, 200)
    assert sorted(r.request_id for r in rows) == sorted(o.request_id for o in outcomes), (
        "one row per response"
    )
    assert ledger_totals(rows) == client_totals(outcomes)

    info = stream_info(pair.cluster)
    assert int(info["group"].get("entries-read") or 0) - read_before >= 200, (
        f"the usage records did not go through the cluster's stream {USAGE_STREAM}: {info}"
    )

    async def drained() -> bool:
        return stream_info(pair.cluster)["length"] == 0 and await sql_outbox_depth(pair.database_url) == 0

    assert await eventually(drained, within=20), stream_info(pair.cluster)
