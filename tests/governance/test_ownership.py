"""Ownership records on each store backend (memory and a real Redis): a recorded owner is never
replaced, so an answer that names another user's object cannot hand that object over."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.errors import NotFound, StoreUnavailable
from sentinel.governance.ownership import LOOKUPS_AT_ONCE, Ownership
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


async def test_the_ids_a_body_names_are_looked_up_at_once_each_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body may name 1,000 ids (the same one 1,000 times, too): looked up one after another, each
    was a store round trip of its own. Each distinct id is looked up once, and all together (on
    Redis they share a round trip)."""
    owners = Ownership(store)
    for i in range(5):
        await owners.claim(f"file-{i}", "alice", None)
    looked_up: list[str] = []
    running = peak = 0
    get = store.get

    async def counting(key: str) -> bytes | None:
        nonlocal running, peak
        looked_up.append(key)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0)  # (a yield: the lookups issued in the same turn run together)
            return await get(key)
        finally:
            running -= 1

    monkeypatch.setattr(store, "get", counting)
    await owners.require([f"file-{i % 5}" for i in range(1000)], "alice")
    assert sorted(looked_up) == [f"sentinel:owner:file-{i}" for i in range(5)]
    assert peak == 5
    looked_up.clear()
    with pytest.raises(NotFound, match="file-9"):
        await owners.require(["file-0", "file-9", "file-1", "file-9"], "alice")
    assert len(looked_up) == 3


async def test_a_store_failure_in_a_lookup_is_the_store_error(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    owners = Ownership(store)
    await owners.claim("file-1", "alice", None)
    get = store.get

    async def failing(key: str) -> bytes | None:
        if key.endswith("file-2"):
            raise StoreUnavailable("store down")
        return await get(key)

    monkeypatch.setattr(store, "get", failing)
    with pytest.raises(StoreUnavailable):
        await owners.require(["file-1", "file-2"], "alice")


async def test_lookups_under_way_at_once_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each lookup under way holds one of the store's connections: 1,000 distinct ids at once took a
    Redis pool's 512 (a 503 for that request, and for everyone else's store commands meanwhile)."""
    owners = Ownership(store)
    ids = [f"file-{i}" for i in range(100)]
    for object_id in ids:
        await owners.claim(object_id, "alice", None)
    running = peak = 0
    get = store.get

    async def counting(key: str) -> bytes | None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0)
            return await get(key)
        finally:
            running -= 1

    monkeypatch.setattr(store, "get", counting)
    await owners.require(ids, "alice")
    assert 1 < peak <= LOOKUPS_AT_ONCE


async def test_a_turn_keeps_what_its_conversation_grew_by_meanwhile(store: Store) -> None:
    """A turn's count replaces the count it was admitted at (its input read it), never what was added
    since; a count that only shrank (a truncated turn) is the turn's own; a missing one is the turn's."""
    owners = Ownership(store)
    await owners.remember_turn("conv_1", 700, 0, None)
    assert await owners.contexts(["conv_1"]) == {"conv_1": 700}
    await owners.grow_context("conv_1", 300)  # items added while the next turn, admitted at 700, ran
    await owners.remember_turn("conv_1", 900, 700, None)
    assert await owners.context_of(["conv_1"]) == 1200
    await owners.remember_turn("conv_1", 400, 1200, 31 * DAY)  # truncated by the provider
    assert await owners.context_of(["conv_1"]) == 400
    ttl = await store.ttl("sentinel:context:conv_1")
    assert ttl is not None and 30 * DAY < ttl <= 31 * DAY
    await owners.forget("conv_1")
    await owners.remember_turn("conv_1", 50, 10_000, None)
    assert await owners.context_of(["conv_1"]) == 50
    await owners.remember_turn("conv_1", 10**12 * 3, 0, None)  # far past what a float prints plainly in Lua
    assert await owners.context_of(["conv_1"]) == 10**12 * 3 + 50
