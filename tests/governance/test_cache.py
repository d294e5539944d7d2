"""GovernanceCache, the store-backed cache of identities and plans, with an injected clock.

An entry is fresh for `ttl`, then kept (stale) for `grace` more; a remembered "no such thing"
gets no grace; nothing outlives `not_after`; per-process copies never outlive the stored
freshness; an entry that cannot be decoded is a miss (counted) and is overwritten by the next put.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sentinel.governance.cache import Cached, GovernanceCache
from sentinel.observability.metrics import Metrics
from sentinel.store import Store
from tests.support.clock import FakeClock
from tests.support.metrics import counted
from tests.support.stores import FlakyStore

PREFIX = "test:cache:"


def decode(data: Any) -> dict[str, int]:
    if not isinstance(data, dict) or not isinstance(data.get("n"), int):
        raise ValueError("not a value")
    return dict(data)


class Setup:
    def __init__(self, *, ttl: float = 10, grace: float = 20, local_ttl: float = 0.0) -> None:
        self.clock = FakeClock(1000.0)
        self.store = FlakyStore(self.clock)
        self.metrics = Metrics()
        self.cache: GovernanceCache[dict[str, int]] = GovernanceCache(
            self.store, name="thing", prefix=PREFIX, encode=dict, decode=decode, ttl=ttl, grace=grace,
            clock=self.clock, local_ttl=local_ttl, metrics=self.metrics,
        )

    def lookups(self, result: str) -> float:
        return counted(self.metrics, "sentinel_cache_lookups_total", cache="thing", result=result)


async def test_fresh_then_stale_then_gone() -> None:
    s = Setup()
    await s.cache.put("k", {"n": 1})
    assert await s.cache.get("k") == Cached({"n": 1}, fresh=True)
    s.clock.advance(10.5)  # past the TTL: still there, not fresh
    assert await s.cache.get("k") == Cached({"n": 1}, fresh=False)
    s.clock.advance(20)  # past TTL + grace: gone from the store
    assert await s.cache.get("k") is None
    assert (s.lookups("hit"), s.lookups("stale"), s.lookups("miss")) == (1, 1, 1)


async def test_a_stale_entry_is_never_fresh_even_to_a_clock_behind() -> None:
    """An entry put `stale` (a JWT served from its claims in an outage) is kept for the grace, never
    fresh: with `ttl=0` a replica whose clock is behind the writer's read it as fresh."""
    s = Setup()
    await s.cache.put("k", {"n": 1}, stale=True)
    s.clock.advance(-5)  # another replica, its clock 5 s behind
    assert await s.cache.get("k") == Cached({"n": 1}, fresh=False)
    s.clock.advance(5 + 19.5)  # kept for the grace
    assert await s.cache.get("k") == Cached({"n": 1}, fresh=False)
    s.clock.advance(1)
    assert await s.cache.get("k") is None


async def test_a_remembered_absence_has_no_grace() -> None:
    s = Setup()
    await s.cache.put("k", None, ttl=5)
    assert await s.cache.get("k") == Cached(None, fresh=True)
    s.clock.advance(5.5)
    assert await s.cache.get("k") is None


async def test_not_after_caps_freshness_and_keeping() -> None:
    s = Setup()
    await s.cache.put("k", {"n": 1}, not_after=s.clock() + 3)
    s.clock.advance(2.9)
    assert await s.cache.get("k") == Cached({"n": 1}, fresh=True)
    s.clock.advance(0.2)  # past not_after: neither fresh nor kept for the grace
    assert await s.cache.get("k") is None


async def test_a_value_already_past_not_after_is_not_stored() -> None:
    s = Setup()
    await s.cache.put("k", {"n": 1}, not_after=s.clock() - 1)
    assert s.store.calls["set"] == 0
    assert await s.cache.get("k") is None


async def test_local_copies_spare_the_store_and_never_outlive_freshness() -> None:
    s = Setup(ttl=10, local_ttl=4)
    await s.cache.put("k", {"n": 1})
    s.clock.advance(7)
    assert (await s.cache.get("k")) == Cached({"n": 1}, fresh=True)  # from the store, copied locally
    gets = s.store.calls["get"]
    s.clock.advance(2.5)  # 9.5 s: the copy is younger than local_ttl and the entry still fresh
    assert (await s.cache.get("k")) == Cached({"n": 1}, fresh=True)
    assert s.store.calls["get"] == gets and s.lookups("local_hit") == 1
    s.clock.advance(1)  # 10.5 s: the copy was bounded by the entry's freshness (10 s), not 7 + 4
    assert (await s.cache.get("k")) == Cached({"n": 1}, fresh=False)
    assert s.store.calls["get"] == gets + 1


async def test_put_replaces_the_local_copy() -> None:
    s = Setup(local_ttl=5)
    await s.cache.put("k", {"n": 1})
    await s.cache.get("k")
    await s.cache.put("k", {"n": 2})
    assert await s.cache.get("k") == Cached({"n": 2}, fresh=True)


async def test_stale_entries_are_not_copied_locally() -> None:
    s = Setup(ttl=10, local_ttl=5)
    await s.cache.put("k", {"n": 1})
    s.clock.advance(11)
    await s.cache.get("k")
    await s.cache.get("k")
    assert s.store.calls["get"] == 2 and s.lookups("local_hit") == 0


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"v": {"n": 1}}', b'{"fresh_until": 1e12}', b'{"v": {"n": "x"}, "fresh_until": 1e12}'],
)
async def test_an_undecodable_entry_is_a_counted_miss_and_is_overwritten(raw: bytes) -> None:
    s = Setup()
    await s.store.set(PREFIX + "k", raw, 60)
    assert await s.cache.get("k") is None
    assert s.lookups("undecodable") == 1
    await s.cache.put("k", {"n": 3})
    assert await s.cache.get("k") == Cached({"n": 3}, fresh=True)


async def test_entries_are_stored_under_the_prefix_in_the_documented_shape() -> None:
    s = Setup()
    await s.cache.put("k", {"n": 1})
    stored = orjson.loads(await s.store.get(PREFIX + "k") or b"null")
    assert stored == {"v": {"n": 1}, "fresh_until": s.clock() + 10}
    assert await s.store.ttl(PREFIX + "k") == pytest.approx(30)  # TTL + grace


async def test_a_store_outage_is_a_miss_and_a_put_is_only_logged() -> None:
    s = Setup()
    s.store.fail()
    assert await s.cache.get("k") is None
    await s.cache.put("k", {"n": 1})  # no exception
    assert s.lookups("store_error") == 1
    s.store.recover()
    assert await s.cache.get("k") is None  # nothing was written during the outage


async def test_a_hold_lets_in_only_a_value_looked_up_after_it(store: Store) -> None:
    """On both backends (the Lua script and its local twin): a change's hold (`reopens`) refuses the
    value of a lookup that began before it, or within the clocks' margin, and takes one begun later;
    a revocation's tombstone (no `reopens`) takes none."""
    clock = FakeClock(1_000_000.0)
    cache: GovernanceCache[dict[str, int]] = GovernanceCache(
        store, name="plan", prefix="t:hold:", encode=lambda v: v, decode=decode, ttl=300, grace=0, clock=clock)
    await cache.put("u", {"n": 1})
    began_before = clock()
    clock.advance(1)
    await cache.hold("u", 30, reopens=True)
    await cache.put("u", {"n": 1}, began=began_before)
    assert await cache.get("u") == Cached(None, True)
    clock.advance(1)
    await cache.put("u", {"n": 2}, began=clock())  # within the margin of the hold
    assert await cache.get("u") == Cached(None, True)
    clock.advance(2)
    await cache.put("u", {"n": 3}, began=clock())
    assert await cache.get("u") == Cached({"n": 3}, True)
    await cache.hold("u", 30)  # a tombstone
    clock.advance(10)
    await cache.put("u", {"n": 4}, began=clock())
    assert await cache.get("u") == Cached(None, True)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":null,garbage',  # a refusal's start, cut short
        b'{"v":null}trailing',
        b'{"v":null}',  # no fresh_until
        b'{"v":null,"fresh_until":"soon"}',
        b'{"v":null,"fresh_until":nan}',  # Lua's cjson reads it; orjson does not
        b'{"v":null,"fresh_until":1e400}',
        b'{"v":null,"fresh_until":1,"held_at":1e400}',
        b'[null]',
        b"\xff\xfe",
    ],
)
async def test_an_unreadable_entry_is_replaced_by_a_put_on_both_backends(store: Store, raw: bytes) -> None:
    """The put script and its local twin read the stored entry as the readers do: one they cannot
    read is a miss, never a refusal nor an error, and the next value replaces it. It made every put
    fail (a 500 on the in-process store; on Redis nothing was cached again until it expired)."""
    clock = FakeClock(1_000_000.0)
    cache: GovernanceCache[dict[str, int]] = GovernanceCache(
        store, name="thing", prefix="t:junk:", encode=dict, decode=decode, ttl=300, grace=0, clock=clock)
    await store.set("t:junk:k", raw, 60)
    assert await cache.get("k") is None
    await cache.put("k", {"n": 1})
    assert await cache.get("k") == Cached({"n": 1}, True)
    await store.set("t:junk:k", raw, 60)
    await cache.put("k", {"n": 2}, began=clock())  # a plan lookup's put, after a change
    assert await cache.get("k") == Cached({"n": 2}, True)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":null,"fresh_until":2000000}',  # a refusal
        b'{"v":null,"fresh_until":2000000,"held_at":"x"}',  # a hold whose time cannot be read: still one
        b'{"v":null,"fresh_until":2000000,"held_at":true}',
    ],
)
async def test_a_readable_refusal_still_keeps_values_out_on_both_backends(store: Store, raw: bytes) -> None:
    clock = FakeClock(1_000_000.0)
    cache: GovernanceCache[dict[str, int]] = GovernanceCache(
        store, name="thing", prefix="t:junk:", encode=dict, decode=decode, ttl=300, grace=0, clock=clock)
    await store.set("t:junk:k", raw, 60)
    await cache.put("k", {"n": 1})
    await cache.put("k", {"n": 1}, began=clock() + 100)
    assert await cache.get("k") == Cached(None, True)


async def test_drop_value_drops_a_value_and_never_a_refusal(store: Store) -> None:
    """A user changed at its source (an email replaced) drops its cached value on both backends, and
    a local copy with it; a refusal under the key (a revoked key's tombstone) stays: dropped, the key
    was looked up again and served until its TTL by a lookup that had read it active."""
    clock = FakeClock(1_000_000.0)
    cache: GovernanceCache[dict[str, int]] = GovernanceCache(
        store, name="identity", prefix="t:drop:", encode=dict, decode=decode, ttl=300, grace=900, clock=clock,
        local_ttl=1.0)
    await cache.put("changed", {"n": 1})
    assert await cache.get("changed") == Cached({"n": 1}, True)  # copied locally
    await cache.drop_value("changed")
    assert await cache.get("changed") is None and await store.get("t:drop:changed") is None
    await cache.hold("revoked", 1200)
    await cache.drop_value("revoked")
    assert await cache.get("revoked") == Cached(None, True)
    await cache.drop_value("absent")
    assert await store.get("t:drop:absent") is None
