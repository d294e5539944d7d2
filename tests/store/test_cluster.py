"""Redis Cluster specifics: URL spelling, the one-slot rule for scripts, replica confirmation.

The real cluster is the session's local 3 primaries + 3 replicas (tests/support/redis_cluster.py);
the shared contract suite runs on it too (tests/contract).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import MaxConnectionsError

from sentinel.api.throttle import FailedAuthThrottle, shared_key
from sentinel.domain.plans import ExternalUsage, Limit, Plan
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.governance.ownership import Ownership
from sentinel.quota.limiter import QuotaLimiter
from sentinel.routing.health import ProviderHealth
from sentinel.routing.sessions import Session, SessionStore
from sentinel.store import MemoryStore, create_store
from sentinel.store.base import Script
from sentinel.store.cluster import ClusterAddress, RedisClusterStore, parse_cluster_url
from sentinel.store.redis import RedisStore
from tests.contract.test_store import CAS
from tests.support.lost_replies import LostClusterReply
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.servers import free_port

S = "sentinel:usage:{outbox}"


# --- URL -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+cluster://10.0.0.1:7000", ClusterAddress([("10.0.0.1", 7000)])),
        (
            "redis+cluster://a:7000,b:7001,c/",
            ClusterAddress([("a", 7000), ("b", 7001), ("c", 6379)]),
        ),
        (
            "rediss+cluster://user:p%40ss@[::1]:7000,redis.internal:7001/0",
            ClusterAddress([("::1", 7000), ("redis.internal", 7001)], "user", "p@ss", ssl=True),
        ),
        ("REDIS+CLUSTER://:secret@h:1", ClusterAddress([("h", 1)], None, "secret")),
    ],
)
def test_cluster_url_spelling(url: str, expected: ClusterAddress) -> None:
    assert parse_cluster_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:7000",
        "redis+cluster://",
        "redis+cluster://h:1,,h:2",
        "redis+cluster://h:1/3",
        "redis+cluster://h:1?x=1",
    ],
)
def test_bad_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_cluster_url(url)


async def test_create_store_picks_the_backend_by_url() -> None:
    port = free_port()
    stores = [
        create_store(None),
        create_store(f"redis://127.0.0.1:{port}/0"),
        create_store(f"redis+cluster://127.0.0.1:{port}"),
        create_store(f"rediss+cluster://127.0.0.1:{port}"),
    ]
    assert [type(s) for s in stores] == [MemoryStore, RedisStore, RedisClusterStore, RedisClusterStore]
    assert [s.shared for s in stores] == [False, True, True, True]
    for s in stores:
        await s.close()


# --- errors and the breaker ---------------------------------------------------------------------
async def test_scripts_with_keys_in_several_slots_are_refused_before_sending() -> None:
    # Nothing listens on this port: a ValueError (not StoreUnavailable) proves nothing was sent.
    store = RedisClusterStore(f"redis+cluster://127.0.0.1:{free_port()}", timeout=0.2)
    with pytest.raises(ValueError, match="hash slots"):
        await store.run(CAS, ["sentinel:a", "sentinel:b"], ["", "x"])
    assert store.breaker.failures == 0
    await store.close()


async def test_an_unreachable_cluster_is_unavailable_and_opens_the_breaker() -> None:
    store = RedisClusterStore(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", timeout=0.2)
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
            await store.get("k")
    assert store.breaker.is_open
    with pytest.raises(StoreUnavailable, match="circuit open"):
        await store.stream_add(S, {"r": b"x"})
    await store.close()


async def test_command_errors_on_a_cluster_do_not_trip_the_breaker(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    await store.set(S, b"a string, not a stream")
    for _ in range(4):
        with pytest.raises(StoreUnavailable, match="command failed"):
            await store.stream_len(S)
    assert store.breaker.failures == 0
    await store.close()


# --- scripts of the application keep their keys in one slot -------------------------------------
async def test_same_tag_scripts_run_and_cross_slot_scripts_are_refused(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    keys = ["sentinel:{u1}:a", "sentinel:{u1}:b"]
    assert await store.run(CAS, keys, ["", "x"]) == 1
    with pytest.raises(ValueError, match="hash slots"):
        await store.run(CAS, ["sentinel:{u1}:a", "sentinel:{u2}:a"], ["x", "y"])
    assert await store.get("sentinel:{u1}:a") == b"x"
    await store.close()


async def test_quota_reserve_and_adjust_run_on_a_cluster(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store, clock=lambda: 1_700_000_000.0)
    plan = Plan(
        "pro",
        (Limit("requests", 60, 2), Limit("input_tokens", 3600, 500), Limit("output_tokens", 86400, 900)),
    )
    first = await limiter.reserve("user-1", plan, input_tokens=100, output_tokens=200)
    assert first.allowed
    await limiter.commit(first, input_tokens=50, output_tokens=10)
    second = await limiter.reserve("user-1", plan, input_tokens=100, output_tokens=200)
    third = await limiter.reserve("user-1", plan, input_tokens=100, output_tokens=200)
    assert second.allowed and not third.allowed
    assert third.decision.limited_by == Limit("requests", 60, 2)
    await store.close()


async def test_zion_limits_count_what_runs_across_readings_on_a_cluster(redis_cluster_url: str) -> None:
    """The in-flight record lives in the user's slot: a new reading starts at what still runs."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store, clock=lambda: 1_700_000_000.0)

    def reading(used: int, snapshot: str) -> Plan:
        zion = Limit("output_tokens", 1260, 1000, ExternalUsage(used, snapshot))
        return Plan("zion", (zion, Limit("requests", 60, 100)))

    try:
        running = [await limiter.reserve("}odd", reading(0, "s1"), input_tokens=0, output_tokens=300)
                   for _ in range(3)]
        assert all(r.allowed for r in running)
        assert not (await limiter.reserve("}odd", reading(10, "s2"), input_tokens=0, output_tokens=100)).allowed
        for r in running:
            await limiter.commit(r, input_tokens=0, output_tokens=100)
        third = reading(310, "s3")
        assert (await limiter.reserve("}odd", third, input_tokens=0, output_tokens=690)).allowed
        assert not (await limiter.reserve("}odd", third, input_tokens=0, output_tokens=1)).allowed
    finally:
        await store.close()


async def test_provider_health_reads_every_pair_in_one_script_on_a_cluster(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    health = ProviderHealth(store, clock=lambda: 1_700_000_000.0)
    pairs = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku"), ("google", "gemini-2.0-flash")]
    assert await health.record_failure(*pairs[1]) == 30
    states = await health.states(pairs)  # would be refused (ValueError) if the keys spanned slots
    assert [s is not None for s in states.values()] == [False, True, False]
    await store.close()


async def test_a_provider_trial_is_claimed_once_on_a_cluster(redis_cluster_url: str) -> None:
    """The half-open trial's claim (one script on the pair's `{providers}` key) runs on a cluster."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    now = [1_700_000_000.0]
    health = ProviderHealth(store, clock=lambda: now[0])
    pair = ("openai", "gpt-4o-mini")
    assert await health.record_failure(*pair) == 30
    now[0] += 30
    assert [await health.claim_trial(*pair) for _ in range(3)] == [True, False, False]
    state = (await health.states([pair, ("anthropic", "claude-3-5-haiku")]))[pair]
    assert state is not None and state.trial_running(now[0])
    await store.close()


# --- replica confirmation ------------------------------------------------------------------------
async def test_a_confirmed_entry_is_on_the_replica(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    entry_id = await store.stream_add(S, {"r": b"kept"}, replicas=1, replica_timeout_ms=1000)
    replica = redis_cluster.replica_of(redis_cluster.primary_of(S))
    with replica.client() as on_replica:
        on_replica.execute_command("READONLY")
        assert [eid.decode() for eid, _ in on_replica.xrange(S)] == [entry_id]
    await store.close()


async def test_an_unconfirmed_entry_fails_and_is_withdrawn(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    # 16 concurrent confirmed writes leave 16 pooled connections whose last write a replica confirmed;
    # 4 concurrent calls below leave 12 of them idle.
    await asyncio.gather(
        *(store.stream_add(S, {"r": b"before"}, replicas=1, replica_timeout_ms=1000) for _ in range(16))
    )
    primary = redis_cluster.primary_of(S)
    redis_cluster.wait_replicated(primary)
    replica = redis_cluster.replica_of(primary)
    replica.freeze()  # still connected, confirms nothing new
    try:
        # A WAIT sent on another connection than its XADD would count an older, confirmed write.
        results = await asyncio.gather(
            *(
                store.stream_add(S, {"r": b"unconfirmed"}, replicas=1, replica_timeout_ms=100)
                for _ in range(4)
            ),
            return_exceptions=True,
        )
    finally:
        replica.thaw()
    assert all(isinstance(r, StoreUnavailable) and "not confirmed by 1 replica" in r.message for r in results)
    assert await store.stream_len(S) == 16  # the unconfirmed ones were withdrawn
    assert store.breaker.failures == 0
    await store.close()


# --- stream commands that must not run twice -----------------------------------------------------
async def test_a_stream_read_whose_reply_is_lost_is_not_run_again(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client retried XREADGROUP after a read timeout: the first run's entries
    stayed pending under the consumer (a batch key) and the retry read the next ones under it too."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    for n in range(4):
        await store.stream_add(S, {"r": str(n).encode()})
    lost = LostClusterReply(monkeypatch, "XREADGROUP")
    with pytest.raises(StoreUnavailable):
        await store.stream_read(S, "g", "batch-1", 2)
    assert lost.sent == 1
    held = await store.stream_idle(S, "g", min_idle_ms=0, count=10, consumer="batch-1")
    assert len(held) == 2  # the one run's entries, nothing more
    assert [e.fields["r"] for e in await store.stream_read(S, "g", "batch-2", 10)] == [b"2", b"3"]
    await store.close()


async def test_a_stream_append_whose_reply_is_lost_is_not_run_again(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried XADD stored one usage record twice (counted twice by Zion)."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    lost = LostClusterReply(monkeypatch, "XADD")
    with pytest.raises(StoreUnavailable):
        await store.stream_add(S, {"r": b"once"})
    assert lost.sent == 1 and await store.stream_len(S) == 1
    assert await store.stream_add(S, {"r": b"next"})  # the store goes on serving
    await store.close()


async def test_a_failed_authentication_whose_reply_is_lost_is_counted_once(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sent the failure counter's script again after its reply was lost:
    one failed authentication counted twice, so a client reached the limit in half its failures. It
    is sent once: the lost reply is an outage for the throttle, which counts it in its own table."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    throttle = FailedAuthThrottle(5, store=store, clock=lambda: 1_000_000.0)  # minute 16,666
    await throttle.failed("198.51.100.7")  # the script is known to its node from now on (EVALSHA, not EVAL)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    await throttle.failed("198.51.100.7")  # its reply lost: counted in this process's table
    assert lost.sent == 1
    key = shared_key(16_666, "198.51.100.7")
    assert await store.get(key) == b"2"  # two failures, each counted once
    await store.delete(key)
    await store.close()


async def test_a_quota_settlement_run_twice_by_the_clients_retry_counts_once(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sends a script again after a read timeout: a reconciliation whose
    reply was lost ran twice, its refund given twice (450 output tokens free). Now the second run
    finds the reservation's marker gone and changes nothing."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store)
    plan = Plan("p", (Limit("requests", 3600, 100), Limit("output_tokens", 3600, 10_000)))
    await limiter.release(await limiter.reserve("u-retry", plan, input_tokens=0, output_tokens=1))  # scripts known
    kept = await limiter.reserve("u-retry", plan, input_tokens=0, output_tokens=500)
    r = await limiter.reserve("u-retry", plan, input_tokens=0, output_tokens=500)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    await limiter.commit(r, input_tokens=0, output_tokens=50)  # its retry answered
    assert lost.sent == 2  # run twice
    assert [int(await store.get(key) or 0) for key in kept.keys] == [2, 550]  # counted once
    await store.close()


async def test_a_reservation_run_twice_by_the_clients_retry_counts_once(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sends the reservation script again after its reply was lost: it was
    counted twice (1,000 output tokens and 2 requests for one request, against the user), its
    settlement giving back one. Now the second run finds the reservation's marker and counts nothing."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store)
    plan = Plan("p", (Limit("requests", 3600, 100), Limit("output_tokens", 3600, 10_000)))
    await limiter.release(await limiter.reserve("u-reserve", plan, input_tokens=0, output_tokens=1))  # scripts known
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    r = await limiter.reserve("u-reserve", plan, input_tokens=0, output_tokens=500)  # its retry answered
    assert lost.sent == 2 and r.allowed  # run twice
    assert [int(await store.get(key) or 0) for key in r.keys] == [1, 500]  # counted once
    await limiter.commit(r, input_tokens=0, output_tokens=20)
    assert [int(await store.get(key) or 0) for key in r.keys] == [1, 20]
    await store.close()


async def test_a_held_settlement_run_twice_by_the_clients_retry_is_still_the_reads(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sends a held reservation's settlement again after its reply was lost:
    the second run found the held record gone and answered "none held", so the read charged the
    batch's usage on its own reservation as well (counted twice until the windows ended). The second
    run now finds this call's own mark in the record's place and answers as the first did."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store)
    plan = Plan("p", (Limit("requests", 3600, 100), Limit("output_tokens", 3600, 10_000)))
    warm = await limiter.reserve("u-held", plan, input_tokens=0, output_tokens=1)
    assert await limiter.hold(warm, "batch_warm", None)
    assert await limiter.settle_held("u-held", "batch_warm", input_tokens=0, output_tokens=0)  # the script known
    r = await limiter.reserve("u-held", plan, input_tokens=0, output_tokens=500)
    assert await limiter.hold(r, "batch_1", None)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    settled = await limiter.settle_held("u-held", "batch_1", input_tokens=0, output_tokens=80)  # its retry answered
    assert lost.sent == 2 and settled  # run twice, and settled by this call
    assert [int(await store.get(key) or 0) for key in r.keys] == [2, 80]  # counted once
    assert not await limiter.settle_held("u-held", "batch_1", input_tokens=0, output_tokens=80)  # a later read: none
    await store.close()


async def test_two_instances_share_data(redis_cluster_url: str) -> None:
    one, two = create_store(redis_cluster_url, timeout=2.0), create_store(redis_cluster_url, timeout=2.0)
    assert one.backend == "redis-cluster"
    await one.stream_add(S, {"r": b"x"})
    await one.set("k", b"v")
    assert await two.get("k") == b"v" and await two.stream_len(S) == 1
    await one.close()
    await two.close()


def test_the_fixture_cluster_has_three_primaries_with_a_replica_each(
    redis_cluster: LocalRedisCluster,
) -> None:
    roles = []
    for node in redis_cluster.nodes:
        with node.client() as c:
            roles.append(c.execute_command("ROLE")[0])
            assert c.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
    assert sorted(roles) == [b"master"] * 3 + [b"slave"] * 3


async def test_a_session_creation_whose_reply_is_lost_and_sent_again_is_its_own(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sends SET again after a lost reply: the second run (NX) found the
    first's value, and the first turn took the session it had written for another's."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    sessions = SessionStore(store, ttl=60)
    created = Session("conv-1", "alice", "simple", "openai", "gpt-4o-mini", 1.0, 1.0)
    lost = LostClusterReply(monkeypatch, "SET")
    assert await sessions.create(created) is created
    assert lost.sent == 2  # run, its reply lost, run again (NX: not written)
    assert await sessions.delete_if(created)  # the session as created: this turn's to give back
    await store.close()


async def test_a_cluster_with_a_primary_that_may_evict_keys_says_so(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """Each primary has its own memory settings: one that may evict is enough to lose the counters
    of the users whose keys it serves."""
    store = RedisClusterStore(redis_cluster_url, timeout=5.0)
    assert await store.eviction() is None
    primary = redis_cluster.primary_of("sentinel:quota:{alice}:requests:60:1")
    with primary.client() as admin:
        admin.config_set("maxmemory", "100mb")
        admin.config_set("maxmemory-policy", "volatile-ttl")
        try:
            assert await store.eviction() == "volatile-ttl"
        finally:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "0")
    assert await store.eviction() is None
    await store.close()


async def test_a_first_charge_whose_reply_is_lost_and_sent_again_is_still_the_first(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object's usage is charged by the first call that marks it (SET NX). redis-py's cluster
    client sends SET again after a lost reply: the second run found the first's mark, the call read
    it as "charged already", and the usage (a whole batch's) was charged by no one."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    owners = Ownership(store)
    lost = LostClusterReply(monkeypatch, "SET")
    assert await owners.charge_once("batch_lost_reply", None) is True
    assert lost.sent == 2  # run, its reply lost, run again (NX: not written)
    assert await owners.charge_once("batch_lost_reply", None) is False  # the next read: charged already
    await store.close()


async def test_a_conversation_turn_whose_reply_is_lost_is_not_counted_twice(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn's count (TURN: the turn's tokens plus what the conversation grew by since it was
    admitted) run again by redis-py's cluster client after its reply was lost added the turn's own
    growth twice (150 after a turn admitted at 100 became 200), and every later request continuing
    the conversation was charged the 50 phantom tokens. It is sent once: the lost reply is a store
    failure, which the caller counts as an outage (the count the first run set is kept)."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    owners = Ownership(store)
    await owners.remember_turn("conv_lost_reply", 100, 0, None)  # the script is known to its node (EVALSHA)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    with pytest.raises(StoreUnavailable):
        await owners.remember_turn("conv_lost_reply", 150, 100, None)
    assert lost.sent == 1
    assert await owners.context_of(["conv_lost_reply"]) == 150
    await store.close()


async def test_a_provider_trial_whose_claim_reply_is_lost_is_still_this_requests(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The half-open trial's claim (CLAIM_TRIAL) run again by redis-py's cluster client after its
    reply was lost found its own first run's claim and answered "another request's trial runs": no
    request was the trial, and the pair, which may be well again, was left out for TRIAL_SECONDS.
    The second run finds the claim under the call's own token: the request is the trial."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    now = [1_700_000_000.0]
    health = ProviderHealth(store, clock=lambda: now[0])
    pair = ("openai", "gpt-4o-mini")
    assert await health.record_failure(*pair) == 30
    assert await health.claim_trial(*pair) is False  # in backoff (and the script known to its node: EVALSHA)
    now[0] += 30
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    assert await health.claim_trial(*pair, "trial-token") is True
    assert lost.sent == 2  # run, its reply lost, run again
    assert await health.claim_trial(*pair, "another") is False  # one trial at a time still
    await store.close()


async def test_a_second_users_failure_whose_reply_is_lost_still_counts(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second user's client-causable failure (SECOND_WITNESS: the first user's witness found and
    cleared) run again by redis-py's cluster client after its reply was lost found no witness, took
    itself for the first, and was not counted: the pair stayed in rotation. The second run finds the
    call's own mark: counted."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    health = ProviderHealth(store, clock=lambda: 1_700_000_000.0)
    pair = ("openai", "gpt-4o-mini")
    assert await health.record_failure(*pair, caller="alice") is None  # remembered (and the script known: EVALSHA)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    assert await health.record_failure(*pair, caller="bob") == 30
    assert lost.sent >= 2  # the witness script run, its reply lost, run again (then the failure's)
    assert (await health.states([pair]))[pair] is not None  # in backoff
    assert await health.record_failure(*pair, caller="carol") is None  # the witness was cleared: a first again
    await store.close()


COUNT = Script("test_count_runs", "return redis.call('INCR', KEYS[1])", lambda ops, keys, args: ops.incrby(keys[0], 1))


async def test_a_script_whose_retry_finds_the_pool_full_may_have_run(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client sends a script again after its reply was lost; a retry refused for a
    full connection pool (MaxConnectionsError) says nothing of the first run, which did run. Told as
    `StoreRefused` (never ran: the meter sends a refused quota settlement again), a settlement ran
    twice — a refund given twice."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    key = "sentinel:test:{runs}"
    await store.delete(key)
    assert await store.run(COUNT, [key], []) == 1  # (the script is known to its node: EVALSHA runs it)
    lost = LostClusterReply(monkeypatch, "EVALSHA")
    acquire = ClusterNode.acquire_connection

    def pool_full_on_retry(node: ClusterNode) -> Any:
        if not lost.armed:  # the first run's reply was lost: every connection is in use for the retry
            raise MaxConnectionsError("Too many connections")
        return acquire(node)

    monkeypatch.setattr(ClusterNode, "acquire_connection", pool_full_on_retry)
    with pytest.raises(StoreUnavailable) as failed:
        await store.run(COUNT, [key], [])
    monkeypatch.undo()
    assert lost.sent == 1 and await store.get(key) == b"2"  # it ran
    assert not isinstance(failed.value, StoreRefused)
    await store.close()


async def test_shard_keys_put_one_key_on_each_primary(redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    """A marker every shard holds (`StoreLoss`): one key a primary, the same keys while the slots stay
    put; one server and memory hold everything in one place, so the key itself."""
    store = create_store(redis_cluster_url, timeout=2.0)
    try:
        keys = await store.shard_keys("sentinel:epoch")
        primaries = [redis_cluster.primary_of(key).port for key in keys]
        assert len(keys) == 3 and sorted(set(primaries)) == sorted(primaries)
        assert all(key.startswith("sentinel:epoch:{") for key in keys)
        assert await store.shard_keys("sentinel:epoch") == keys
    finally:
        await store.close()
    assert await MemoryStore().shard_keys("sentinel:epoch") == ["sentinel:epoch"]
