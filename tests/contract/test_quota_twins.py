"""The memory store's Python twins of the quota scripts do what their Lua does on a standalone Redis
and a Redis Cluster, step by step: the same random run of reservations (plain and on external
limits; amounts and limits of 0, a few and near the bounds), peeks, reconciliations, give-backs,
holds and settlements of held reservations (`QuotaLimiter`), and counters gone (a window's end, an
eviction: a refund on one made again is floored at 0) is made on a MemoryStore and on the shared
store, and after every step both answer alike and hold the same keys — counters, markers, in-flight
hashes, held records and settled marks —, with the same values and about the same TTLs
(`HOLD_WITHIN` a held record, a day a settled one's mark). Seeded: the same runs every time."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.plans import MAX_LIMIT, ExternalUsage, Limit, Plan
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.store import MemoryStore, Store
from sentinel.store.base import Script

# The most a TTL may differ between the two stores (the steps in between take real time on both).
TTL_SLACK = 30.0
STEPS = 100


@pytest.fixture(params=["redis", "redis-cluster"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A shared store whose Lua runs the scripts (the memory one runs their twins)."""
    from sentinel.store.cluster import RedisClusterStore
    from sentinel.store.redis import RedisStore

    s: Store
    if request.param == "redis":
        s = RedisStore(request.getfixturevalue("redis_url"), timeout=5.0)
    else:
        s = RedisClusterStore(request.getfixturevalue("redis_cluster_url"), timeout=5.0)
    yield s
    await s.close()


@pytest.mark.parametrize("seed", range(6))
async def test_the_memory_twins_run_as_the_lua_does(shared: Store, seed: int) -> None:
    rng = random.Random(seed)
    now = time.time()
    memory = MemoryStore(clock=time.time)  # (the TTLs run on the same clock as Redis's)
    twins = QuotaLimiter(memory, clock=lambda: now)
    lua = QuotaLimiter(shared, clock=lambda: now)
    lua._token_prefix = twins._token_prefix  # the same tokens: the same markers, entries and marks
    external = seed % 2 == 1
    live: list[tuple[Reservation, Reservation]] = []
    held: list[tuple[str, str]] = []
    keys: set[str] = set()
    counters: set[str] = set()
    hashes: set[str] = set()
    counted = {"reserve": 0, "commit": 0, "release": 0, "hold": 0, "settle": 0, "end": 0}

    def plan() -> Plan:
        roomy = rng.random() < 0.4  # (most reservations of the others are refused: some must be made)
        used = (0 if roomy else rng.choice([0, 7, MAX_LIMIT // 2])) if external else None
        return Plan("p", (
            Limit("requests", 60, MAX_LIMIT if roomy else rng.choice([0, 3, MAX_LIMIT])),
            Limit("input_tokens", 3600, MAX_LIMIT if roomy else rng.choice([0, 5, MAX_LIMIT])),
            Limit("output_tokens", 86_400, MAX_LIMIT if roomy else rng.choice([0, 1000, MAX_LIMIT]),
                  None if used is None else ExternalUsage(used, "snap1")),
        ))

    for step in range(STEPS):
        op = rng.choice(["reserve", "reserve", "reserve", "peek", "commit", "release", "hold", "settle", "end"])
        subject = rng.choice(["u1", "u{2}", "u%3"])
        if op == "reserve":
            p = plan()
            amounts = {"input_tokens": rng.choice([0, 1, 50, MAX_TOKENS]),
                       "output_tokens": rng.choice([0, 3, MAX_TOKENS])}
            made = (await twins.reserve(subject, p, **amounts), await lua.reserve(subject, p, **amounts))
            assert made[0].decision == made[1].decision, step
            if made[0].allowed:
                live.append(made)
                counted["reserve"] += 1
            keys.update(made[0].keys)
            counters.update(made[0].keys)
            hashes.update(made[0].in_flight)
            if made[0].marker:
                keys.add(made[0].marker)
        elif op == "peek":
            p = plan()
            assert await twins.peek(subject, p) == await lua.peek(subject, p), step
        elif op in ("commit", "release", "hold") and live:
            pair = live.pop(rng.randrange(len(live)))
            counted[op] += 1
            if op == "commit":
                actual = {"input_tokens": rng.choice([0, 10, MAX_TOKENS]), "output_tokens": rng.choice([0, 10**6]),
                          "requests": rng.choice([None, 0, 1])}
                for limiter, reservation in zip((twins, lua), pair, strict=True):
                    await limiter.commit(reservation, **actual)
            elif op == "release":
                for limiter, reservation in zip((twins, lua), pair, strict=True):
                    await limiter.release(reservation)
            else:
                name, ttl = f"batch_{step}", rng.choice([None, 10.0, 30 * 86_400.0])
                answers = [await limiter.hold(reservation, name, ttl)
                           for limiter, reservation in zip((twins, lua), pair, strict=True)]
                assert answers[0] == answers[1] is True, step
                held.append((pair[0].subject, name))
                keys.add(twins._held_key(pair[0].subject, name))
        elif op == "end" and counters:  # a window ends (or is evicted): made again, a counter starts at 0
            key = rng.choice(sorted(counters))
            assert await memory.delete(key) == await shared.delete(key), (step, key)
            counted["end"] += 1
        elif op == "settle" and held:
            subject, name = rng.choice(held)
            usage = {"input_tokens": rng.choice([0, 10, MAX_TOKENS]), "output_tokens": rng.choice([0, 10**6])}
            answers = [await limiter.settle_held(subject, name, **usage) for limiter in (twins, lua)]
            assert answers[0] == answers[1], step
            counted["settle"] += 1
        for key in sorted(keys):
            assert await memory.get(key) == await shared.get(key), (step, op, key)
        for key in sorted(hashes):
            assert await memory.run(_HGETALL, [key], []) == await shared.run(_HGETALL, [key], []), (step, op, key)
        for key in sorted(keys | hashes):
            ttls = (await memory.ttl(key), await shared.ttl(key))
            assert (ttls[0] is None) == (ttls[1] is None), (step, op, key, ttls)
            assert ttls[0] is None or ttls[1] is None or abs(ttls[0] - ttls[1]) < TTL_SLACK, (step, op, key, ttls)
    assert all(counted.values()), counted  # every kind of step ran at least once


_HGETALL = Script(
    "test_hgetall_sorted",
    "local all = redis.call('HGETALL', KEYS[1]) local out = {} "
    "for i = 1, #all, 2 do table.insert(out, all[i] .. '=' .. all[i + 1]) end table.sort(out) return out",
    lambda ops, keys, args: sorted(f"{k}={v.decode()}".encode() for k, v in ops.hgetall(keys[0]).items()),
)
