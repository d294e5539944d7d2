"""Authenticator: cache by token hash, negative cache, stale-while-down, the per-process copy."""

from __future__ import annotations

import pytest

from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError, GovernanceUnavailable
from sentinel.governance.auth import Authenticator, parse_bearer
from sentinel.store import MemoryStore


class Source:
    name = "api_key"

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.valid = {"sk-sentinel-good": Identity("alice", "u1")}

    async def authenticate(self, token: str) -> Identity | None:
        self.calls += 1
        if self.down:
            raise GovernanceUnavailable("down")
        return self.valid.get(token)


class CountingStore(MemoryStore):
    def __init__(self, clock: object) -> None:
        super().__init__(clock=clock)  # type: ignore[arg-type]
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await super().get(key)


@pytest.fixture
def now() -> list[float]:
    return [1000.0]


def make(now: list[float], **kw: object) -> tuple[Authenticator, Source, CountingStore]:
    source, store = Source(), CountingStore(lambda: now[0])
    auth = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=lambda: now[0], **kw)  # type: ignore[arg-type]
    return auth, source, store


async def test_cached_then_revoked_within_ttl(now: list[float]) -> None:
    auth, source, _ = make(now)
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    del source.valid["sk-sentinel-good"]  # revoked at the source
    now[0] += 9
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"  # still cached
    now[0] += 2
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")
    assert source.calls == 2


async def test_invalid_tokens_are_negatively_cached(now: list[float]) -> None:
    auth, source, _ = make(now)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("sk-sentinel-bad")
    assert source.calls == 1


async def test_stale_identity_served_while_source_down(now: list[float]) -> None:
    auth, source, _ = make(now)
    await auth.authenticate("sk-sentinel-good")
    source.down = True
    now[0] += 15  # past the TTL, within the grace
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    with pytest.raises(GovernanceUnavailable):  # nothing cached for this one: 503, not 401
        await auth.authenticate("sk-sentinel-other")


async def test_local_copy_spares_the_store_but_not_past_freshness(now: list[float]) -> None:
    auth, source, store = make(now, local_ttl=1.0)
    await auth.authenticate("sk-sentinel-good")  # miss: source
    await auth.authenticate("sk-sentinel-good")  # store hit, copied locally
    gets = store.gets
    await auth.authenticate("sk-sentinel-good")
    assert store.gets == gets  # served from the local copy
    now[0] += 1.5
    await auth.authenticate("sk-sentinel-good")
    assert store.gets == gets + 1  # the local copy expired after local_ttl
    del source.valid["sk-sentinel-good"]
    now[0] += 9  # the store entry is no longer fresh: neither is any local copy
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_bad_authorization_headers(header: str | None) -> None:
    with pytest.raises(AuthenticationError):
        parse_bearer(header)
