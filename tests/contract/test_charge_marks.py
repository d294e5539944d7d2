"""A read's charge claim never outlives the object it charges, on every backend (memory, Redis, a
Redis Cluster — where the claim's mark and its object's owner record are in different slots).

A read passes the ownership check, then a DELETE of the object forgets its owner and its marks
(`Ownership.forget`), then the read claims the charge: the claim made `sentinel:charged:<id>` again,
kept for ever when its TTL is None (a thread's runs, a batch, a fine-tuning job) — for an object
that no longer exists. The DELETE is injected at each step of the claim (before it, between its mark
and its owner read); the read is still the first (it showed the usage: charged, under the object's
key), and no mark is left."""

from __future__ import annotations

import pytest

from sentinel.governance.ownership import Ownership
from sentinel.store import Store


def _deleted_between(owners: Ownership, deleted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE of `deleted`, landing after the claim's mark is made, before its owner is read."""
    real = owners.owner_of

    async def owner_of(object_id: str) -> str | None:
        await owners.forget(deleted)
        return await real(object_id)

    monkeypatch.setattr(owners, "owner_of", owner_of)


@pytest.mark.parametrize("lands", ["before the claim", "between its mark and its owner read"])
@pytest.mark.parametrize(("charged", "within"), [("batch_1", "batch_1"), ("run_1", "thread_1")])
async def test_a_claim_after_its_objects_delete_leaves_no_mark(
    store: Store, monkeypatch: pytest.MonkeyPatch, lands: str, charged: str, within: str
) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim(within, "alice", None)
        if lands == "before the claim":
            await owners.forget(within)  # (the DELETE's)
        else:
            _deleted_between(owners, within, monkeypatch)
        assert await owners.claim_charge(charged, None, within) == "first"  # (it showed the usage: charged)
        await owners.confirm_charged([charged], None)
        assert await store.get("sentinel:charged:" + charged) is None
        assert await owners.owner_of(within) is None
    finally:
        await store.delete("sentinel:charged:" + charged, "sentinel:owner:" + within)


async def test_a_claim_while_its_object_is_kept_is_marked_and_confirmed(store: Store) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim("thread_1", "alice", None)
        assert await owners.claim_charge("run_1", None, "thread_1") == "first"
        assert await owners.claim_charge("run_1", None, "thread_1") == "pending"
        await owners.confirm_charged(["run_1"], None)
        assert await owners.claim_charge("run_1", None, "thread_1") == "charged"
        assert await store.ttl("sentinel:charged:run_1") == -1.0  # (kept as long as its thread: no TTL)
    finally:
        await store.delete("sentinel:charged:run_1", "sentinel:owner:thread_1")


async def test_a_claim_found_after_the_delete_is_not_taken_back(store: Store) -> None:
    """Only the claim's own mark is taken back: another read's, found there, is that read's to answer for."""
    owners = Ownership(store)
    try:
        await store.set("sentinel:charged:batch_1", b"charged", None)
        assert await owners.claim_charge("batch_1", None, "batch_1") == "charged"
        assert await store.get("sentinel:charged:batch_1") == b"charged"
    finally:
        await store.delete("sentinel:charged:batch_1")
