"""Sessions that cannot be decoded are absent (logged, counted) and replaced; never an error.
Each store backend in turn (memory and a real Redis, whose touch is a Lua script)."""

from __future__ import annotations

import logging

import orjson
import pytest

from sentinel.errors import PermissionDenied
from sentinel.observability.metrics import Metrics
from sentinel.routing.sessions import Session, SessionStore
from sentinel.store import Store

GARBAGE = [
    b"\x00\xff\xfe not json",
    b"[1, 2, 3]",
    b'"a string"',
    orjson.dumps({"conversation_id": "c1", "external_id": 42, "tier": "simple"}),  # wrong types, missing keys
    orjson.dumps({"conversation_id": "c1", "external_id": "alice", "tier": "simple", "provider": "openai",
                  "model": "gpt-4o-mini", "created_at": "yesterday", "last_seen_at": 1.0}),
]


def session(owner: str = "alice") -> Session:
    return Session("c1", owner, "simple", "openai", "gpt-4o-mini", 1000.0, 1000.0)


def undecodable(metrics: Metrics) -> float:
    value: float = metrics.cache_lookups.labels("session", "undecodable")._value.get()
    return value


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_a_garbled_session_is_absent_then_replaced(
    store: Store, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.sessions")
    metrics = Metrics()
    sessions = SessionStore(store, ttl=60, metrics=metrics)
    await store.set(SessionStore.key("alice", "c1"), garbage, 60)
    assert await sessions.get("c1", "alice") is None  # not a 500, and not "someone else's" (403)
    assert undecodable(metrics) == 1
    assert "undecodable session" in caplog.text
    won = await sessions.create(session())
    assert won == session()
    assert await sessions.get("c1", "alice") == session()  # replaced by a good one
    assert await sessions.touch(won)


async def test_touch_over_a_garbled_value_changes_nothing(store: Store) -> None:
    sessions = SessionStore(store, ttl=60)
    current = await sessions.create(session())
    await store.set(SessionStore.key("alice", "c1"), b"\x00garbled", 60)  # corrupted after it was read
    assert await sessions.touch(current) is False
    assert await store.get(SessionStore.key("alice", "c1")) == b"\x00garbled"


async def test_a_session_under_another_users_key_is_still_forbidden(store: Store) -> None:
    """Keys are per user; a value naming another owner under a user's key (only a hash collision
    or a hand-written value puts one there) is still refused, never served as theirs."""
    sessions = SessionStore(store, ttl=60)
    await store.set(SessionStore.key("alice", "c1"), session("bob").to_bytes(), 60)
    with pytest.raises(PermissionDenied):
        await sessions.get("c1", "alice")
    with pytest.raises(PermissionDenied):
        await sessions.create(session("alice"))
