"""SessionStore: activity-based TTL, ownership, first-writer-wins creation (both backends)."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from sentinel.errors import PermissionDenied, StoreUnavailable
from sentinel.routing.sessions import Session, SessionStore
from sentinel.store import MemoryStore, Store
from tests.support.clock import FakeClock
from tests.support.lost_replies import LostReply
from tests.support.stores import FlakyStore


def make_session(conv: str = "conv-1", owner: str = "alice", model: str = "gpt-4o-mini") -> Session:
    return Session(conv, owner, "simple", "openai", model, 0.0, 0.0)


async def test_ttl_is_refreshed_by_activity_injected_clock() -> None:
    clock = FakeClock(0.0)
    sessions = SessionStore(MemoryStore(clock=clock), ttl=100, clock=clock)
    session = make_session()
    await sessions.create(session)
    clock.advance(99)
    assert await sessions.get("conv-1", "alice") is not None
    assert await sessions.touch(session)  # a turn at t=99 refreshes the TTL to t=199
    clock.advance(99.5)
    found = await sessions.get("conv-1", "alice")
    assert found is not None and found.last_seen_at == 99
    clock.advance(1)  # t=199.5, 100.5 s after the last activity
    assert await sessions.get("conv-1", "alice") is None


async def test_replace_refreshes_the_ttl(store: Store) -> None:
    sessions = SessionStore(store, ttl=1000)
    session = make_session()
    await sessions.create(session)
    key = SessionStore.key("alice", "conv-1")
    assert await store.expire(key, 5)
    ttl = await store.ttl(key)
    assert ttl is not None and ttl <= 5
    assert await sessions.replace(session, replace(session, tier="complex", model="gpt-4o"))
    ttl = await store.ttl(key)
    assert ttl is not None and ttl > 500
    stored = await sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.model) == ("complex", "gpt-4o")


async def test_replace_leaves_a_session_changed_since_it_was_read(store: Store) -> None:
    """Two requests read the same session and both change it (an upgrade, a migration); each
    answered after a long generation and wrote its own unconditionally, so the last one answered
    overwrote the first (and the migration it counted). Now the first written wins; the other finds
    the session changed and leaves it. A touch in between (last_seen_at) is no change."""
    clock = FakeClock(0.0)
    sessions = SessionStore(store, ttl=1000, clock=clock)
    await sessions.create(make_session())
    first, second = await sessions.get("conv-1", "alice"), await sessions.get("conv-1", "alice")
    assert first is not None and second is not None
    clock.advance(5)
    assert await sessions.touch(replace(second))  # a hit meanwhile
    migrated = replace(second, model="gpt-4o", migrations=1)
    assert await sessions.replace(second, migrated)
    assert not await sessions.replace(first, replace(first, tier="complex", model="o3"))
    stored = await sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.model, stored.migrations) == ("simple", "gpt-4o", 1)
    # There and back again is a change too (the migrations count differs)
    back = replace(migrated, model="gpt-4o-mini", migrations=2)
    assert await sessions.replace(migrated, back)
    assert not await sessions.replace(second, replace(second, tier="complex"))
    # A session gone (expired) is not brought back by a request that read it before
    await store.delete(SessionStore.key("alice", "conv-1"))
    assert not await sessions.replace(back, replace(back, tier="complex"))
    assert await sessions.get("conv-1", "alice") is None


async def test_conversation_ids_are_each_users_own(store: Store) -> None:
    """Keyed by the id alone, another user's conversation under an id was a 403: anyone could squat
    an id someone would use (and learn that it was in use). Each user's ids are their own."""
    sessions = SessionStore(store, ttl=1000)
    await sessions.create(make_session())
    before = await store.get(SessionStore.key("alice", "conv-1"))
    assert await sessions.get("conv-1", "bob") is None
    bobs = await sessions.create(make_session(owner="bob", model="gpt-4o"))
    assert bobs.external_id == "bob" and bobs.model == "gpt-4o"
    assert await store.get(SessionStore.key("alice", "conv-1")) == before
    assert SessionStore.key("a:b", "c") != SessionStore.key("a", "b:c")


async def test_first_creator_wins(store: Store) -> None:
    sessions = SessionStore(store, ttl=1000)
    first = await sessions.create(make_session(model="gpt-4o-mini"))
    second = await sessions.create(make_session(model="gpt-4o"))
    assert first.model == second.model == "gpt-4o-mini"
    stored = await sessions.get("conv-1", "alice")
    assert stored is not None and stored.model == "gpt-4o-mini"


async def test_delete_if_removes_only_the_session_as_created(store: Store) -> None:
    """A first turn no model answered removes the session it created, and nothing else: not a
    session another first turn created, nor its own once changed or refreshed by another request."""
    clock = FakeClock(0.0)
    sessions = SessionStore(store, ttl=1000, clock=clock)
    created = make_session()
    assert await sessions.create(created) is created
    assert not await sessions.delete_if(make_session(model="gpt-4o"))  # another first turn's choice
    assert await sessions.delete_if(created)
    assert await sessions.get("conv-1", "alice") is None
    assert not await sessions.delete_if(created)  # gone: nothing to delete

    await sessions.create(created)
    clock.advance(5)
    assert await sessions.touch(replace(created))  # a later turn answered meanwhile
    assert not await sessions.delete_if(created)
    assert await sessions.get("conv-1", "alice") is not None

    upgraded = make_session(conv="conv-2")
    await sessions.create(upgraded)
    assert await sessions.replace(upgraded, replace(upgraded, tier="complex", model="gpt-4o"))
    assert not await sessions.delete_if(upgraded)
    stored = await sessions.get("conv-2", "alice")
    assert stored is not None and stored.model == "gpt-4o"


async def test_replace_if_moves_only_the_session_as_created(store: Store) -> None:
    """A first turn's retry moved the session it created with `replace`, which ignores a refresh:
    once a concurrent first turn that followed it had been answered by its model, the retry's
    answer still moved the conversation to another model. `replace_if` compares the exact bytes,
    as `delete_if` does: a refresh is a change."""
    clock = FakeClock(0.0)
    sessions = SessionStore(store, ttl=1000, clock=clock)
    created = make_session()
    assert await sessions.create(created) is created
    clock.advance(5)
    assert await sessions.touch(replace(created))  # a follower answered by gpt-4o-mini meanwhile
    assert not await sessions.replace_if(created, replace(created, model="gpt-4o"))
    stored = await sessions.get("conv-1", "alice")
    assert stored is not None and (stored.model, stored.last_seen_at) == ("gpt-4o-mini", 5)

    untouched = make_session(conv="conv-2")
    await sessions.create(untouched)
    key = SessionStore.key("alice", "conv-2")
    assert await store.expire(key, 5)
    clock.advance(1)
    assert await sessions.replace_if(untouched, replace(untouched, model="gpt-4o"))
    stored = await sessions.get("conv-2", "alice")
    assert stored is not None and (stored.model, stored.created_at, stored.last_seen_at) == ("gpt-4o", 0, 6)
    ttl = await store.ttl(key)
    assert ttl is not None and ttl > 500  # refreshed
    assert not await sessions.replace_if(untouched, replace(untouched, model="o3"))  # no longer as created
    await store.delete(key)
    assert not await sessions.replace_if(untouched, replace(untouched, model="o3"))  # gone: not brought back
    assert await sessions.get("conv-2", "alice") is None


async def test_a_creation_whose_reply_was_lost_is_settled_by_its_claim(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SET NX ran and its reply was lost: `create` raised StoreUnavailable, and the first turn then
    took the session it had written for another's (its retry's answer did not move it). Read back,
    the session's claim token tells: its own is returned as written, another's as the winner — also
    one with the very same fields (the same model at the same instant)."""
    sessions = SessionStore(store, ttl=1000)
    lost = LostReply(store, monkeypatch, "SET", "sentinel:session:")
    created = make_session()
    assert await sessions.create(created) is created
    assert lost.lost == 1
    raw = await store.get(SessionStore.key("alice", "conv-1"))
    assert raw is not None and orjson.loads(raw)["claim"] == created.claim and len(created.claim or "") == 32

    lost = LostReply(store, monkeypatch, "SET", "sentinel:session:")
    twin = make_session()  # another first turn's: equal fields, a claim of its own
    assert twin == created and twin.claim != created.claim
    won = await sessions.create(twin)
    assert lost.lost == 1
    assert won is not twin and won.claim == created.claim
    assert await sessions.delete_if(created) and not await sessions.delete_if(twin)


async def test_a_creation_whose_outcome_stays_unknown_raises() -> None:
    """Not written (the write failed before it ran, or is not there yet), or not readable back: the
    outcome is unknown, StoreUnavailable (the router settles it once answered)."""
    store = FlakyStore()
    sessions = SessionStore(store, ttl=1000)
    store.fail("set")
    with pytest.raises(StoreUnavailable):
        await sessions.create(make_session())
    assert store.calls["get"] == 1  # read back: nothing there
    store.fail("set", "get")
    with pytest.raises(StoreUnavailable):
        await sessions.create(make_session())


async def test_sessions_stored_before_claims_load_and_are_no_creations_own(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session stored by a version without claim tokens loads (claim None), is written back in its
    own format, is kept up by the scripts, and is never taken for a creation's own."""
    clock = FakeClock(0.0)
    sessions = SessionStore(store, ttl=1000, clock=clock)
    key = SessionStore.key("alice", "conv-1")
    old = {"conversation_id": "conv-1", "external_id": "alice", "tier": "simple", "provider": "openai",
           "model": "gpt-4o-mini", "created_at": 0.0, "last_seen_at": 0.0, "migrations": 0}
    await store.set(key, orjson.dumps(old), 1000)
    found = await sessions.get("conv-1", "alice")
    assert found is not None and found.claim is None and found == make_session()
    assert found.to_bytes() == orjson.dumps(old)
    assert "claim" not in found.view()
    clock.advance(5)
    assert await sessions.touch(found)
    LostReply(store, monkeypatch, "SET", "sentinel:session:")
    mine = replace(make_session(model="gpt-4o"), claim=None)  # a creation without a claim: not "its own" either
    won = await sessions.create(mine)
    assert won is not mine and won.model == "gpt-4o-mini" and won.claim is None
    assert await sessions.replace(found, replace(found, tier="complex", model="gpt-4o"))
    stored = await store.get(key)
    assert stored is not None and "claim" not in orjson.loads(stored)


async def test_a_claim_never_makes_another_users_session_ones_own(store: Store) -> None:
    """Claims are compared only under the user's own key, and with its owner: a value naming another
    user (only a hash collision or a hand-written value puts one there) with the same claim is still
    refused, never taken for the creation's own."""
    sessions = SessionStore(store, ttl=1000)
    alices = make_session()
    bobs = replace(make_session(owner="bob"), claim=alices.claim)
    await store.set(SessionStore.key("alice", "conv-1"), bobs.to_bytes(), 1000)
    with pytest.raises(PermissionDenied):
        await sessions.create(alices)
