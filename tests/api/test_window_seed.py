"""A plan change that gives a user a limit over a window the user had no limit over seeds that
window's counter from the usage ledger (README, Quotas): tightening 5 an hour to 5 a day does not
hand a user who used 5 this hour 5 more. Through the admin API and the openai SDK, on the in-process
store and on a real Redis, the windows on the gateway's (still) window clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import redis

from sentinel.domain.usage import UsageRecord
from sentinel.governance.ledger import SqlLedger
from sentinel.quota.outbox import RedisStreamOutbox, SqlOutbox
from tests.api.conftest import Gateway
from tests.conftest import REDIS_BIN, unavailable
from tests.support.accounts import database
from tests.support.attack import ledger_rows
from tests.support.clock import FakeClock
from tests.support.outbox import usage_record
from tests.support.process import RedisServerProcess
from tests.support.waiting import wait_for

ADMIN_KEY = "admin-key-for-tests-0123"


def started(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> tuple[Gateway, FakeClock]:
    # The window clock stands at the wall clock's now: the ledger's rows are stamped on the wall
    # clock, so they fall in the windows current on it (the windows never move under the test).
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=0.05)
    return gw, clock


def plan(admin: httpx.Client, name: str, *limits: tuple[str, int, str]) -> None:
    body = {"limits": [{"metric": metric, "limit": limit, "window": window} for metric, limit, window in limits]}
    answer = admin.put(f"/admin/api/plans/{name}", json=body)
    assert answer.status_code == 200, answer.text


def put_on(admin: httpx.Client, user: str, name: str | None) -> None:
    answer = admin.put(f"/admin/api/users/{user}/plan", json={"plan": name})
    assert answer.status_code == 200, answer.text


def chat(client: openai.OpenAI) -> int:
    """One chat request's status (200, or the refusal's)."""
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "seed me"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_a_window_tightened_from_an_hour_to_a_day_counts_what_the_hour_used(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    gw, _ = started(gateway_factory, backend_url)
    client = gw.openai()
    with gw.admin() as admin:
        plan(admin, "team", ("requests", 5, "1h"))
        put_on(admin, "alice", "team")
        assert [chat(client) for _ in range(6)] == [200] * 5 + [429]
        gw.settled_rows(5)  # delivered to the ledger
        plan(admin, "team", ("requests", 5, "1d"))  # the operator tightens the plan
        assert chat(client) == 429  # the day's counter starts at the 5 used this hour, not at 0
        assert gw.quota_used() == {"requests": 5}


def test_a_user_moved_to_a_plan_of_other_windows_keeps_what_was_used(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Each metric of the new plan's windows is seeded with its own figure (requests: rows; tokens:
    their sums), and a window a user comes back to is raised to what the ledger holds (its counter,
    live, had missed what was used under the other plan meanwhile)."""
    gw, _ = started(gateway_factory, backend_url)
    client = gw.openai()
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 6, "1d"))
        plan(admin, "hourly", ("requests", 6, "1h"), ("input_tokens", 1_000_000, "1h"))
        put_on(admin, "alice", "daily")
        assert [chat(client) for _ in range(2)] == [200] * 2
        rows = gw.settled_rows(2)
        put_on(admin, "alice", "hourly")
        assert gw.quota_used() == {"requests": 2, "input_tokens": sum(row["input_tokens"] for row in rows)}
        assert [chat(client) for _ in range(2)] == [200] * 2  # 4 of 6 this hour
        gw.settled_rows(4)
        put_on(admin, "alice", "daily")  # its day counter, still live, held 2
        assert [chat(client) for _ in range(3)] == [200, 200, 429]


def test_a_new_window_without_usage_admits_normally(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    gw, _ = started(gateway_factory, backend_url)
    client = gw.openai()
    with gw.admin() as admin:
        plan(admin, "hourly", ("requests", 3, "1h"))
        plan(admin, "daily", ("requests", 3, "1d"))
        put_on(admin, "alice", "hourly")
        put_on(admin, "alice", "daily")
        assert [chat(client) for _ in range(4)] == [200] * 3 + [429]


def test_a_plan_change_never_lowers_a_live_counter(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A counter already above what the ledger holds (requests still running, records not yet
    delivered, another replica's count) keeps its count: the seed only ever raises one."""
    gw, clock = started(gateway_factory, backend_url)
    client = gw.openai()
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 10, "1d"))
        plan(admin, "hourly", ("requests", 10, "1h"))
        put_on(admin, "alice", "daily")
        assert chat(client) == 200
        gw.settled_rows(1)
        hour = f"sentinel:quota:{{alice}}:requests:3600:{math.floor(clock() / 3600)}"
        gw.write_stored(hour, b"8", 3600)  # counted in the hour already, not in the ledger
        put_on(admin, "alice", "hourly")
        assert gw.read_stored(hour) == b"8"
        assert [chat(client) for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_a_plan_edit_seeds_every_user_on_the_plan_in_one_go(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A plan's users are seeded together (one ledger query for all of them), each from their own usage."""
    gw, _ = started(gateway_factory, backend_url)
    with gw.admin() as admin:
        plan(admin, "team", ("requests", 4, "1h"))
        keys = {}
        for user in ("bob", "carol"):
            put_on(admin, user, "team")
            created = admin.post(f"/admin/api/users/{user}/keys", json={"name": "job"})
            assert created.status_code == 201, created.text
            keys[user] = created.json()["key"]
        bob, carol = (openai.OpenAI(base_url=gw.url + "/v1", api_key=keys[user], max_retries=0)
                      for user in ("bob", "carol"))
        assert [chat(bob) for _ in range(3)] == [200] * 3
        assert chat(carol) == 200
        gw.settled_rows(3, "bob")
        gw.settled_rows(1, "carol")
        plan(admin, "team", ("requests", 4, "1d"))
        assert [chat(bob) for _ in range(2)] == [200, 429]
        assert [chat(carol) for _ in range(4)] == [200, 200, 200, 429]


def restarted(gw: Gateway, gateway_factory: Callable[..., Gateway], clock: FakeClock, default_plan: str) -> Gateway:
    """`gw` stopped and a gateway started in its place on the same database and store (its Redis; the
    in-process store starts empty) with another DEFAULT_PLAN, the same window clock."""
    gw.server.stop()
    return gateway_factory(redis_url=gw.settings.redis_url, database_url=gw.settings.database_url,
                           admin_key=ADMIN_KEY, window_clock=clock, default_plan=default_plan)


def test_a_default_plan_changed_by_a_restart_counts_what_its_new_window_used(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """README, Quotas: a user on the default plan who used 4 requests today, DEFAULT_PLAN changed from
    100 a minute to 5 a day by a restart, has 1 more today, not 5."""
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=0.05, default_plan="requests=100/60s")
    client = gw.openai()
    assert [chat(client) for _ in range(4)] == [200] * 4
    gw.settled_rows(4)
    again = restarted(gw, gateway_factory, clock, "requests=5/1d")
    assert again.quota_used() == {"requests": 4}  # seeded before the gateway served
    assert [chat(again.openai()) for _ in range(2)] == [200, 429]


def test_a_default_plan_change_leaves_users_on_a_plan_of_their_own_alone(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Only users on the default plan are seeded: a user on an assigned plan keeps that plan's counts."""
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=0.05, default_plan="requests=100/60s")
    with gw.admin() as admin:
        plan(admin, "team", ("requests", 100, "1h"))
        put_on(admin, "alice", "team")
    client = gw.openai()
    assert [chat(client) for _ in range(4)] == [200] * 4
    gw.settled_rows(4)
    again = restarted(gw, gateway_factory, clock, "requests=5/1d")
    day = f"sentinel:quota:{{alice}}:requests:86400:{math.floor(clock() / 86400)}"
    assert again.read_stored(day) is None  # not on the default plan: its day is none of hers
    with again.admin() as admin:
        put_on(admin, "alice", None)  # on the default plan now: seeded by the plan change itself
    assert [chat(again.openai()) for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
def test_replicas_restarted_together_under_a_new_default_plan_seed_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Two replicas started on the same Redis and database under the new DEFAULT_PLAN each seed its
    new window: the counter is raised to the ledger's figure, not added to twice."""
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=0.05, default_plan="requests=100/60s")
    assert [chat(gw.openai()) for _ in range(3)] == [200] * 3
    gw.settled_rows(3)
    gw.server.stop()
    first, second = (gateway_factory(redis_url=backend_url, database_url=gw.settings.database_url,
                                     admin_key=ADMIN_KEY, window_clock=clock, default_plan="requests=5/1d")
                     for _ in range(2))
    assert first.quota_used() == {"requests": 3}
    assert [chat(second.openai()), chat(first.openai()), chat(second.openai())] == [200, 200, 429]


def test_a_default_plan_seed_the_store_cannot_take_at_start_is_retried_in_the_background(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis away when the gateway starts under the new DEFAULT_PLAN: it starts all the same, says
    the seed is not done, and seeds once Redis answers (the counters Redis lost come from the ledger)."""
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    clock = FakeClock(time.time())
    day = f"sentinel:quota:{{alice}}:requests:86400:{math.floor(clock() / 86400)}"
    with RedisServerProcess(tmp_path, REDIS_BIN) as redis_server:
        gw = gateway_factory(redis_url=redis_server.url, admin_key=ADMIN_KEY, window_clock=clock,
                             usage_flush_interval_seconds=0.05, default_plan="requests=100/60s")
        assert [chat(gw.openai()) for _ in range(4)] == [200] * 4
        gw.settled_rows(4)
        redis_server.kill9()
        with caplog.at_level(logging.WARNING):
            again = restarted(gw, gateway_factory, clock, "requests=5/1d")
        assert any("DEFAULT_PLAN's new windows not seeded yet" in r.getMessage() for r in caplog.records)
        redis_server.start()
        assert wait_for(lambda: again.read_stored(day) == b"4", timeout=30)
        assert [chat(again.openai()) for _ in range(2)] == [200, 429]


def requests_now(*request_ids: str) -> list[UsageRecord]:
    """Usage records of alice's requests started now (in the windows current on a clock at the wall's now)."""
    now = datetime.now(UTC)
    return [dataclasses.replace(usage_record(rid), started_at=now, finished_at=now) for rid in request_ids]


def left_behind(database_url: str, outbox: Sequence[UsageRecord], ledger: Sequence[UsageRecord] = ()) -> None:
    """`outbox` waiting in the SQL outbox (as a replica or a stream outage left them, not delivered yet)
    and `ledger` in the ledger."""

    async def write() -> None:
        async with database(database_url) as sessions:
            if ledger:
                await SqlLedger(sessions).record_batch(list(ledger))
            table = SqlOutbox(sessions)
            for record in outbox:
                await table.put(record)

    asyncio.run(write())


def test_a_plan_change_counts_the_records_still_in_the_sql_outbox(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Usage waiting in the SQL outbox (its deliverer idle here) is the user's too: a plan change to 5 a
    day after 4 such requests leaves 1, not 5."""
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=3600)
    left_behind(gw.settings.database_url, requests_now("req-1", "req-2", "req-3", "req-4"))
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 5, "1d"))
        put_on(admin, "alice", "daily")
    assert gw.quota_used() == {"requests": 4}
    assert [chat(gw.openai()) for _ in range(2)] == [200, 429]


def test_a_record_both_in_the_outbox_and_in_the_ledger_is_counted_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A record delivered to the ledger whose outbox row is not deleted yet (a deliverer that died
    between the two) is one request, by its request id."""
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=3600)
    delivered = requests_now("req-1", "req-2")
    left_behind(gw.settings.database_url, [*delivered, *requests_now("req-3", "req-4")], delivered)
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 5, "1d"))
        put_on(admin, "alice", "daily")
    assert gw.quota_used() == {"requests": 4}
    assert [chat(gw.openai()) for _ in range(2)] == [200, 429]


def on_the_stream(redis_url: str) -> list[UsageRecord]:
    """The usage records on Redis's usage stream (not delivered: the deliverer is idle here)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [UsageRecord.from_json(orjson.loads(fields[b"r"]))
                for _, fields in client.xrange(RedisStreamOutbox.KEY)]
    finally:
        client.close()


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
def test_a_plan_change_counts_the_records_still_on_the_usage_stream_once(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """On Redis a request's record goes to the usage stream first: 4 requests not delivered yet (the
    deliverer idle here), 2 of them delivered to the ledger but still on the stream (a deliverer that
    died before deleting them), are 4 requests of the day, not 0 nor 6."""
    assert backend_url is not None
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=3600)
    assert [chat(gw.openai()) for _ in range(4)] == [200] * 4
    streamed = on_the_stream(backend_url)
    assert len(streamed) == 4
    left_behind(gw.settings.database_url, [], streamed[:2])
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 5, "1d"))
        put_on(admin, "alice", "daily")
    assert gw.quota_used() == {"requests": 4}
    assert [chat(gw.openai()) for _ in range(2)] == [200, 429]


# A restart on the embedded in-process store (README, Quotas): the store kept no counter, so the start
# seeds every window of every user's plan from the ledger, whether DEFAULT_PLAN changed or not.


def restarted_alike(gw: Gateway, gateway_factory: Callable[..., Gateway], clock: FakeClock) -> Gateway:
    """`gw` stopped and one started in its place on the same database, under the same DEFAULT_PLAN."""
    return restarted(gw, gateway_factory, clock, gw.settings.default_plan)


def refused_changes_nothing(gw: Gateway, ask: Callable[[], int]) -> None:
    """`ask()` is refused 429 and leaves the counters as they were, and the ledger too: its rows, once
    the gateway stopped (its records all delivered), are the ones it held before."""
    used = gw.quota_used()
    rows = len(ledger_rows(gw.settings.database_url, "alice"))
    assert ask() == 429
    assert gw.quota_used() == used
    gw.server.stop()
    assert len(ledger_rows(gw.settings.database_url, "alice")) == rows


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_a_restart_on_the_in_process_store_keeps_what_an_assigned_plan_counted(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """alice on 5 requests a day used 4: the gateway restarted (a deploy, a crash) serves her 1 more, not 5."""
    gw, clock = started(gateway_factory, backend_url)
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 5, "1d"))
        put_on(admin, "alice", "daily")
    assert [chat(gw.openai()) for _ in range(4)] == [200] * 4
    gw.settled_rows(4)
    again = restarted_alike(gw, gateway_factory, clock)
    assert again.quota_used() == {"requests": 4}  # seeded before the gateway served
    client = again.openai()
    assert chat(client) == 200
    refused_changes_nothing(again, lambda: chat(client))


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_a_restart_on_the_in_process_store_keeps_what_the_default_plan_counted(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    clock = FakeClock(time.time())
    gw = gateway_factory(redis_url=backend_url, admin_key=ADMIN_KEY, window_clock=clock,
                         usage_flush_interval_seconds=0.05, default_plan="requests=5/1d")
    assert [chat(gw.openai()) for _ in range(4)] == [200] * 4
    gw.settled_rows(4)
    again = restarted_alike(gw, gateway_factory, clock)
    assert again.quota_used() == {"requests": 4}
    client = again.openai()
    assert chat(client) == 200
    refused_changes_nothing(again, lambda: chat(client))


def chat_reserving(client: openai.OpenAI, max_tokens: int) -> int:
    """One chat request's status, reserving `max_tokens` output tokens."""
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "seed me"}],
                                       max_tokens=max_tokens)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_a_restart_on_the_in_process_store_keeps_the_tokens_counted(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """Each token metric's window starts at the tokens of the day's requests: an output limit with room
    for one more request's reservation (not two) admits one after the restart, then refuses."""
    gw, clock = started(gateway_factory, backend_url)
    with gw.admin() as admin:
        plan(admin, "tokens", ("input_tokens", 1_000_000, "1d"), ("output_tokens", 1_000_000, "1d"))
        put_on(admin, "alice", "tokens")
        assert [chat_reserving(gw.openai(), 100) for _ in range(2)] == [200] * 2
        rows = gw.settled_rows(2)
        used = {"input_tokens": sum(row["input_tokens"] for row in rows),
                "output_tokens": sum(row["output_tokens"] for row in rows)}
        assert used["input_tokens"] > 0 and used["output_tokens"] > 0
        # The same windows, so the counters are kept: room for one more reservation of 100.
        plan(admin, "tokens", ("input_tokens", 1_000_000, "1d"), ("output_tokens", used["output_tokens"] + 100, "1d"))
    again = restarted_alike(gw, gateway_factory, clock)
    assert again.quota_used() == used
    client = again.openai()
    assert chat_reserving(client, 100) == 200
    refused_changes_nothing(again, lambda: chat_reserving(client, 100))


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_a_restart_on_the_in_process_store_counts_what_a_crash_left_in_the_sql_outbox(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """alice's 4 requests of the day are only in the SQL outbox (none in the ledger): the start finds her
    there and seeds her plan's window before its deliverer moves them to the ledger under the seed's reads."""
    gw, clock = started(gateway_factory, backend_url)
    with gw.admin() as admin:
        plan(admin, "daily", ("requests", 5, "1d"))
        put_on(admin, "alice", "daily")
    gw.server.stop()
    left_behind(gw.settings.database_url, requests_now("req-1", "req-2", "req-3", "req-4"))
    again = restarted_alike(gw, gateway_factory, clock)
    assert again.quota_used() == {"requests": 4}
    assert [chat(again.openai()) for _ in range(2)] == [200, 429]
