"""ZionClient's circuit breaker against the fake Zion over real HTTP: only outages open it; once
open, calls fail at once without reaching Zion; one probe per cooldown closes it again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import jwt
import pytest

from sentinel.backoff import Backoff
from sentinel.breaker import CircuitBreaker
from sentinel.errors import AuthenticationError, GovernanceUnavailable
from sentinel.governance.jwt import LEEWAY_SECONDS
from sentinel.governance.zion import ZionClient, ZionIdentitySource
from tests.support.fake_zion import FakeZion
from tests.support.servers import serving

FAST = Backoff(attempts=3, base=0.01, cap=0.05)


@pytest.fixture
def fake() -> Iterator[FakeZion]:
    zion = FakeZion()
    zion.add_user("tok-alice", "ext-alice", "alice@example.com")
    with serving(zion) as server:
        zion.url = server.url
        yield zion
        zion.set_down(False)


@pytest.fixture
def now() -> list[float]:
    return [1000.0]


@pytest.fixture
async def client(fake: FakeZion, now: list[float]) -> AsyncIterator[ZionClient]:
    breaker = CircuitBreaker(threshold=3, cooldown=5.0, clock=lambda: now[0])
    zion = ZionClient(fake.url, fake.api_key, timeout=1.0, connect_timeout=0.5, backoff=FAST, breaker=breaker)
    yield zion
    await zion.aclose()


async def test_refusals_never_open_the_breaker(client: ZionClient, fake: FakeZion) -> None:
    for _ in range(5):
        assert await client.me("tok-unknown") is None  # 401
        assert await client.limits("ext-nobody") is None  # 404
    assert client.breaker.state == "closed"
    assert fake.received == 10  # every call reached Zion


async def test_429s_open_the_breaker(client: ZionClient, fake: FakeZion) -> None:
    """Zion asking to be called less is not Zion up: calls stop while the circuit is open."""
    fake.fail_next(5, status=429)
    for _ in range(5):
        with pytest.raises(GovernanceUnavailable):
            await client.tier_config()
    assert client.breaker.state == "open"
    assert fake.received == 3  # the threshold; the others failed without a call


@pytest.mark.parametrize("mode", ["503", "drop"])
async def test_once_open_calls_fail_at_once_without_reaching_zion(
    client: ZionClient, fake: FakeZion, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.zion")
    fake.set_down(True, mode)
    with pytest.raises(GovernanceUnavailable):
        await client.me("tok-alice")
    assert fake.received == 3 and client.breaker.state == "open"
    assert "Zion circuit open" in caplog.text
    calls = (lambda: client.me("tok-alice"), lambda: client.limits("ext-alice"), client.tier_config)
    for call in calls * 10:
        with pytest.raises(GovernanceUnavailable, match="circuit open"):
            await call()
    assert fake.received == 3  # 30 calls, not one of them sent
    assert client.breaker.rejected == 30


async def test_concurrent_calls_stop_retrying_once_it_opens(client: ZionClient, fake: FakeZion) -> None:
    fake.set_down(True)
    results = await asyncio.gather(*(client.me("tok-alice") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, GovernanceUnavailable) for r in results)
    assert fake.received < 20 * 3  # without the breaker: every call tries three times


async def test_one_probe_per_cooldown_then_closed_when_zion_is_back(
    client: ZionClient, fake: FakeZion, now: list[float]
) -> None:
    fake.set_down(True)
    with pytest.raises(GovernanceUnavailable):
        await client.limits("ext-alice")
    now[0] += 5  # cooldown over: one probe, which fails and re-opens at its first failure
    with pytest.raises(GovernanceUnavailable):
        await client.limits("ext-alice")
    assert fake.received == 4 and client.breaker.state == "open"
    fake.set_down(False)
    with pytest.raises(GovernanceUnavailable, match="circuit open"):
        await client.limits("ext-alice")  # still within the new cooldown
    now[0] += 5
    assert await client.limits("ext-alice") is not None
    assert client.breaker.state == "closed"
    assert await client.me("tok-alice") is not None


async def test_a_zion_validated_jwt_expires_with_its_exp(fake: FakeZion) -> None:
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "u", "exp": exp}, "zion-signs-this-not-sentinel-0123456789", algorithm="HS256")
    fake.add_user(token, "ext-jwt", "jwt@example.com")
    fake.add_user("opaque-token", "ext-opaque", "opaque@example.com")
    zion = ZionClient(fake.url, fake.api_key, backoff=FAST)
    try:
        source = ZionIdentitySource(zion)
        identity = await source.authenticate(token)
        opaque = await source.authenticate("opaque-token")
    finally:
        await zion.aclose()
    assert identity is not None and identity.expires_at == exp + LEEWAY_SECONDS
    assert opaque is not None and opaque.expires_at is None


async def test_a_stand_in_asks_zion_again_on_each_use_at_most_once_per_cooldown_while_it_is_down(
    fake: FakeZion,
) -> None:
    """A locally verified JWT served from its claims while Zion is down is not cached as fresh (so a
    user Zion refuses once it is back is refused at the next use): each use asks Zion again, which
    the open breaker answers at once — Zion sees one probe per cooldown, however many requests."""
    from sentinel.governance.auth import Authenticator
    from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource
    from sentinel.store import MemoryStore
    from tests.support.clock import FakeClock

    secret = "stand-in-breaker-secret-0123456789-0123456789"
    clock = FakeClock(time.time())  # the token's `exp` is verified against the real time
    token = jwt.encode({"sub": "auth0|eve", "externalId": "ext-eve", "email": "eve@example.com",
                        "exp": int(clock.now) + 3600}, secret, algorithm="HS256")
    fake.add_user(token, "ext-eve", "eve@example.com")
    zion = ZionClient(fake.url, fake.api_key, timeout=1.0, connect_timeout=0.5, backoff=FAST,
                      breaker=CircuitBreaker(threshold=3, cooldown=5.0, clock=clock))
    source = LocalJwtIdentitySource(JwtVerifier(secret, None, None, None), profile_source=ZionIdentitySource(zion))
    auth = Authenticator(MemoryStore(clock=clock), api_keys=None, jwt=source, ttl=300, grace=900, clock=clock)
    try:
        fake.set_down(True)
        assert (await auth.authenticate(token)).source == "jwt"  # the claims' stand-in
        assert fake.received == 3 and zion.breaker.state == "open"  # three attempts opened the breaker
        for _ in range(20):
            clock.advance(0.2)  # 4 s: within the cooldown
            assert (await auth.authenticate(token)).external_id == "ext-eve"
        assert fake.received == 3 and zion.breaker.rejected == 20  # each use asked; none reached Zion
        clock.advance(1)  # the cooldown is over: one probe, still down
        assert (await auth.authenticate(token)).external_id == "ext-eve"
        assert fake.received == 4
        fake.set_down(False)
        fake.refuse_user(token, 403)  # back, and the user deactivated meanwhile
        clock.advance(5)  # the next probe: refused at once, 10 s into the stand-in's old 300 s TTL
        with pytest.raises(AuthenticationError):
            await auth.authenticate(token)
        assert fake.received == 5
    finally:
        await zion.aclose()
