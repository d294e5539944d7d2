"""Built-in API keys on SQLite and PostgreSQL: issue, authenticate, list, revoke, store no secrets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sentinel.db.engine import create_engine, session_factory
from sentinel.domain.identity import Identity
from sentinel.domain.plans import Limit
from sentinel.errors import AuthenticationError, GovernanceUnavailable, InvalidRequest
from sentinel.governance.identity import IdentitySource
from sentinel.governance.keys import KeyService, generate_key, hash_key
from sentinel.governance.plans import PlanRepository


class FakeClock:
    """A settable clock handed to KeyService (the seam for last_used_at throttling)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys(sessions: async_sessionmaker[AsyncSession], clock: FakeClock) -> KeyService:
    return KeyService(sessions, clock=clock)


def test_generated_keys_have_the_documented_shape() -> None:
    key = generate_key()
    assert re.fullmatch(r"sk-sentinel-[A-Za-z0-9_-]{40}", key)
    assert generate_key() != key
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


async def test_create_then_authenticate(keys: KeyService) -> None:
    info, key = await keys.create_key("user-1", name="laptop", email="u1@example.com")
    assert re.fullmatch(r"key_[0-9a-f]{12}", info.id)
    assert info.external_id == "user-1" and info.name == "laptop"
    assert info.prefix == key[:20] and info.prefix.startswith("sk-sentinel-")
    assert info.revoked_at is None and info.last_used_at is None

    identity = await keys.authenticate(key)
    assert identity is not None
    assert identity.external_id == "user-1"
    assert identity.email == "u1@example.com"
    assert identity.source == "api_key"
    assert identity.key_id == info.id
    assert identity.plan is None
    assert identity.user_id == await keys.ensure_user("user-1")


async def test_satisfies_identity_source_protocol(keys: KeyService) -> None:
    source: IdentitySource = keys
    assert source.name == "api_key"


async def test_unknown_malformed_and_tampered_tokens_are_rejected(keys: KeyService) -> None:
    _, key = await keys.create_key("user-1")
    assert await keys.authenticate(generate_key()) is None
    assert await keys.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await keys.authenticate(key + "x") is None
    assert await keys.authenticate("") is None
    assert await keys.authenticate("Bearer " + key) is None
    assert await keys.authenticate("eyJhbGciOiJIUzI1NiJ9.e30.sig") is None


async def test_plaintext_key_is_never_stored(keys: KeyService, db_engine: AsyncEngine) -> None:
    _, key = await keys.create_key("user-1", name="ci", email="u1@example.com")
    secret_part = key.removeprefix("sk-sentinel-")
    async with db_engine.connect() as conn:
        keys_rows = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().all()
        user_rows = (await conn.execute(text("SELECT * FROM users"))).mappings().all()
    assert len(keys_rows) == 1 and len(user_rows) == 1
    assert keys_rows[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    for row in [*keys_rows, *user_rows]:
        for value in row.values():
            assert key not in str(value)
            assert secret_part[10:] not in str(value)  # at most the 8-char display prefix is kept


async def test_revoke(keys: KeyService) -> None:
    info, key = await keys.create_key("user-1")
    other_info, other_key = await keys.create_key("user-1")
    assert await keys.revoke(info.id) is True
    assert await keys.authenticate(key) is None
    assert await keys.authenticate(other_key) is not None, "revoking one key must not touch another"
    assert await keys.revoke(info.id) is False, "already revoked"
    assert await keys.revoke("key_doesnotexist") is False
    listed = {k.id: k for k in await keys.list_keys("user-1")}
    assert listed[info.id].revoked_at is not None
    assert listed[other_info.id].revoked_at is None


async def test_list_keys(keys: KeyService, clock: FakeClock) -> None:
    a, _ = await keys.create_key("alice", name="a1")
    clock.now += timedelta(seconds=1)
    b, _ = await keys.create_key("bob", name="b1")
    clock.now += timedelta(seconds=1)
    a2, _ = await keys.create_key("alice", name="a2")
    assert [k.id for k in await keys.list_keys()] == [a.id, b.id, a2.id]
    assert [k.id for k in await keys.list_keys("alice")] == [a.id, a2.id]
    assert [k.external_id for k in await keys.list_keys("bob")] == ["bob"]
    assert await keys.list_keys("nobody") == []
    listed = (await keys.list_keys("bob"))[0]
    assert listed == b
    assert listed.created_at.tzinfo is not None


async def test_last_used_is_written_at_most_once_a_minute(keys: KeyService, clock: FakeClock) -> None:
    info, key = await keys.create_key("user-1")
    start = clock.now

    async def last_used() -> datetime | None:
        return (await keys.list_keys("user-1"))[0].last_used_at

    assert await keys.authenticate(key) is not None
    assert await last_used() == start
    clock.now = start + timedelta(seconds=59)
    assert await keys.authenticate(key) is not None
    assert await last_used() == start, "a second use within a minute must not write"
    clock.now = start + timedelta(seconds=61)
    assert await keys.authenticate(key) is not None
    assert await last_used() == start + timedelta(seconds=61)


async def test_ensure_user_is_idempotent_and_race_free(keys: KeyService, db_engine: AsyncEngine) -> None:
    ids = await asyncio.gather(*(keys.ensure_user("racer") for _ in range(8)))
    assert len(set(ids)) == 1
    assert await keys.ensure_user("racer", email="r@example.com") == ids[0]
    assert await keys.ensure_user("racer") == ids[0]
    async with db_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, email FROM users WHERE external_id = 'racer'"))).all()
    assert [tuple(r) for r in rows] == [(ids[0], "r@example.com")], "email kept when not given again"


async def test_identity_carries_the_users_plan(
    keys: KeyService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    _, key = await keys.create_key("user-1")
    plans = PlanRepository(sessions)
    await plans.set_plan("pro", [Limit("requests", 60, 1000)])
    await plans.set_user_plan("user-1", "pro")
    identity = await keys.authenticate(key)
    assert identity is not None and identity.plan == "pro"
    assert Identity.from_json(identity.to_json()) == identity


async def test_unreachable_database_is_governance_unavailable() -> None:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        service = KeyService(session_factory(engine))
        with pytest.raises(GovernanceUnavailable):
            await service.authenticate(generate_key())
        with pytest.raises(GovernanceUnavailable):
            await service.create_key("user-1")
    finally:
        await engine.dispose()


async def test_usage_reported_by_email_needs_an_email_before_a_key_is_issued(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    zion_keys = KeyService(sessions, clock=clock, require_email=True)
    with pytest.raises(InvalidRequest, match="no email") as caught:
        await zion_keys.create_key("no-mail")
    assert caught.value.code == "usage_unreportable"
    assert await zion_keys.list_keys() == []  # nothing written
    _, key = await zion_keys.create_key("with-mail", email="w@example.com")
    assert (await zion_keys.authenticate(key) or Identity("", "")).email == "w@example.com"
    _, again = await zion_keys.create_key("with-mail")  # the stored email is enough
    assert (await zion_keys.authenticate(again) or Identity("", "")).email == "w@example.com"
    _, lenient = await KeyService(sessions, clock=clock).create_key("no-mail")  # GOVERNANCE=builtin
    assert (await zion_keys.authenticate(lenient) or Identity("", "x")).email is None


def test_the_cli_refuses_a_key_without_email_under_zion(tmp_path: Path) -> None:
    env = {
        **os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db", "GOVERNANCE": "zion",
        "ZION_API_URL": "http://127.0.0.1:9", "ZION_API_KEY": "zion-key",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sentinel", "keys", "create", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    refused = run("carol")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("sentinel: ") and "--email" in refused.stderr
    assert "Traceback" not in refused.stderr
    created = run("carol", "--email", "carol@example.com")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("sk-sentinel-")


async def test_a_key_with_an_expiry_works_until_then_and_is_refused_as_expired_from_then(
    keys: KeyService, clock: FakeClock, db_engine: AsyncEngine
) -> None:
    """Keys never expired: a key lived until revoked. One issued with `expires_at` authenticates
    before that moment (its identity carrying it, for the caches) and from it is refused with
    `token_expired`, its use not recorded; the column holds the moment on both backends."""
    ends = clock.now + timedelta(hours=1)
    info, key = await keys.create_key("user-1", expires_at=ends)
    forever, other = await keys.create_key("user-1")
    assert info.expires_at == ends and forever.expires_at is None
    identity = await keys.authenticate(key)
    assert identity is not None and identity.expires_at == ends.timestamp()
    assert Identity.from_json(identity.to_json()) == identity  # as the identity cache stores it
    clock.now = ends - timedelta(microseconds=1)
    assert await keys.authenticate(key) is not None
    clock.now = ends
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(key)
    assert caught.value.code == "token_expired" and caught.value.status == 401
    clock.now = ends + timedelta(days=400)
    with pytest.raises(AuthenticationError):
        await keys.authenticate(key)
    still = await keys.authenticate(other)
    assert still is not None and still.expires_at is None  # a key without expiry never expires
    listed = {k.id: k for k in await keys.list_keys("user-1")}
    # Its last use is the one before it expired: a refused use is not recorded.
    assert listed[info.id].expires_at == ends and listed[info.id].last_used_at == ends - timedelta(microseconds=1)
    assert listed[info.id].status(clock.now) == "expired" and listed[forever.id].status(clock.now) == "active"
    assert listed[info.id].status(ends - timedelta(seconds=1)) == "active"
    assert await keys.get_key(info.id) == listed[info.id]
    async with db_engine.connect() as conn:
        stored = (await conn.execute(text("SELECT expires_at FROM api_keys WHERE id = :id"), {"id": info.id})).scalar()
    assert stored is not None


async def test_a_revoked_key_with_an_expiry_is_revoked_not_expired(keys: KeyService, clock: FakeClock) -> None:
    info, key = await keys.create_key("user-1", expires_at=clock.now + timedelta(minutes=5))
    assert await keys.revoke(info.id)
    clock.now += timedelta(minutes=10)
    assert await keys.authenticate(key) is None  # an unknown key's answer: revoked is for good
    assert (await keys.list_keys("user-1"))[0].status(clock.now) == "revoked"


async def test_the_identity_cache_does_not_serve_a_key_past_its_expiry(
    keys: KeyService, clock: FakeClock
) -> None:
    """The identity cached at a key's use was fresh for the TTL (300 s) whatever the key's expiry:
    a key expiring a minute later kept working four more minutes, and during an outage of the
    database for the grace period too. The cached identity now ends at the key's expiry."""
    from sentinel.governance.auth import Authenticator
    from sentinel.store import MemoryStore

    def seconds() -> float:
        return clock.now.timestamp()

    auth = Authenticator(MemoryStore(clock=seconds), api_keys=keys, ttl=300, grace=900, clock=seconds)
    _, key = await keys.create_key("user-1", expires_at=clock.now + timedelta(seconds=60))
    assert (await auth.authenticate(key)).external_id == "user-1"
    clock.now += timedelta(seconds=59)
    assert (await auth.authenticate(key)).external_id == "user-1"  # from the cache
    clock.now += timedelta(seconds=1)
    for _ in range(2):  # each use says why (the refusal is not cached as an unknown key's)
        with pytest.raises(AuthenticationError) as caught:
            await auth.authenticate(key)
        assert caught.value.code == "token_expired"
