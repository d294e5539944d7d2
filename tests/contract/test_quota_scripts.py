"""The held-reservation settlement script (`SETTLE_HELD`) gives the same results on every backend:
its Lua on a standalone Redis and a Redis Cluster (every key in the subject's slot), its Python
twin on the memory store."""

from __future__ import annotations

from sentinel.quota.limiter import SETTLE_HELD
from sentinel.store import Store
from sentinel.store.base import Script

HELD = "sentinel:quota:{u1}:held:batch_1"
UP = "sentinel:quota:{u1}:output_tokens:60:1"  # a counter a settlement adds to (its TTL given)
DOWN = "sentinel:quota:{u1}:input_tokens:60:1"  # one it refunds, floored at 0
GONE = "sentinel:quota:{u1}:requests:60:1"  # an expired window: a refund there changes nothing
IN_FLIGHT = "sentinel:quota:{u1}:input_tokens:x1:inflight"


async def test_a_held_reservation_is_settled_once_and_alike_on_every_backend(store: Store) -> None:
    await store.set(HELD, b"record")
    await store.set(DOWN, b"30", 60)
    await store.run(_HSET, [IN_FLIGHT], ["tok", "30:1", "other", "5:1"])
    keys = [HELD, UP, DOWN, GONE, IN_FLIGHT]
    args: list[str | int] = ["record", "tok", 3, 40, 90_000, -50, "", -1, ""]

    assert await store.run(SETTLE_HELD, keys, ["another record", *args[1:]]) == 0  # not what was read
    assert await store.get(DOWN) == b"30" and await store.get(UP) is None
    assert await store.run(SETTLE_HELD, keys, args) == 1
    assert await store.get(HELD) is None
    assert await store.get(UP) == b"40" and 0 < (await store.ttl(UP) or 0) <= 90
    assert await store.get(DOWN) == b"0" and await store.get(GONE) is None
    assert await store.run(_HKEYS, [IN_FLIGHT], []) == [b"other"]
    assert await store.run(SETTLE_HELD, keys, args) == 0  # once: a second settler changes nothing
    assert await store.get(UP) == b"40"


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
