"""Ownership records on each store backend (memory and a real Redis): a recorded owner is never
replaced, so an answer that names another user's object cannot hand that object over."""

from __future__ import annotations

import pytest

from sentinel.errors import NotFound
from sentinel.governance.ownership import Ownership
from sentinel.store import Store

DAY = 86400.0


async def test_the_first_owner_is_kept(store: Store) -> None:
    owners = Ownership(store)
    assert await owners.claim("file-1", "alice", None) is True
    assert await owners.claim("file-1", "bob", None) is False
    assert await owners.claim("file-1", "bob", 30 * DAY) is False
    assert await owners.owner_of("file-1") == "alice"
    await owners.require(["file-1"], "alice")
    with pytest.raises(NotFound):
        await owners.require(["file-1"], "bob")


async def test_a_claim_by_someone_else_leaves_the_expiry_alone(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("resp_1", "alice", 31 * DAY)
    before = await store.ttl("sentinel:owner:resp_1")
    assert before is not None and 30 * DAY < before <= 31 * DAY
    assert await owners.claim("resp_1", "bob", None) is False
    after = await store.ttl("sentinel:owner:resp_1")
    assert after is not None and 0 < after <= before  # not made permanent by bob's claim


async def test_the_owners_own_claim_refreshes_the_expiry(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("batch_1", "alice", 60.0)
    assert await owners.claim("batch_1", "alice", 31 * DAY) is True
    ttl = await store.ttl("sentinel:owner:batch_1")
    assert ttl is not None and ttl > 30 * DAY
    assert await owners.claim("batch_1", "alice", None) is True
    assert await store.ttl("sentinel:owner:batch_1") == -1.0  # no expiry: kept until deleted


async def test_a_forgotten_object_can_be_claimed_again(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("file-2", "alice", None)
    await owners.forget("file-2")
    assert await owners.claim("file-2", "bob", None) is True
    assert await owners.owner_of("file-2") == "bob"


@pytest.mark.parametrize("object_id", ["", "x" * 201, "file-\ud800"], ids=["empty", "long", "lone-surrogate"])
async def test_ids_out_of_bounds_are_never_recorded(store: Store, object_id: str) -> None:
    """An empty or long id, and one holding a lone surrogate (Python's json reads one; no Redis key
    can hold it: the command failed, a 500), names nothing: never recorded, never looked up."""
    owners = Ownership(store)
    assert await owners.claim(object_id, "alice", None) is False
    assert await owners.owner_of(object_id) is None
    assert await owners.charge_once(object_id, None) is False
    await owners.remember_context(object_id, 5, None)
    await owners.grow_context(object_id, 5)
    await owners.forget(object_id)
    assert await owners.context_of([object_id]) == 0
