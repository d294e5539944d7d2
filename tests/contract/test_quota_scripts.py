"""The quota scripts that settle a reservation give the same results on every backend: their Lua
on a standalone Redis and a Redis Cluster (every key in the subject's slot), their Python twins on
the memory store — a settlement applied once however often it is sent (its reservation's marker),
a reservation counted once however often it runs, and one whose reply was lost given back once if
it ran, never if it did not (a tombstone in its marker's place stops a late run from counting)."""

from __future__ import annotations

from sentinel.quota.limiter import (
    ADJUST,
    ADJUST_EXTERNAL,
    GIVE_BACK,
    HAND_BACK,
    RESERVE,
    RESERVE_EXTERNAL,
    SEED,
    SETTLE_HELD,
)
from sentinel.store import Store
from sentinel.store.base import Script

HELD = "sentinel:quota:{u1}:held:batch_1"
UP = "sentinel:quota:{u1}:output_tokens:60:1"  # a counter a settlement adds to (its TTL given)
DOWN = "sentinel:quota:{u1}:input_tokens:60:1"  # one it refunds, floored at 0
GONE = "sentinel:quota:{u1}:requests:60:1"  # an expired window: a refund there changes nothing
IN_FLIGHT = "sentinel:quota:{u1}:input_tokens:x1:inflight"
MARKER = "sentinel:quota:{u1}:reserved:tok"


async def test_a_held_reservation_is_settled_once_and_alike_on_every_backend(store: Store) -> None:
    await store.set(HELD, b"record")
    await store.set(DOWN, b"30", 60)
    await store.run(_HSET, [IN_FLIGHT], ["tok", "30:1", "other", "5:1"])
    await store.set(MARKER, b"1", 60)
    keys = [HELD, MARKER, UP, DOWN, GONE, IN_FLIGHT]
    args: list[str | int] = ["record", "tok", 3, "settled:mine", 90_000, 40, 90_000, -50, "", -1, ""]

    assert await store.run(SETTLE_HELD, keys, ["another record", *args[1:]]) == 0  # not what was read
    assert await store.get(DOWN) == b"30" and await store.get(UP) is None
    assert await store.run(SETTLE_HELD, keys, args) == 1
    assert await store.get(MARKER) is None  # the marker goes with the record
    assert await store.get(HELD) == b"settled:mine" and 0 < (await store.ttl(HELD) or 0) <= 90  # this call's mark
    assert await store.get(UP) == b"40" and 0 < (await store.ttl(UP) or 0) <= 90
    assert await store.get(DOWN) == b"0" and await store.get(GONE) is None
    assert await store.run(_HKEYS, [IN_FLIGHT], []) == [b"other"]
    # Run again (redis-py's cluster retry after its reply was lost), it answers as it did: the
    # settlement is this call's, whose read must not charge the usage on its own reservation too.
    assert await store.run(SETTLE_HELD, keys, args) == 1
    assert await store.get(UP) == b"40" and await store.get(DOWN) == b"0"
    theirs = [*args[:3], "settled:theirs", *args[4:]]
    assert await store.run(SETTLE_HELD, keys, theirs) == 0  # once: a second settler changes nothing
    assert await store.get(UP) == b"40" and await store.get(HELD) == b"settled:mine"


async def test_a_seed_raises_counters_never_lowers_them_and_runs_twice_alike(store: Store) -> None:
    """`SEED` (a plan change's, from the ledger) raises a counter below its count to it — a new one
    gets the TTL given, a live one keeps its own — and leaves one at or above it as it is; run again
    (redis-py's cluster retry) it changes nothing more."""
    await store.set(DOWN, b"30", 60)
    await store.set(UP, b"2", 60)
    seed: list[str | int] = [10, 90_000, 5, 90_000, 7, 90_000]  # DOWN above, UP below, GONE new
    for _ in range(2):
        assert int(await store.run(SEED, [DOWN, UP, GONE], seed)) == 1
        assert await store.get(DOWN) == b"30" and await store.get(UP) == b"5" and await store.get(GONE) == b"7"
    assert 0 < (await store.ttl(UP) or 0) <= 60 and 60 < (await store.ttl(GONE) or 0) <= 90


async def test_a_settlement_sent_twice_changes_the_counters_once(store: Store) -> None:
    """A reconciliation whose reply was lost is sent again: the second run finds the reservation's
    marker gone and changes nothing (run twice, its refund was given twice: quota for free)."""
    reserved = await store.run(RESERVE, [DOWN, UP, MARKER], [100, 1000, 0, 60_000, 0, 1000, 0, 60_000, 90_000])
    assert [int(v) for v in reserved] == [0, 100, 0]
    assert await store.get(MARKER) is not None
    assert 60 < (await store.ttl(MARKER) or 0) <= 90  # the longest of the counters' TTLs and its own
    settle: list[str | int] = [-70, "", 40, 90_000]
    assert [await store.run(ADJUST, [MARKER, DOWN, UP], settle) for _ in range(3)] == [1, 0, 0]
    assert await store.get(DOWN) == b"30" and await store.get(UP) == b"40"
    assert await store.get(MARKER) is None
    # A peek (no marker KEY, no marker ARGV) marks nothing; a denied reservation neither.
    assert [int(v) for v in await store.run(RESERVE, [DOWN], [0, 1000, 0, 60_000])] == [0, 30]
    assert [int(v) for v in await store.run(RESERVE, [DOWN, MARKER], [971, 1000, 0, 60_000, 90_000])] == [1, 30]
    assert await store.get(MARKER) is None and await store.get(DOWN) == b"30"
    assert await store.run(ADJUST, [MARKER, DOWN], [-30, ""]) == 0  # unmarked: nothing to settle


async def test_an_external_settlement_sent_twice_changes_the_counters_once(store: Store) -> None:
    counter = "sentinel:quota:{u1}:input_tokens:86400:x1"
    args: list[str | int] = [1_000, "tok", 100, 1000, 0, 60_000, 1, 61_000, 90_000]
    reserved = await store.run(RESERVE_EXTERNAL, [counter, IN_FLIGHT, MARKER], args)
    assert [int(v) for v in reserved] == [0, 100]
    assert await store.run(_HKEYS, [IN_FLIGHT], []) == [b"tok"] and await store.get(MARKER) is not None
    settle = [await store.run(ADJUST_EXTERNAL, [MARKER, counter, IN_FLIGHT], ["tok", -60, ""]) for _ in range(2)]
    assert settle == [1, 0]
    assert await store.get(counter) == b"40" and await store.run(_HKEYS, [IN_FLIGHT], []) == []
    assert await store.get(MARKER) is None


async def test_a_reservation_run_again_counts_nothing(store: Store) -> None:
    """redis-py's cluster client sends a reservation again after its reply was lost: the second run
    finds its marker and counts nothing (it was counted twice), answering as admitted."""
    reserve: list[str | int] = [100, 1000, 0, 60_000, 0, 1000, 0, 60_000, 90_000]
    assert [int(v) for v in await store.run(RESERVE, [DOWN, UP, MARKER], reserve)] == [0, 100, 0]
    assert [int(v) for v in await store.run(RESERVE, [DOWN, UP, MARKER], reserve)] == [0, 100, 0]
    assert await store.get(DOWN) == b"100"
    counter = "sentinel:quota:{u1}:input_tokens:86400:x1"
    marker = MARKER + "-x"
    args: list[str | int] = [1_000, "tok", 100, 1000, 0, 60_000, 1, 61_000, 90_000]
    for _ in range(2):
        reserved = await store.run(RESERVE_EXTERNAL, [counter, IN_FLIGHT, marker], args)
        assert [int(v) for v in reserved] == [0, 100]
    assert await store.get(counter) == b"100"


async def test_a_lost_reservation_is_given_back_once_if_it_ran(store: Store) -> None:
    """`GIVE_BACK` settles a reservation whose reply was lost: its changes (and in-flight entry) go
    only with its marker, once; sent again, it leaves a tombstone and changes nothing."""
    counter = "sentinel:quota:{u1}:input_tokens:86400:x1"
    args: list[str | int] = [1_000, "tok", 100, 1000, 0, 60_000, 1, 61_000, 90_000]
    await store.run(RESERVE_EXTERNAL, [counter, IN_FLIGHT, MARKER], args)
    await store.run(_HSET, [IN_FLIGHT], ["other", "5:99999999999"])
    give_back: list[str | int] = ["tok", 90_000, -100, ""]
    assert [await store.run(GIVE_BACK, [MARKER, counter, IN_FLIGHT], give_back) for _ in range(3)] == [1, 0, 0]
    assert await store.get(counter) == b"0" and await store.run(_HKEYS, [IN_FLIGHT], []) == [b"other"]
    assert await store.get(MARKER) == b"0" and 0 < (await store.ttl(MARKER) or 0) <= 90


async def test_a_lost_reservation_that_never_ran_gives_nothing_back_and_counts_nothing_late(store: Store) -> None:
    await store.set(DOWN, b"30", 60)  # another request's
    assert await store.run(GIVE_BACK, [MARKER, DOWN], ["tok", 90_000, -100, ""]) == 0
    assert await store.get(DOWN) == b"30"  # none of the other's amount taken
    late = await store.run(RESERVE, [DOWN, MARKER], [100, 1000, 0, 60_000, 90_000])  # it reaches Redis now
    assert int(late[0]) == 0 and await store.get(DOWN) == b"30"  # and counts nothing


_HSET = Script(
    "test_hset_pairs",
    "for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end return 1",
    lambda ops, keys, args: [ops.hset(keys[0], args[i], args[i + 1].encode()) for i in range(0, len(args), 2)] and 1,
)
_HKEYS = Script(
    "test_hkeys",
    "local k = redis.call('HKEYS', KEYS[1]) table.sort(k) return k",
    lambda ops, keys, args: sorted(k.encode() if isinstance(k, str) else k for k in ops.hgetall(keys[0])),
)


async def test_a_hand_back_adds_once_and_alike_on_every_backend(store: Store) -> None:
    """`HAND_BACK` adds a local limiter's counts to the shared counters only in the call that writes
    its marker: sent again, it changes nothing; a counter it makes gets the TTL it is given."""
    handed = "sentinel:quota:{u1}:handed:tok"
    await store.set(DOWN, b"30", 60)
    args: list[str | int] = [90_000, 5, 90_000, 7, 60_000]
    assert [await store.run(HAND_BACK, [handed, DOWN, UP], args) for _ in range(3)] == [1, 0, 0]
    assert await store.get(DOWN) == b"35" and await store.get(UP) == b"7"
    assert 0 < (await store.ttl(UP) or 0) <= 60 and 0 < (await store.ttl(handed) or 0) <= 90
