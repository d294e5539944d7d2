"""A Redis that lost its data (FLUSHALL, a restart without persistence) while Sentinel runs.

Every quota counter went with it, and each user could use a plan's worth again in the windows under
way, silently. The gateway notices (its marker key is gone: `sentinel.services.store_loss`), says so
(an ERROR line, `sentinel_store_data_lost_total`) and seeds every window of every user's plan from
the usage ledger. The tests stop the gateway's loop and run its rounds themselves (`run_once`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.api.test_redis_faults import ADMIN_KEY, CHAT, USER, on_loop, redis_bin
from tests.support.clock import FakeClock
from tests.support.fake_zion import FakeZion
from tests.support.process import RedisServerProcess
from tests.support.redis_cluster import LocalRedisCluster, redis_cluster, redis_cluster_url
from tests.support.servers import serving
from tests.support.waiting import wait_for

__all__ = ["redis_cluster", "redis_cluster_url"]

LOST = "lost its data"


def loss_by_hand(gw: Gateway) -> Callable[[], bool]:
    """The gateway's watch of its store, its background loop stopped: each call is one round
    (`StoreLoss.run_once`: the marker read, and the seed owed run), so the test says when it runs."""
    loss = gw.runtime.store_loss
    assert loss is not None
    on_loop(gw, loss.stop)
    return lambda: on_loop(gw, loss.run_once)


def statuses(http: httpx.Client, count: int) -> list[int]:
    return [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(count)]


def losses(http: httpx.Client) -> float:
    found = re.search(r"^sentinel_store_data_lost_total (\S+)$", http.get("/metrics").text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and LOST in r.getMessage()]


@contextmanager
def lost_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    """A store of `kind` (`redis`: one server; `cluster`: a Redis Cluster; `shard`: one primary of a
    Cluster alone), as its URL and a way to lose its data (FLUSHALL, on each primary of a Cluster; on
    the primary holding the user's counters alone, not the one holding the first marker —
    `sentinel:epoch`'s own slot —, as a failover to a replica that had not synced does)."""
    if kind in ("cluster", "shard"):
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        url = request.getfixturevalue("redis_cluster_url")
        if kind == "cluster":
            yield url, cluster.flush
            return
        shard = cluster.primary_of(f"sentinel:quota:{{{USER}}}:requests")
        assert shard != cluster.primary_of("sentinel:epoch")  # the case one marker on one shard missed

        def flush_shard() -> None:
            with shard.client() as admin:
                admin.flushall()

        yield url, flush_shard
        return
    with RedisServerProcess(tmp_path, redis_bin()) as server, redis.Redis(port=server.port) as admin:
        yield server.url, admin.flushall


@pytest.mark.parametrize("kind", ["redis", "cluster", "shard"])
def test_a_redis_that_lost_its_data_is_seeded_again_from_the_ledger_and_said_so(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest, kind: str,
) -> None:
    """5 requests a day, 4 used, then Redis's FLUSHALL: every counter gone, and the user had 5 more
    (nothing said so). The gateway's next round notices, logs an ERROR once, counts it, and seeds the
    day's counter from the ledger: 1 more, then 429 — on one Redis and on a Cluster alike, and when
    one shard of a Cluster alone lost its data (a marker on each primary: one on another shard saw
    nothing, and the user had 5 more)."""
    with lost_store(kind, request, tmp_path) as (url, lose):
        gw = gateway_factory(redis_url=url, admin_key=ADMIN_KEY, window_clock=FakeClock(time.time()),
                             usage_flush_interval_seconds=0.05)
        set_plan(gw.settings.database_url, USER, "five", "requests=5/1d")
        check = loss_by_hand(gw)
        with gw.client() as alice:
            assert statuses(alice, 4) == [200] * 4
            gw.settled_rows(4)
            assert check() is True and losses(alice) == 0  # nothing lost yet
            lose()
            with caplog.at_level(logging.ERROR):
                assert check() is True
                assert check() is True  # one loss, said once
            assert len(errors(caplog)) == 1, errors(caplog)
            assert losses(alice) == 1
            assert gw.quota_used() == {"requests": 4}
            assert statuses(alice, 2) == [200, 429]


def test_a_redis_that_kept_its_data_is_not_seeded_again(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker is still there: a round reads it and nothing more (no seed: a counter deleted by
    hand, not a loss of the store's data, is not raised again), and says nothing."""
    with RedisServerProcess(tmp_path, redis_bin()) as server:
        gw = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY, window_clock=FakeClock(time.time()),
                             usage_flush_interval_seconds=0.05)
        set_plan(gw.settings.database_url, USER, "five", "requests=5/1d")
        check = loss_by_hand(gw)
        with gw.client() as alice:
            assert statuses(alice, 4) == [200] * 4
            gw.settled_rows(4)
            with redis.Redis(port=server.port) as admin:
                keys = [k for k in admin.keys(f"sentinel:quota:{{{USER}}}:requests:*")]
                assert keys and admin.delete(*keys) == len(keys)
            with caplog.at_level(logging.ERROR):
                assert check() is True
            assert errors(caplog) == [] and losses(alice) == 0
            assert gw.quota_used().get("requests", 0) == 0  # not seeded
            assert statuses(alice, 1) == [200]


def test_counts_made_in_process_while_redis_was_away_are_not_handed_back_on_top_of_the_seed(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """QUOTA_FAILURE_MODE=local: 2 of 5 used on Redis, Redis stopped, 2 more counted in-process, Redis
    started again empty (no persistence). Handed back, the 2 counted alone: 3 more served. Seeded
    (4, from the ledger) and handed back too, 6: refused at once. The in-process counts are dropped
    when the loss is noticed — by the round or by the hand-back itself, whichever runs first —, the
    seed counts them: 1 more, then 429."""
    with RedisServerProcess(tmp_path, redis_bin()) as server:
        gw = gateway_factory(redis_url=server.url, admin_key=ADMIN_KEY, window_clock=FakeClock(time.time()), quota_failure_mode="local",
                             usage_flush_interval_seconds=0.05)
        set_plan(gw.settings.database_url, USER, "five", "requests=5/1d")
        check = loss_by_hand(gw)
        with gw.client() as alice:
            assert statuses(alice, 2) == [200] * 2
            gw.settled_rows(2)
            server.stop()
            assert statuses(alice, 2) == [200] * 2  # counted in-process
            gw.settled_rows(4)
            server.start()
            assert wait_for(lambda: alice.get("/health/ready").status_code == 200)
            assert check() is True
            assert statuses(alice, 2) == [200, 429]
            assert losses(alice) == 1


def test_with_zion_a_loss_is_said_and_counts_made_in_process_are_handed_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GOVERNANCE=zion keeps no local ledger of usage: a loss is noticed and said, nothing is seeded,
    and what QUOTA_FAILURE_MODE=local counted in-process while Redis was away is handed back (dropped,
    nothing would count it: 5 more of DEFAULT_PLAN's 5 a day instead of 3). Only what Redis
    counted before the loss is lost, as before."""
    zion = FakeZion()
    zion.add_user("jwt-judy", "judy-ext", "judy@example.com", requests=1000)
    with RedisServerProcess(tmp_path, redis_bin()) as server, serving(zion) as zion_server:
        gw = gateway_factory(governance="zion", zion_api_url=zion_server.url, zion_api_key=zion.api_key,
                             redis_url=server.url, default_plan="requests=5/1d", quota_failure_mode="local",
                             usage_flush_interval_seconds=0.05, window_clock=FakeClock(time.time()))
        check = loss_by_hand(gw)
        with httpx.Client(base_url=gw.url, headers={"Authorization": "Bearer jwt-judy"}, timeout=30) as judy:
            assert statuses(judy, 1) == [200]
            server.stop()
            assert statuses(judy, 2) == [200] * 2  # counted in-process
            server.start()
            assert wait_for(lambda: judy.get("/health/ready").status_code == 200)
            with caplog.at_level(logging.ERROR):
                assert check() is True
            assert len(errors(caplog)) == 1 and losses(judy) == 1
            assert statuses(judy, 4) == [200, 200, 200, 429]  # the 2 handed back (the 1 before is lost)
