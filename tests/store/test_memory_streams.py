"""The memory store's streams with an injected clock: idle takeover at its exact boundary, no sleeping."""

from __future__ import annotations

from sentinel.store import MemoryStore
from sentinel.store.base import parse_stream_id

S = "sentinel:usage:outbox"
G = "deliverers"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_idle_takeover_starts_exactly_at_min_idle() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    entry_id = await store.stream_add(S, {"r": b"x"})
    assert [e.id for e in await store.stream_read(S, G, "crashed", 10)] == [entry_id]
    clock.now += 29.999
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == []
    assert await store.stream_reclaim(S, G, "crashed", [entry_id], min_idle_ms=30_000) == []
    clock.now += 0.001
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == [(entry_id, "crashed")]
    assert [e.id for e in await store.stream_reclaim(S, G, "crashed", [entry_id], min_idle_ms=30_000)] == [entry_id]
    # Taking over resets the idle time: the new holder has its full lease.
    clock.now += 29.0
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == []
    clock.now += 1.0
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == [(entry_id, "crashed")]


async def test_retried_entries_start_a_new_lease_under_their_new_consumer() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    ids = [await store.stream_add(S, {"r": bytes([i])}) for i in range(2)]
    await store.stream_read(S, G, "batch-1", 2)
    clock.now += 10
    await store.stream_settle(S, G, "batch-1", done=[ids[0]], retry=[ids[1]], retry_to="batch-2")
    clock.now += 29.999
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == []
    clock.now += 0.001
    assert await store.stream_idle(S, G, min_idle_ms=30_000, count=10) == [(ids[1], "batch-2")]


async def test_ids_never_go_backwards_with_the_clock() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    first = await store.stream_add(S, {"r": b"1"})
    clock.now -= 5  # the clock jumps back
    second = await store.stream_add(S, {"r": b"2"})
    clock.now += 10
    third = await store.stream_add(S, {"r": b"3"})
    assert parse_stream_id(first) < parse_stream_id(second) < parse_stream_id(third)
    assert first == "1000000-0" and second == "1000000-1" and third == "1005000-0"


async def test_entries_deleted_while_pending_are_not_handed_out() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    ids = [await store.stream_add(S, {"r": bytes([i])}) for i in range(3)]
    await store.stream_read(S, G, "a", 3)
    # Another group's consumer settles (and so deletes) the middle entry.
    assert await store.stream_settle(S, "other", "x", done=[ids[1]]) == 1
    assert await store.stream_idle(S, G, min_idle_ms=0, count=3) == [(i, "a") for i in ids]  # still listed
    assert [e.id for e in await store.stream_reclaim(S, G, "a", ids, min_idle_ms=0)] == [ids[0], ids[2]]
    # and reclaiming dropped it from the pending list, as XCLAIM does
    assert await store.stream_idle(S, G, min_idle_ms=0, count=3) == [(ids[0], "a"), (ids[2], "a")]


async def test_replicas_have_nothing_to_wait_for_in_one_process() -> None:
    store = MemoryStore()
    assert store.shared is False
    entry_id = await store.stream_add(S, {"r": b"x"}, replicas=2, replica_timeout_ms=1)
    assert [e.id for e in await store.stream_read(S, G, "a", 1)] == [entry_id]


async def test_streams_are_keys_for_scan_and_delete() -> None:
    store = MemoryStore()
    await store.stream_add(S, {"r": b"x"})
    assert await store.scan("sentinel:usage:*") == [S]
    assert await store.delete(S, "missing") == 1
    assert await store.stream_len(S) == 0
