"""Every user's quota keys share one hash slot, whatever characters the user id holds.

The keys are `sentinel:quota:{<tag>}:<metric>:<window>:<index>`, and a Redis Cluster hashes only
what lies between the first `{` and the next `}`. A user id that itself contains braces would move
that boundary: one starting with `}` leaves an empty tag, the whole key is hashed, and the counters
of a multi-limit plan land in different slots: every request of that user failed on a cluster
(the store refuses a script across slots). Such ids are tagged by a digest instead.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from sentinel.domain.plans import ExternalUsage, Limit, Plan
from sentinel.quota.limiter import QuotaLimiter
from sentinel.store import MemoryStore
from sentinel.store.base import beside, hashed_part
from sentinel.store.cluster import RedisClusterStore

PLAN = Plan(
    "multi", (Limit("requests", 60, 3), Limit("requests", 86_400, 100), Limit("input_tokens", 3600, 10_000))
)
# A Zion plan next to the default plan's throttle: counters and the in-flight record in one call.
ZION_PLAN = Plan(
    "zion", (Limit("output_tokens", 1260, 10_000, ExternalUsage(0, "s1")), Limit("requests", 60, 100))
)
ODD_IDS = ["}odd", "}", "{", "{}", "a}b", "{a}", "x{y}z", "}{", "plain-user"]
NOW = 1_700_000_000.0


@pytest.mark.parametrize("external_id", ODD_IDS)
async def test_the_keys_of_one_user_share_a_slot(external_id: str) -> None:
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: NOW)
    reservation = await limiter.reserve(external_id, PLAN, input_tokens=10, output_tokens=0)
    assert len({key_slot(key.encode()) for key in reservation.keys}) == 1, reservation.keys
    zion = await limiter.reserve(external_id, ZION_PLAN, input_tokens=0, output_tokens=10)
    keys = zion.keys + zion.in_flight
    assert len(keys) == 3 and len({key_slot(key.encode()) for key in keys}) == 1, keys


@pytest.mark.parametrize(
    ("one", "other"), [("}a", "}b"), ("{", "%7B"), ("}", "%7D"), ("%", "%25"), ("a}b", "a")]
)
async def test_different_ids_never_share_counters(one: str, other: str) -> None:
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: NOW)
    a = await limiter.reserve(one, PLAN, input_tokens=1, output_tokens=0)
    b = await limiter.reserve(other, PLAN, input_tokens=1, output_tokens=0)
    assert not set(a.keys) & set(b.keys)


async def test_plain_ids_keep_their_key_format() -> None:
    limiter = QuotaLimiter(MemoryStore(), clock=lambda: NOW)
    reservation = await limiter.reserve("user-1", PLAN, input_tokens=1, output_tokens=0)
    assert reservation.keys[0] == f"sentinel:quota:{{user-1}}:requests:60:{int(NOW // 60)}"


async def test_odd_ids_are_limited_on_a_cluster(redis_cluster_url: str) -> None:
    store = RedisClusterStore(redis_cluster_url, timeout=2.0)
    limiter = QuotaLimiter(store, clock=lambda: NOW)
    try:
        for external_id in ODD_IDS:
            allowed = [
                (await limiter.reserve(external_id, PLAN, input_tokens=1, output_tokens=0)).allowed
                for _ in range(4)
            ]
            assert allowed == [True, True, True, False], external_id
    finally:
        await store.close()


@pytest.mark.parametrize("object_id", ODD_IDS)
def test_a_key_beside_another_shares_its_slot_or_is_none(object_id: str) -> None:
    """`beside` (an object's children's list next to its owner record, `sentinel:owner:<id>`, a key
    without a hash tag of Sentinel's): in that key's slot whatever braces the id holds, or None when
    no key can be (the part hashed holds a `}`)."""
    key = "sentinel:owner:" + object_id
    found = beside(key, ":charged-children")
    if found is None:
        assert "}" in hashed_part(key)
    else:
        assert found != key and key_slot(found.encode()) == key_slot(key.encode())
    assert beside("sentinel:owner:thread_abc", ":x") == "{sentinel:owner:thread_abc}:x"
