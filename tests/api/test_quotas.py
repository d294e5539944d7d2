"""Quotas over HTTP: limits bite, headers are sent, usage lands in the ledger exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.api.conftest import Gateway
from tests.conftest import REDIS_BIN, unavailable
from tests.db.support import create_database, drop_database
from tests.support.accounts import ledger_request_ids, set_user_plan, usage_totals
from tests.support.clock import FakeClock
from tests.support.process import RedisServerProcess
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "quota please"}]}


def set_plan(database_url: str, external_id: str, plan: str, spec: str) -> None:
    asyncio.run(set_user_plan(database_url, external_id, spec, plan))


def ledger_totals(database_url: str, external_id: str) -> dict[str, int]:
    return asyncio.run(usage_totals(database_url, external_id))


def test_request_limit_bites_with_headers(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    gw = gateway_factory(redis_url=backend_url)
    set_plan(gw.settings.database_url, "alice", "tiny", "requests=3/1d")
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json=CHAT) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in answers)
    denied = answers[3]
    assert int(denied.headers["retry-after"]) >= 1
    assert int(denied.headers["x-ratelimit-reset"]) > time.time()
    error = denied.json()["error"]
    assert error["type"] == "rate_limit_error" and "requests" in error["message"]


def test_token_limits_have_their_own_counters(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    gw = gateway_factory(redis_url=backend_url)
    set_plan(gw.settings.database_url, "alice", "tokens", "requests=1000/1m,input_tokens=40/1m,output_tokens=100000/1m")
    with gw.client() as http:
        statuses = []
        for _ in range(6):
            r = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert "input tokens" in r.json()["error"]["message"]
                break
    assert statuses[0] == 200 and statuses[-1] == 429


def test_the_quota_windows_are_read_on_the_gateways_window_clock(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Windows are fixed and epoch-aligned: a count read across calls restarts when a window ends
    between them (a test saw 5 requests counted after 7 served, every one recorded). The gateway
    reads them on the clock it is given, so a test can hold its requests in one window, or move
    them out of it; every request served is recorded once either way."""
    clock = FakeClock(1_800_000_059.5)  # half a second before a minute ends
    gw = gateway_factory(redis_url=backend_url, default_plan="requests=100/60s", admin_key="admin-key-for-tests-0123",
                         window_clock=clock)
    with gw.client() as c:
        for _ in range(2):
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert gw.quota_used()["requests"] == 2
        clock.advance(1)  # the next minute's window
        assert gw.quota_used()["requests"] == 0
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "99"  # counted in the new window
    assert gw.quota_used()["requests"] == 1
    assert len({row["request_id"] for row in gw.settled_rows(3)}) == 3


def test_a_limit_of_0_bans_its_metric_only(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    """An embeddings-only plan (`output_tokens=0/1d`) refused embeddings and the model list with a
    429 and a Retry-After of hours that never helped; a chat request is refused as never admittable,
    and so is a pass-through call (charged the tokens its answer shows: once admitted, a ban that
    let it through would never stop it)."""
    gw = gateway_factory(redis_url=backend_url, passthrough="/v1/moderations,/v1/files,/v1/files/*")
    with gw.client() as http:  # a file of hers from before the plan
        upload = http.post("/v1/files", files={"file": ("a.txt", b"hers")}, data={"purpose": "user_data"})
    assert upload.status_code == 200, upload.text
    set_plan(gw.settings.database_url, "alice", "embeddings-only", "requests=100/1m,output_tokens=0/1d")
    gw.drop_stored("sentinel:limits:alice")
    embedding = {"model": "text-embedding-3-small", "input": "quota please"}
    with gw.client() as http:
        # A delete can be charged no tokens: a user banned from one can still remove her objects.
        assert http.delete(f"/v1/files/{upload.json()['id']}").status_code == 200
        for body in (embedding, {**embedding, "input": "quota " * 20_000}):  # the large one is peeked first
            r = http.post("/v1/embeddings", json=body)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit"] == "100"
        assert http.get("/v1/models").status_code == 200
        denied = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 16})
        passed = http.post("/v1/moderations", json={"input": "hello"})
    assert passed.status_code == 429 and "retry-after" not in passed.headers, passed.text
    assert "never be admitted" in passed.json()["error"]["message"]
    assert denied.status_code == 429 and "retry-after" not in denied.headers
    error = denied.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded"
    assert "allows no output tokens" in error["message"] and "never be admitted" in error["message"]


def test_plan_change_applies_once_the_cached_plan_expires(gateway: Gateway) -> None:
    # The TTL itself is unit-tested with a clock (tests/governance/test_plan_source.py).
    set_plan(gateway.settings.database_url, "alice", "one", "requests=1/1d")
    with gateway.client() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 429
        set_plan(gateway.settings.database_url, "alice", "more", "requests=50/1h")
        # The cached plan still applies...
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 429
        # ...until its entry's TTL runs out in the store (here: removed from it).
        gateway.drop_stored("sentinel:limits:alice")
        r = http.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "50"


def test_a_plan_change_keeps_the_count_of_each_window_it_keeps(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Counters are per metric and window, not per plan: a plan made smaller mid-window, or a move to
    a smaller plan, is enforced on what the user already used (no fresh allowance); a limit over
    another window starts at what the ledger holds of it (README, Quotas)."""
    gw = gateway_factory(redis_url=backend_url, admin_key="admin-key-for-tests-0123")
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": "Bearer admin-key-for-tests-0123"}, timeout=30)

    def plan(name: str, limit: int, window: str) -> None:
        body = {"limits": [{"metric": "requests", "limit": limit, "window": window}]}
        assert admin.put(f"/admin/api/plans/{name}", json=body).status_code == 200

    with admin, gw.client() as alice:
        plan("big", 10, "1d")
        assert admin.put("/admin/api/users/alice/plan", json={"plan": "big"}).status_code == 200
        assert [alice.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4)] == [200] * 4
        plan("big", 3, "1d")  # edited below what alice used
        assert alice.post("/v1/chat/completions", json=CHAT).status_code == 429
        plan("small", 5, "1d")
        assert admin.put("/admin/api/users/alice/plan", json={"plan": "small"}).status_code == 200
        assert [alice.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)] == [200, 429]
        gw.settled_rows(5)  # the 5 served, in the ledger
        plan("small", 5, "2d")  # another window: its own counter, seeded from the ledger
        assert alice.post("/v1/chat/completions", json=CHAT).status_code == 429
        plan("small", 6, "2d")
        answer = alice.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200 and answer.headers["x-ratelimit-remaining"] == "0"


def test_two_processes_on_one_redis_admit_no_more_output_than_a_token_limit_holds(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """40 requests at once, half through each of two gateways sharing one Redis, each capped at 100
    output tokens against 1,000 a day: exactly 10 are admitted (each reserved its cap), the others
    refused on that limit; once settled the counter holds what the admitted ones used, as recorded.
    (A day-long window: a boundary inside the burst would give it a second allowance.)"""
    first = gateway_factory(redis_url=redis_url)
    second = gateway_factory(redis_url=redis_url, database_url=first.settings.database_url)
    set_plan(first.settings.database_url, "alice", "burst", "requests=1000/1d,output_tokens=1000/1d")
    body = {**CHAT, "max_tokens": 100}
    slow = {"Authorization": f"Bearer {first.key}", "X-Mock-Latency-Ms": "300"}  # all in flight at once

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=slow, timeout=30) as http:
            return await asyncio.gather(*(
                http.post(f"{(first, second)[i % 2].url}/v1/chat/completions", json=body) for i in range(40)))

    answers = asyncio.run(burst())
    assert Counter(r.status_code for r in answers) == {200: 10, 429: 30}
    assert {r.json()["error"]["details"]["metric"] for r in answers if r.status_code == 429} == {"output_tokens"}
    used = sum(r.json()["usage"]["completion_tokens"] for r in answers if r.status_code == 200)
    assert wait_for(lambda: ledger_totals(first.settings.database_url, "alice")["output_tokens"] == used)
    client = redis.Redis.from_url(redis_url)
    try:
        counters = [int(client.get(key) or 0) for key in client.scan_iter("sentinel:quota:{alice}:output_tokens:86400:*")]
    finally:
        client.close()
    assert sum(counters) == used


def test_default_plan_applies_to_users_without_one(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(default_plan="requests=2/1d")
    with gw.client() as http:
        codes = [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_usage_reaches_the_ledger_exactly(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    gw = gateway_factory(redis_url=backend_url, usage_flush_interval_seconds=0.1)
    seen = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    client = gw.openai()
    for i in range(3):
        result = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"usage number {i}"}]
        )
        seen["requests"] += 1
        seen["input_tokens"] += result.usage.prompt_tokens
        seen["output_tokens"] += result.usage.completion_tokens
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "streamed usage"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage][0]
    seen["requests"] += 1
    seen["input_tokens"] += usage.prompt_tokens
    seen["output_tokens"] += usage.completion_tokens
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice") == seen), (
        ledger_totals(gw.settings.database_url, "alice"),
        seen,
    )
    with httpx.Client(base_url=gw.url) as http:
        metrics = http.get("/metrics").text
    assert 'sentinel_tokens_total{direction="input",model="gpt-4o-mini"}' in metrics


def test_reused_client_request_id_still_counts_every_request(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "same-id"}) for _ in range(3)]
    assert all(r.status_code == 200 and r.headers["x-request-id"] == "same-id" for r in answers)
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice")["requests"] == 3)


@pytest.fixture
def own_pg_url(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test's own."""
    url = asyncio.run(create_database(pg_url))
    yield url
    asyncio.run(drop_database(pg_url, url))


@pytest.mark.postgres
def test_a_long_client_request_id_is_recorded_on_postgresql(
    own_pg_url: str, gateway_factory: Callable[..., Gateway]  # the database outlives the gateway
) -> None:
    """The ledger key `<client id>~<nonce>` always fits `request_id` (128 characters): a client id of
    115 is kept, a longer one is replaced by a new id, and both requests are recorded (once the key
    did not fit, PostgreSQL refused the whole group commit: a 500 and no record)."""
    gw = gateway_factory(database_url=own_pg_url)
    kept_id, long_id = "k" * 115, "x" * 128
    with gw.client() as http:
        kept = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": kept_id})
        replaced = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": long_id})
    assert (kept.status_code, kept.headers["x-request-id"]) == (200, kept_id), kept.text
    assert replaced.status_code == 200, replaced.text
    new_id = replaced.headers["x-request-id"]
    assert new_id != long_id and len(new_id) == 32
    ids = asyncio.run(ledger_request_ids(own_pg_url))
    assert new_id in ids and len(ids) == 2
    (kept_key,) = ids - {new_id}
    assert kept_key.startswith(kept_id + "~") and len(kept_key) == 128


def test_retry_after_waits_for_every_limit_that_refuses(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Two limits exhausted at once, the per-minute one first in the plan: the 429 named that one and
    said to retry within the minute, where the daily one refused again (an SDK honouring Retry-After
    retried in vain until the day ended). It names the limit that resets last, with its reset."""
    gw = gateway_factory(redis_url=backend_url)
    set_plan(gw.settings.database_url, "alice", "both", "requests=2/1m,requests=2/1d")
    with gw.client() as http:
        answers = [http.get("/v1/models") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    denied = answers[2]
    error = denied.json()["error"]
    assert error["details"]["window_seconds"] == 86400 and "2 requests per 1d" in error["message"], error
    assert int(denied.headers["x-ratelimit-reset"]) % 86400 == 0  # the day's end, not the minute's


def test_a_redis_outage_is_one_warning_line_not_one_per_request(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis gone and QUOTA_FAILURE_MODE=open every request was served, and every request
    logged the same warnings again ("quota store unavailable; admitting without a quota check",
    "could not cache a ... entry", ...): thousands of identical lines a second at full load, when
    operators need readable logs. Each is written once (then once a minute, with the count)."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    with RedisServerProcess(tmp_path, REDIS_BIN) as redis_server:
        gw = gateway_factory(redis_url=redis_server.url, quota_failure_mode="open")
        with gw.client() as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
            redis_server.kill9()
            with caplog.at_level(logging.WARNING):
                answers = [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(20)]
    assert answers == [200] * 20
    warnings = Counter(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("sentinel"))
    assert warnings["quota store unavailable; admitting without a quota check (QUOTA_FAILURE_MODE=open)"] == 1
    assert warnings and set(warnings.values()) == {1}, warnings


def test_a_redis_that_may_evict_quota_counters_is_warned_of_at_start(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full Redis under `maxmemory-policy volatile-lru` (the default of several managed Redis, and
    once recommended here) evicts keys with a TTL: every quota counter, revoked key's tombstone and
    console sign-out. A user whose counters were evicted starts again from 0, beyond their plan, and
    nothing said so. Start-up now says so, naming the policy; with `noeviction` it says nothing."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "maxmemory-policy" in r.getMessage()]

    with RedisServerProcess(tmp_path, REDIS_BIN) as redis_server:
        with caplog.at_level(logging.WARNING):
            gateway_factory(redis_url=redis_server.url)
        assert warnings() == []
        with redis.Redis(port=redis_server.port) as admin:
            admin.config_set("maxmemory", "100mb")
            admin.config_set("maxmemory-policy", "volatile-lru")
        with caplog.at_level(logging.WARNING):
            gw = gateway_factory(redis_url=redis_server.url)
        assert len(warnings()) == 1 and "maxmemory-policy volatile-lru" in warnings()[0], warnings()
        with gw.client() as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # a warning, not a refusal


_LIMIT = {"metric": "requests", "window_seconds": 60, "limit": 3, "external": None}
_EXTERNAL = {"used": 0, "snapshot": "snap-1", "resets_at": None}


@pytest.mark.parametrize("limits", [
    [[1]], ["x"], {"requests": 3}, "requests=3/1m",
    [{**_LIMIT, "external": {**_EXTERNAL, "used": "5"}}],
    [{**_LIMIT, "external": {**_EXTERNAL, "used": 1.5}}],
    [{**_LIMIT, "external": {**_EXTERNAL, "resets_at": "soon"}}],
], ids=["list", "text", "object", "spec", "used-text", "used-fraction", "resets-text"])
def test_an_unreadable_cached_plan_is_a_miss_never_a_500(
    gateway_factory: Callable[..., Gateway], limits: object,
) -> None:
    """A cached plan entry of the wrong shape (another version's, corruption) is a miss: the user's
    plan is read again and enforced. A limit that was not an object, or an external `used` or
    `resets_at` of the wrong type, was a 500 for every request of that user until it expired."""
    import orjson

    gw = gateway_factory()
    set_plan(gw.settings.database_url, "alice", "tiny", "requests=2/1d")
    gw.write_stored("sentinel:limits:alice",
                    orjson.dumps({"v": {"name": "p", "limits": limits}, "fresh_until": time.time() + 600}), 600)
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429], answers[-1].text


def test_a_plan_change_made_through_one_process_binds_another_sharing_redis_at_once(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Two processes on one Redis and one database. A user moved to a smaller plan mid-window through
    the first's admin API is refused by the second at once (within its one-second local copy, not
    CACHE_TTL_SECONDS, 300 s, later), on what she already used; a plan deleted while she holds it puts
    her on DEFAULT_PLAN in the second at once too, and a plan edited in place likewise."""
    admin_key = "admin-key-for-the-two-process-plans"
    first = gateway_factory(redis_url=redis_url, admin_key=admin_key, default_plan="requests=100/1d")
    second = gateway_factory(redis_url=redis_url, database_url=first.settings.database_url,
                             default_plan="requests=100/1d")
    with first.admin() as admin, second.client() as alice:
        for name, limit in (("big", 10), ("small", 3)):
            body = {"limits": [{"metric": "requests", "limit": limit, "window": "1d"}]}
            assert admin.put(f"/admin/api/plans/{name}", json=body).status_code == 200
        assert admin.put("/admin/api/users/alice/plan", json={"plan": "big"}).status_code == 200
        answers = [alice.post("/v1/chat/completions", json=CHAT) for _ in range(4)]
        assert [(r.status_code, r.headers["x-ratelimit-limit"]) for r in answers] == [(200, "10")] * 4
        assert admin.put("/admin/api/users/alice/plan", json={"plan": "small"}).status_code == 200

        def refused() -> bool:  # admitted only by a local copy of the plan before (a second at most)
            return alice.post("/v1/chat/completions", json=CHAT).status_code == 429

        assert wait_for(refused, timeout=10)
        assert admin.delete("/admin/api/plans/small").status_code in (200, 204)

        def on_default() -> bool:
            r = alice.post("/v1/chat/completions", json=CHAT)
            return r.status_code == 200 and r.headers["x-ratelimit-limit"] == "100"

        assert wait_for(on_default, timeout=10)
        assert admin.put("/admin/api/users/alice/plan", json={"plan": "big"}).status_code == 200
        body = {"limits": [{"metric": "requests", "limit": 2, "window": "1d"}]}
        assert admin.put("/admin/api/plans/big", json=body).status_code == 200
        assert wait_for(refused, timeout=10)


def test_a_default_plan_changed_at_a_restart_applies_at_once_to_plans_cached_before(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """DEFAULT_PLAN is lowered (or raised) and Sentinel restarted on the same Redis: the plans cached
    under the old one (CACHE_TTL_SECONDS, 300 s; nothing drops them, as a plan edited through the admin
    API is) were enforced that long. Each cached plan now carries the configuration it was made under,
    and one made under another is read again. A replica still on the old configuration keeps its own."""
    before = gateway_factory(redis_url=redis_url, default_plan="requests=50/1d")
    with before.client() as alice:
        answer = alice.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200 and answer.headers["x-ratelimit-limit"] == "50"
    assert before.read_stored("sentinel:limits:alice") is not None  # cached for CACHE_TTL_SECONDS
    after = gateway_factory(redis_url=redis_url, database_url=before.settings.database_url,
                            default_plan="requests=2/1d")
    with after.client() as alice:
        answers = [alice.post("/v1/chat/completions", json=CHAT) for _ in range(2)]
    # On what she used under the old one: one request of the two.
    assert (answers[0].status_code, answers[0].headers["x-ratelimit-limit"]) == (200, "2"), answers[0].text
    assert answers[1].status_code == 429, answers[1].text
    with before.client() as alice:  # the old configuration's replica enforces its own plan
        answer = alice.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200 and answer.headers["x-ratelimit-limit"] == "50"


def test_concurrent_requests_on_every_surface_admit_exactly_a_request_limit(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """48 requests at once from one user, spread over every metered surface (`/v1/chat/completions`,
    `/v1/messages`, the native API, the model list), against 10 requests a day: exactly 10 are
    admitted, whichever surface each came by, and the counter holds 10 — none over-admitted by a
    surface checking apart, none counted twice."""
    gw = gateway_factory(redis_url=backend_url, default_plan="requests=10/1d", admin_key="admin-key-for-tests-0123",
                         window_clock=FakeClock(1_800_000_000.0))  # (all in one window)
    calls = [
        ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 5}),
        ("POST", "/v1/messages", {"model": "claude-3-5-haiku-20241022", "max_tokens": 5,
                                  "messages": [{"role": "user", "content": "quota please"}]}),
        ("POST", "/native/v1/chat/completions", {"messages": [{"role": "user", "content": "quota please"}],
                                                 "max_tokens": 5}),
        ("GET", "/v1/models", None),
    ]
    headers = {"Authorization": f"Bearer {gw.key}", "anthropic-version": "2023-06-01", "X-Mock-Latency-Ms": "200"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as http:
            return await asyncio.gather(*(
                http.request(method, path, json=body) for method, path, body in (calls[i % 4] for i in range(48))))

    answers = asyncio.run(burst())
    assert Counter(r.status_code for r in answers) == {200: 10, 429: 38}, [r.text for r in answers if r.status_code
                                                                           not in (200, 429)]
    assert gw.quota_used()["requests"] == 10


def test_what_local_mode_counted_while_redis_was_away_counts_on_redis_after(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """QUOTA_FAILURE_MODE=local: the requests the in-process limiter admitted while Redis was away
    were never told to Redis, so once it answered again the user had the whole plan there on top (4
    more of a plan of 5 after 1 on Redis and 2 in-process). Its counts are handed back to Redis
    first: the user gets what is left of the plan, 2, and Redis counts 5."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    clock = FakeClock(1_800_000_000.0)  # one day's window throughout
    with RedisServerProcess(tmp_path, REDIS_BIN, durable=True) as redis_server:
        gw = gateway_factory(redis_url=redis_server.url, quota_failure_mode="local", window_clock=clock,
                             default_plan="requests=5/1d", admin_key="admin-key-for-tests-0123")
        with gw.client() as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # counted on Redis
            redis_server.kill9()
            during = [http.post("/v1/chat/completions", json=CHAT) for _ in range(2)]
            assert [r.status_code for r in during] == [200, 200], during[-1].text
            assert [r.headers["x-ratelimit-remaining"] for r in during] == ["4", "3"]  # this process's count
            redis_server.start()

            def store_answers() -> bool:
                checks = http.get("/health").json()["checks"]
                return bool(checks["store"]["status"] == "healthy")

            assert wait_for(store_answers)
            after = [http.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
        assert [r.status_code for r in after] == [200, 200, 429], [r.text for r in after]
        assert [r.headers["x-ratelimit-remaining"] for r in after[:2]] == ["1", "0"]
        assert gw.quota_used()["requests"] == 5
        assert len({row["request_id"] for row in gw.settled_rows(5)}) == 5
