"""Authenticator: cache by token hash, negative cache, stale-while-down, the per-process copy."""

from __future__ import annotations

import pytest

from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError, GovernanceUnavailable
from sentinel.governance.auth import Authenticator, parse_bearer
from tests.support.clock import FakeClock
from tests.support.stores import FlakyStore


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def make(clock: FakeClock, **kw: object) -> tuple[Authenticator, Source, FlakyStore]:
    source, store = Source(), FlakyStore(clock)
    auth = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=clock, **kw)  # type: ignore[arg-type]
    return auth, source, store


async def test_cached_then_revoked_within_ttl(clock: FakeClock) -> None:
    auth, source, _ = make(clock)
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    del source.valid["sk-sentinel-good"]  # revoked at the source
    clock.advance(9)
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"  # still cached
    clock.advance(2)
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")
    assert source.calls == 2


async def test_invalid_tokens_are_negatively_cached(clock: FakeClock) -> None:
    auth, source, _ = make(clock)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("sk-sentinel-bad")
    assert source.calls == 1


async def test_stale_identity_served_while_source_down(clock: FakeClock) -> None:
    auth, source, _ = make(clock)
    await auth.authenticate("sk-sentinel-good")
    source.down = True
    clock.advance(15)  # past the TTL, within the grace
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    with pytest.raises(GovernanceUnavailable):  # nothing cached for this one: 503, not 401
        await auth.authenticate("sk-sentinel-other")


async def test_local_copy_spares_the_store_but_not_past_freshness(clock: FakeClock) -> None:
    auth, source, store = make(clock, local_ttl=1.0)
    await auth.authenticate("sk-sentinel-good")  # miss: source
    await auth.authenticate("sk-sentinel-good")  # store hit, copied locally
    gets = store.calls["get"]
    await auth.authenticate("sk-sentinel-good")
    assert store.calls["get"] == gets  # served from the local copy
    clock.advance(1.5)
    await auth.authenticate("sk-sentinel-good")
    assert store.calls["get"] == gets + 1  # the local copy expired after local_ttl
    del source.valid["sk-sentinel-good"]
    clock.advance(9)  # the store entry is no longer fresh: neither is any local copy
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_bad_authorization_headers(header: str | None) -> None:
    with pytest.raises(AuthenticationError):
        parse_bearer(header)
