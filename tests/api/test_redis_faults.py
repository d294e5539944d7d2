"""Redis answering errors instead of results, while requests run through Sentinel.

Each test starts its own redis-server(s) and injects the fault with Redis's own commands: a full
Redis (`maxmemory` under `noeviction`: every write refused with OOM) and a failover behind one
address (the old primary, now a replica, answers writes READONLY on the connections Sentinel holds,
while new connections reach the promoted one — what DNS, a virtual IP or a proxy in front of
managed Redis do). The client gets a 503 in its surface's shape; once Redis takes writes again, no
reservation stays counted beyond the real usage, every served request's usage record reaches the
ledger, and Sentinel serves again without a restart.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis

from sentinel.quota.limiter import ADJUST, RESERVE
from tests.api.conftest import Gateway
from tests.api.test_quotas import ledger_totals, set_plan
from tests.conftest import REDIS_BIN, unavailable
from tests.support.attack import sqlite_file
from tests.support.clock import FakeClock
from tests.support.hung_db import HungProxy
from tests.support.process import RedisServerProcess
from tests.support.servers import serving
from tests.support.upstream import GatedUpstream
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "reconcile me"}], "max_tokens": 500}
USER = "alice"  # the gateway's key (gateway_factory)
PLAN = "requests=100/1d,output_tokens=100000/1d"
ADMIN_KEY = "admin-key-for-tests-0123"
T = TypeVar("T")


def redis_bin() -> str:
    if REDIS_BIN is None:
        unavailable("redis-server binary not found")
    assert REDIS_BIN is not None
    return REDIS_BIN


def counters(server: redis.Redis) -> dict[str, int]:
    """The user's quota counters by metric (one window per metric in `PLAN`; not the markers of
    reservations still to settle)."""
    found = {}
    for key in server.keys(f"sentinel:quota:{{{USER}}}:*"):
        metric = key.decode().split(":")[3]
        if metric != "reserved":
            found[metric] = int(server.get(key) or 0)
    return found


def unsettled(server: redis.Redis) -> list[bytes]:
    """The markers of the user's reservations still to settle."""
    return list(server.keys(f"sentinel:quota:{{{USER}}}:reserved:*"))


@contextmanager
def held_requests(gw: Gateway, upstream: GatedUpstream, count: int) -> Iterator[list[httpx.Response]]:
    """`count` chat requests admitted and held by `upstream` (the gateway's) until the block ends;
    their answers are there then."""
    answers: list[httpx.Response] = []

    def one() -> None:
        with gw.client() as http:
            answers.append(http.post("/v1/chat/completions", json=CHAT))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: upstream.arrived == count)
        yield answers
    finally:
        upstream.open()
        for thread in threads:
            thread.join()


def test_a_reconciliation_a_full_redis_refused_is_made_once_it_takes_writes(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Redis full (`maxmemory` under `noeviction`, as the README asks) refuses every write with OOM.
    Requests admitted before are served, and their usage records go to the database outbox; but
    their reconciliations were refused and never sent again, so each kept its whole reservation
    (500 output tokens for 2 used) counted until the day's end. Refused writes did not run: they are
    sent again once Redis takes writes, and the counters hold the real usage."""
    upstream = GatedUpstream()
    with RedisServerProcess(tmp_path, redis_bin()) as server, serving(upstream) as upstream_server:
        gw = gateway_factory(redis_url=server.url, openai_api_url=upstream_server.url + "/v1")
        set_plan(gw.settings.database_url, USER, "plan", PLAN)
        admin = redis.Redis(port=server.port)
        with held_requests(gw, upstream, 2) as answers:
            assert counters(admin) == {"requests": 2, "output_tokens": 1000}  # reserved
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        with gw.client() as http:
            refused = http.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "quota_unavailable"
        admin.config_set("maxmemory", "0")

        # 2 requests of 2 output tokens each (the upstream's usage), nothing more.
        assert wait_for(lambda: counters(admin) == {"requests": 2, "output_tokens": 4}), counters(admin)
        assert wait_for(lambda: ledger_totals(gw.settings.database_url, USER)["requests"] == 2)
        assert ledger_totals(gw.settings.database_url, USER)["output_tokens"] == 4


def test_a_failover_behind_one_address_is_followed_without_a_restart(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A primary and its replica behind one address (a proxy here; DNS or a virtual IP in managed
    Redis). The failover promotes the replica and demotes the old primary, whose connections
    Sentinel keeps: every write on them was answered READONLY — every metered request a 503, and
    the reconciliation of a request served across the failover refused — until Sentinel was
    restarted. A READONLY answer now drops the pooled connections: the next command reaches the new
    primary, the refused reconciliation is made there, and requests are served again."""
    upstream = GatedUpstream()
    with (
        RedisServerProcess(tmp_path, redis_bin()) as first,
        RedisServerProcess(tmp_path, redis_bin()) as second,
        serving(upstream) as upstream_server,
    ):
        old, new = redis.Redis(port=first.port), redis.Redis(port=second.port)
        new.replicaof("127.0.0.1", first.port)
        assert wait_for(lambda: new.info("replication")["master_link_status"] == "up")
        proxy = HungProxy(("127.0.0.1", first.port))
        try:
            gw = gateway_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0", openai_api_url=upstream_server.url + "/v1")
            set_plan(gw.settings.database_url, USER, "plan", PLAN)
            with held_requests(gw, upstream, 1) as answers:
                assert old.execute_command("WAIT", 1, 5000) == 1  # the replica holds the reservation
                assert counters(new) == {"requests": 1, "output_tokens": 500}
                new.replicaof("NO", "ONE")
                proxy.target = ("127.0.0.1", second.port)  # new connections reach the new primary
                old.replicaof("127.0.0.1", second.port)
            assert [a.status_code for a in answers] == [200]

            assert wait_for(lambda: counters(new) == {"requests": 1, "output_tokens": 2}), counters(new)
            with gw.client() as http:
                after = http.post("/v1/chat/completions", json=CHAT)
            assert after.status_code == 200, after.text
            assert wait_for(lambda: counters(new) == {"requests": 2, "output_tokens": 4}), counters(new)
            assert wait_for(lambda: ledger_totals(gw.settings.database_url, USER)["requests"] == 2)
        finally:
            proxy.close()


@contextmanager
def behind_a_proxy(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> Iterator[tuple[Gateway, GatedUpstream, HungProxy, redis.Redis]]:
    """A gateway on a Redis server reached through a proxy that can cut a command's connection
    (`HungProxy.cut_at`), USER on PLAN, a gated upstream, and a client of that server direct."""
    upstream = GatedUpstream()
    with RedisServerProcess(tmp_path, redis_bin()) as server, serving(upstream) as upstream_server:
        proxy = HungProxy(("127.0.0.1", server.port))
        try:
            gw = gateway_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                                 openai_api_url=upstream_server.url + "/v1")
            set_plan(gw.settings.database_url, USER, "plan", PLAN)
            yield gw, upstream, proxy, redis.Redis(port=server.port)
        finally:
            proxy.close()


@pytest.mark.parametrize("delivered", [False, True], ids=["not-run", "run"])
def test_a_reconciliation_whose_connection_was_cut_is_made_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, delivered: bool
) -> None:
    """The connection carrying a request's reconciliation is cut after Sentinel sent it: Redis ran
    it (its reply lost) or never got it — Sentinel cannot tell. It was not sent again, so one that
    never ran left the whole reservation (500 output tokens for 2 used) counted until the day's
    end. Now it is sent again, and runs once: the counters hold the real usage either way, and the
    usage record reaches the ledger once."""
    with behind_a_proxy(gateway_factory, tmp_path) as (gw, upstream, proxy, admin):
        with held_requests(gw, upstream, 1) as answers:
            assert counters(admin) == {"requests": 1, "output_tokens": 500}
            [output] = admin.keys(f"sentinel:quota:{{{USER}}}:output_tokens:*")
            admin.script_load(ADJUST.lua)  # Redis knows it: the cut command is the script's run, not NOSCRIPT
            proxy.cut_at(output, delivered=delivered)  # the next command naming it: the settlement
        assert [a.status_code for a in answers] == [200], [a.text for a in answers]
        assert wait_for(lambda: proxy.cut == 1)
        assert wait_for(lambda: counters(admin) == {"requests": 1, "output_tokens": 2}), counters(admin)
        assert unsettled(admin) == []
        assert wait_for(lambda: ledger_totals(gw.settings.database_url, USER)["requests"] == 1)
        assert ledger_totals(gw.settings.database_url, USER)["output_tokens"] == 2


@pytest.mark.parametrize("delivered", [False, True], ids=["not-run", "run"])
def test_a_reservation_whose_connection_was_cut_is_refused_and_counts_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, delivered: bool
) -> None:
    """The connection carrying a request's reservation is cut after Sentinel sent it: Redis ran it
    (its reply lost) or never got it. The request is refused (503 `quota_unavailable`, closed
    mode) either way — but one that ran left a request and 500 output tokens counted until the
    day's end, with nobody to settle them. Its token is made before it is sent, so it is given back
    now, in the background: once if it ran, not at all if it did not (no other request's amounts
    taken), and the next request is served and counted alone."""
    with behind_a_proxy(gateway_factory, tmp_path) as (gw, upstream, proxy, admin):
        for script in (RESERVE, ADJUST):
            admin.script_load(script.lua)  # Redis knows them: the cut command is the script's run
        proxy.cut_at(f"sentinel:quota:{{{USER}}}:requests:".encode(), delivered=delivered)
        with gw.client() as http:
            refused = http.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "quota_unavailable" and proxy.cut == 1
        # Given back (its marker gone), or, never run, a tombstone in its marker's place: none left to settle.
        done = [b"0"] * (not delivered)
        assert wait_for(lambda: [admin.get(key) for key in unsettled(admin)] == done), unsettled(admin)
        assert counters(admin).get("requests", 0) == 0, counters(admin)
        upstream.open()
        with gw.client() as http:
            served = http.post("/v1/chat/completions", json=CHAT)
        assert served.status_code == 200, served.text
        assert wait_for(lambda: counters(admin) == {"requests": 1, "output_tokens": 2}), counters(admin)


def on_loop(gw: Gateway, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` awaited on the gateway's own event loop (its store's and database's clients live there)."""
    loop = gw.server.server.servers[0].get_loop()
    return asyncio.run_coroutine_threadsafe(_awaited(call), loop).result(30)


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


def finisher_by_hand(gw: Gateway) -> Callable[[], int]:
    """The gateway's finisher of unfinished plan changes, its background loop stopped: each call is
    one round (`PlanFinisher.run_once`: how many changes are left), so the test says when it runs."""
    finisher = gw.runtime.plan_finisher
    assert finisher is not None
    on_loop(gw, finisher.stop)
    return lambda: on_loop(gw, finisher.run_once)


def test_a_plan_change_redis_did_not_hear_about_is_a_503_and_the_gateway_finishes_it_once_redis_is_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Redis stopped: a plan change was saved and audited, 200, while its users' cached plans stayed in
    Redis. It became a 503 saying so (as a revocation's), but then nothing dropped them once Redis was
    back: a user moved to the default plan (100 requests a minute) went on being served under the old
    one for up to CACHE_TTL_SECONDS unless the operator made the change again. The change is kept in
    the database and the gateway finishes it once Redis answers: the user's cached plan is the new one."""
    with RedisServerProcess(tmp_path, redis_bin(), durable=True) as server:  # the cached plan survives its stop
        gw = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY)
        with gw.admin() as http, gw.client() as alice:

            def limit() -> str:
                answer = alice.post("/v1/chat/completions", json=CHAT)
                assert answer.status_code == 200, answer.text
                return str(answer.headers["x-ratelimit-limit"])

            set_plan(gw.settings.database_url, USER, "gold", "requests=1000/1m")  # no change's hold to wait out
            assert limit() == "1000"  # the plan cached in Redis
            server.stop()
            changes = [("PUT", "/admin/api/plans/gold", {"limits": [{"metric": "requests", "limit": 500, "window": "1m"}]}),
                       ("PUT", f"/admin/api/users/{USER}/plan", {"plan": None})]
            for method, path, body in changes:
                refused = http.request(method, path, json=body)
                assert refused.status_code == 503, (path, refused.status_code, refused.text)
                error = refused.json()["error"]
                assert error["type"] == "service_unavailable" and error["code"] == "plan_change_incomplete", error
                assert error["details"] == {"saved": True, "users": [USER], "user_count": 1, "finishing": True}
                assert "CACHE_TTL_SECONDS" in error["message"] and "by itself" in error["message"], error["message"]
            finish = finisher_by_hand(gw)  # (nothing can be finished before Redis is back)
            assert finish() == 2  # Redis still down: both kept
            server.start()
            # Waited for by the store's health, not by a request: a request whose plan read failed while
            # Redis came back would cache the plan the database holds now, the change's, racing the finisher.
            assert wait_for(lambda: alice.get("/health/ready").status_code == 200)
            assert limit() == "1000"  # the plan cached before the change, as the 503 warned, until it is finished
            assert finish() == 0
            assert limit() == "100"  # DEFAULT_PLAN
            assert finish() == 0  # nothing left to finish
            audit = [e["action"] for e in http.get("/admin/api/audit").json()["entries"]]
            assert audit == ["user.plan", "plan.update"]  # both saved (and audited) at the first try, once
            assert http.put(f"/admin/api/users/{USER}/plan", json={"plan": None}).status_code == 200  # made again
            assert limit() == "100"


def test_a_plan_change_the_cli_made_while_redis_was_down_is_finished_by_a_running_gateway(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """`sentinel users set-plan` with Redis stopped exits 3 (saved, the cached plan not dropped); the
    command line has no gateway to finish it, so it keeps the change in the database, and a running
    gateway finishes it once Redis answers."""
    with RedisServerProcess(tmp_path, redis_bin(), durable=True) as server:
        gw = gateway_factory(redis_url=server.url)
        with gw.client() as alice:

            def limit() -> str:
                answer = alice.post("/v1/chat/completions", json=CHAT)
                assert answer.status_code == 200, answer.text
                return str(answer.headers["x-ratelimit-limit"])

            set_plan(gw.settings.database_url, USER, "gold", "requests=1000/1m")
            assert limit() == "1000"
            server.stop()
            env = {**os.environ, "DATABASE_URL": gw.settings.database_url, "REDIS_URL": server.url}
            result = subprocess.run([sys.executable, "-m", "sentinel", "users", "set-plan", USER, "--default"],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
            assert "by itself" in result.stderr and "Traceback" not in result.stderr, result.stderr
            finish = finisher_by_hand(gw)
            server.start()
            # Waited for by the store's health, not by a request: a request whose plan read failed while
            # Redis came back would cache the plan the database holds now, the change's, racing the finisher.
            assert wait_for(lambda: alice.get("/health/ready").status_code == 200)
            assert limit() == "1000"
            assert finish() == 0
            assert limit() == "100"


def test_a_window_change_redis_did_not_hear_about_is_a_503_and_the_gateway_seeds_the_window_once_redis_is_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A plan change giving a user a new window seeds its counter from the ledger (README, Quotas); with
    Redis stopped it cannot: the change is saved, and the 503 says the counters were not seeded either.
    Nothing seeded them once Redis was back (only the change made again did): tightened from 5 an hour
    to 5 a day, a user who used 5 this hour had 5 more. The gateway finishes it: the day's counter
    holds the ledger's 5, and the user is refused."""
    with RedisServerProcess(tmp_path, redis_bin(), durable=True) as server:
        gw = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY, window_clock=FakeClock(time.time()),
                             usage_flush_interval_seconds=0.05)
        hourly = {"limits": [{"metric": "requests", "limit": 5, "window": "1h"}]}
        daily = {"limits": [{"metric": "requests", "limit": 5, "window": "1d"}]}
        with gw.admin() as http, gw.client() as alice:
            assert http.put("/admin/api/plans/team", json=hourly).status_code == 200
            assert http.put(f"/admin/api/users/{USER}/plan", json={"plan": "team"}).status_code == 200
            assert [alice.post("/v1/chat/completions", json=CHAT).status_code for _ in range(5)] == [200] * 5
            gw.settled_rows(5)
            server.stop()
            refused = http.put("/admin/api/plans/team", json=daily)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "plan_change_incomplete" and error["details"]["finishing"] is True, error
            assert "CACHE_TTL_SECONDS" in error["message"] and "seeded" in error["message"], error["message"]
            assert "by itself" in error["message"], error["message"]
            finish = finisher_by_hand(gw)
            server.start()
            assert wait_for(lambda: http.get("/health/ready").status_code == 200)
            assert finish() == 0
            assert gw.quota_used() == {"requests": 5}  # the day's counter, seeded from the ledger
            assert alice.post("/v1/chat/completions", json=CHAT).status_code == 429


def test_a_plan_change_left_unfinished_at_a_restart_is_finished_by_the_gateway_started_after(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """The change is kept in the database, not in the process that made it: a gateway stopped before
    Redis came back leaves it to the next one started on that database."""
    with RedisServerProcess(tmp_path, redis_bin(), durable=True) as server:
        before = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY)
        set_plan(before.settings.database_url, USER, "gold", "requests=1000/1m")
        with before.client() as alice:
            assert alice.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-limit"] == "1000"  # cached
        server.stop()
        with before.admin() as http:
            refused = http.put(f"/admin/api/users/{USER}/plan", json={"plan": None})
        assert refused.status_code == 503 and refused.json()["error"]["details"]["finishing"] is True, refused.text
        before.server.stop()  # shut down with the change unfinished
        server.start()
        after = gateway_factory(redis_url=server.url, database_url=before.settings.database_url)
        assert finisher_by_hand(after)() == 0  # finished (by this round, or by the loop's first at start)
        with after.client() as alice:
            answer = alice.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200 and answer.headers["x-ratelimit-limit"] == "100", answer.text


def _rows(database_url: str, sql: str) -> list[str]:
    with closing(sqlite3.connect(sqlite_file(database_url), timeout=10)) as conn:
        return [str(row[0]) for row in conn.execute(sql)]


def test_a_plan_change_whose_process_was_killed_before_its_follow_up_is_finished_by_the_gateway_started_after(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """`sentinel plans set` killed (SIGKILL) once the change was saved, while its follow-up waited on
    Redis (writes paused, `CLIENT PAUSE`): the change was kept for a gateway only once its follow-up had
    failed, so it was lost with the process — the plan cached before it (10 an hour) served on, and the
    new window counted from 0 (tightened to 5 a day, a user who used 5 had 5 more). The follow-up is
    written with the change, in its transaction: the gateway started after finishes it — the cached plan
    dropped, the day's counter seeded from the ledger, the user refused. A change whose follow-up is done
    leaves nothing kept."""
    clock = FakeClock(time.time())
    with RedisServerProcess(tmp_path, redis_bin()) as server:
        before = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY, window_clock=clock,
                                 usage_flush_interval_seconds=0.05)
        database_url = before.settings.database_url
        hourly = {"limits": [{"metric": "requests", "limit": 10, "window": "1h"}]}
        with before.admin() as http, before.client() as alice:
            assert http.put("/admin/api/plans/team", json=hourly).status_code == 200
            assert http.put(f"/admin/api/users/{USER}/plan", json={"plan": "team"}).status_code == 200
            assert [alice.post("/v1/chat/completions", json=CHAT).status_code for _ in range(5)] == [200] * 5
        before.settled_rows(5)
        assert _rows(database_url, "SELECT users FROM unfinished_plan_changes") == []  # both done: none kept
        before.server.stop()  # the gateway started after finishes the change
        paused = redis.Redis.from_url(server.url)
        paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the follow-up's writes wait
        try:
            env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": server.url, "REDIS_TIMEOUT_SECONDS": "60"}
            cli = subprocess.Popen([sys.executable, "-m", "sentinel", "plans", "set", "team", "--limit", "requests=5/1d"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                saved = wait_for(lambda: "plan.update" in _rows(database_url, "SELECT action FROM audit_log"))
            finally:
                cli.kill()  # saved (and audited, in its transaction), its follow-up under way
                cli.wait(30)
        finally:
            paused.execute_command("CLIENT", "UNPAUSE")
            paused.close()
        assert saved and cli.returncode == -9
        after = gateway_factory(redis_url=server.url, database_url=database_url, admin_key=ADMIN_KEY,
                                window_clock=clock)
        assert finisher_by_hand(after)() == 0  # finished (by this round, or by the loop's first at start)
        with after.client() as alice:
            refused = alice.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429 and refused.headers["x-ratelimit-limit"] == "5", refused.text
        assert after.quota_used() == {"requests": 5}  # the day's counter, seeded from the ledger
        assert _rows(database_url, "SELECT users FROM unfinished_plan_changes") == []  # and forgotten
