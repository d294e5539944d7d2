"""The failed-authentication counter's script (`sentinel.api.throttle.COUNT_FAILURE`) on every backend."""

from __future__ import annotations

from sentinel.api.throttle import COUNT_FAILURE, shared_key
from sentinel.store import Store


async def test_a_failure_counter_adds_one_and_lives_its_minute(store: Store) -> None:
    key = shared_key(28_333_334, "cross-origin 2001:db8::/64")
    assert [await store.run(COUNT_FAILURE, [key], [60_000]) for _ in range(3)] == [1, 2, 3]
    ttl = await store.ttl(key)
    assert ttl is not None and 0 < ttl <= 60
    await store.set(key, b"7")  # a counter somehow left without a TTL gets one at its next failure
    assert await store.run(COUNT_FAILURE, [key], [60_000]) == 8
    ttl = await store.ttl(key)
    assert ttl is not None and 0 < ttl <= 60
