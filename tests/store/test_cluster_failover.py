"""A primary of the Redis Cluster crashes (under load); the store rides through the failover.

Concurrent `incr`, quota `RESERVE` scripts and `stream_add(replicas=1)` on keys of one hash slot;
then that slot's primary is SIGKILLed. While the cluster notices and promotes the replica, calls
fail with StoreUnavailable, never with another error, a malformed answer or a hang (each call has
a generous deadline). Once the replica is promoted the same store object works again (redis-py
reloaded the slot map). When the crashed node is back (as a replica of the promoted one), entries
are confirmed again, and every entry that `stream_add` had confirmed is still in the stream.

Waiting uses deadlines only; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.crc import key_slot

from sentinel.domain.plans import Limit, Plan
from sentinel.errors import StoreUnavailable
from sentinel.quota.limiter import RESERVE, QuotaLimiter
from sentinel.store.base import parse_stream_id
from sentinel.store.cluster import RedisClusterStore
from tests.support.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.slow

TAG = "{failover}"
COUNTER = f"sentinel:test:{TAG}:counter"
QUOTA = f"sentinel:quota:{TAG}:requests:60:1"
STREAM = f"sentinel:usage:{TAG}:outbox"
CAP = 150  # the quota is exhausted during the test, so denials are exercised too
CALL_DEADLINE = 15.0  # far above any timeout: a call still running then is a hang
PHASE_DEADLINE = 90.0


@dataclass
class Load:
    """What the workers saw, per phase."""

    phase: str = "before"
    ok: Counter[tuple[str, str]] = field(default_factory=Counter)
    unavailable: Counter[str] = field(default_factory=Counter)
    confirmed: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stop: bool = False


async def worker(
    kind: str, call: Callable[[], Awaitable[Any]], check: Callable[[Any], str | None], load: Load
) -> None:
    while not load.stop:
        phase = load.phase
        try:
            result = await asyncio.wait_for(call(), CALL_DEADLINE)
        except StoreUnavailable:
            load.unavailable[phase] += 1
        except TimeoutError:
            load.wrong.append(f"{kind}: no answer within {CALL_DEADLINE}s ({phase})")
        except Exception as exc:  # noqa: BLE001 - anything but StoreUnavailable is a failure to report
            load.wrong.append(f"{kind}: {type(exc).__name__}: {exc} ({phase})")
        else:
            problem = check(result)
            if problem:
                load.wrong.append(f"{kind}: {problem} ({phase})")
            else:
                load.ok[(kind, phase)] += 1
                if kind == "stream":
                    load.confirmed.append(result)
        await asyncio.sleep(0.005)  # pacing, so fail-fast loops do not starve the event loop


def check_incr(result: Any) -> str | None:
    return None if isinstance(result, int) and result > 0 else f"bad incr answer {result!r}"


def check_reserve(result: Any) -> str | None:
    if not (isinstance(result, list) and len(result) == 2 and all(isinstance(v, int) for v in result)):
        return f"bad reserve answer {result!r}"
    denied, used = result
    if denied == 0 and not 1 <= used <= CAP:
        return f"admitted with {used} used, cap {CAP}"
    if denied == 1 and used < CAP:
        return f"denied with only {used} used, cap {CAP}"
    return None


def check_stream(result: Any) -> str | None:
    try:
        parse_stream_id(result)
    except (TypeError, ValueError):
        return f"bad entry id {result!r}"
    return None


async def wait_for(what: str, condition: Callable[[], bool], load: Load) -> None:
    deadline = time.monotonic() + PHASE_DEADLINE
    while not condition():
        assert not load.wrong, load.wrong[:5]
        assert time.monotonic() < deadline, f"gave up waiting for {what}: ok={dict(load.ok)}"
        await asyncio.sleep(0.05)


async def test_primary_crash_under_load(redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=0.5)
    load = Load()
    calls: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], str | None]]] = [
        ("incr", lambda: store.incr(COUNTER), check_incr),
        ("reserve", lambda: store.run(RESERVE, [QUOTA], [1, CAP, 0, 120_000]), check_reserve),
        (
            "stream",
            lambda: store.stream_add(STREAM, {"r": b"usage"}, replicas=1, replica_timeout_ms=200),
            check_stream,
        ),
    ]
    workers = [asyncio.create_task(worker(*c, load)) for c in calls for _ in range(3)]
    try:
        await wait_for(
            "traffic before the crash", lambda: all(load.ok[(k, "before")] >= 20 for k, *_ in calls), load
        )

        replica = redis_cluster.replica_of(redis_cluster.primary_of(STREAM))
        load.phase = "failover"
        crashed = redis_cluster.kill_primary_of(STREAM)
        await wait_for(
            "calls to fail while the slot has no primary", lambda: load.unavailable["failover"] > 0, load
        )

        # The replica is promoted; the same store object follows the new slot map.
        load.phase = "promoted"
        await wait_for(
            "incr and scripts to work again after the promotion",
            lambda: load.ok[("incr", "promoted")] >= 20 and load.ok[("reserve", "promoted")] >= 20,
            load,
        )
        assert redis_cluster.primary_of(STREAM) is replica
        assert store.cluster.get_node_from_key(STREAM).port == replica.port

        # Without a replica nothing can be confirmed; the crashed node comes back as one.
        assert load.ok[("stream", "promoted")] == 0
        load.phase = "rejoined"
        redis_cluster.restart(crashed)
        await wait_for("entries to be confirmed again", lambda: load.ok[("stream", "rejoined")] >= 20, load)
    finally:
        load.stop = True
        await asyncio.gather(*workers)

    assert not load.wrong, load.wrong[:5]
    redis_cluster.wait_healthy()
    everything = await store.stream_read(STREAM, "audit", "auditor", 1_000_000)
    kept = {entry.id for entry in everything}
    lost = [entry_id for entry_id in load.confirmed if entry_id not in kept]
    assert not lost, f"{len(lost)} of {len(load.confirmed)} confirmed entries lost: {lost[:5]}"
    counter = int(await store.get(COUNTER) or 0)
    quota_used = int(await store.get(QUOTA) or 0)
    assert counter > 0 and 0 < quota_used <= CAP
    await store.close()


async def test_a_dead_primary_opens_only_its_own_breaker(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """Each primary has its own breaker: keys on a dead primary are refused at once after a few
    failures, keys on the others are served meanwhile, and after the promotion the slot's keys go
    to the promoted replica (a breaker of its own) without a restart."""
    store = RedisClusterStore(redis_cluster_url, timeout=0.5)
    doomed = "sentinel:test:{doomed}:key"
    victim = redis_cluster.primary_of(doomed)
    others = [f"sentinel:test:{{alive{n}}}:key" for n in range(200)]
    alive = next(key for key in others if redis_cluster.primary_of(key) is not victim)
    replica = redis_cluster.replica_of(victim)
    await store.set(doomed, b"on the dead primary")
    await store.set(alive, b"elsewhere")
    redis_cluster.wait_replicated(victim)

    assert redis_cluster.kill_primary_of(doomed) is victim
    try:
        for _ in range(store.breaker.threshold):
            with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
                await store.get(doomed)
        with pytest.raises(StoreUnavailable, match="circuit open"):
            await store.get(doomed)
        # The other primary's keys are served, and neither its breaker nor the store-wide one opened.
        for _ in range(5):
            assert await store.get(alive) == b"elsewhere"
        # The store is degraded, not down: ping names the dead primary (under its own breaker).
        ping = await store.ping()
        assert [name.rsplit(":", 1)[1] for name in ping.unreachable] == [str(victim.port)]
        assert store.breaker_for(alive).state == "closed"
        assert store.breaker.state == "closed"
        assert store.breaker_for(doomed).state == "open"

        deadline = time.monotonic() + PHASE_DEADLINE
        while True:
            try:
                value = await store.get(doomed)
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the doomed key was never served again"
                await asyncio.sleep(0.1)
                continue
            break
        assert value == b"on the dead primary"
        assert redis_cluster.primary_of(doomed) is replica
        assert (await store.ping()).unreachable == ()  # the promoted replica serves the slots
    finally:
        redis_cluster.restart(victim)
        await store.close()


async def test_a_slot_being_resharded_refuses_only_its_own_keys(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """A resharding moves a slot's keys one batch at a time: meanwhile a quota script over a user's
    counters (there) and a new reservation marker (not yet anywhere) is answered TRYAGAIN by the
    slot's primary — nothing ran; redis-py tries again for a while, then gives up. That user is
    refused (503), as during a failover. The primary answered: every other user on it is served."""
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store, clock=lambda: 1_700_000_000.0)
    plan = Plan("p", (Limit("requests", 60, 100), Limit("input_tokens", 3600, 10_000)))
    assert (await limiter.reserve("u-moving", plan, input_tokens=1, output_tokens=0)).allowed  # counters made
    probe = "sentinel:quota:{u-moving}:requests"
    source = redis_cluster.primary_of(probe)
    target = next(n for n in redis_cluster.nodes if n is not source and n.info("replication").get("role") == "master")
    neighbour = next(u for u in (f"u-{n}" for n in range(500))
                     if redis_cluster.primary_of(f"sentinel:quota:{{{u}}}:requests") is source)
    slot = key_slot(probe.encode())
    with source.client() as s, target.client() as t:
        source_id, target_id = s.execute_command("CLUSTER MYID"), t.execute_command("CLUSTER MYID")
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    try:
        for _ in range(store.breaker.threshold + 1):
            with pytest.raises(StoreUnavailable):
                await limiter.reserve("u-moving", plan, input_tokens=1, output_tokens=0)
        assert (await limiter.reserve(neighbour, plan, input_tokens=1, output_tokens=0)).allowed
        assert store.breaker_for(probe).state == "closed"
    finally:
        with source.client() as s, target.client() as t:
            t.execute_command("CLUSTER SETSLOT", slot, "STABLE")
            s.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        await store.close()
