"""Authenticator: cache by token hash, negative cache, stale-while-down, the per-process copy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import jwt as pyjwt
import pytest

from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError, GovernanceUnavailable, PermissionDenied, SentinelError
from sentinel.governance.auth import Authenticator, parse_bearer
from sentinel.governance.identity import Expired
from sentinel.governance.jwt import LEEWAY_SECONDS, unverified_expiry
from sentinel.observability.metrics import Metrics
from sentinel.store import MemoryStore
from tests.support.clock import FakeClock
from tests.support.fake_zion import ZionProfiles
from tests.support.metrics import counted
from tests.support.stores import FlakyStore
from tests.support.waiting import until


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


async def test_an_expired_keys_refusal_is_cached_and_still_says_token_expired(clock: FakeClock) -> None:
    """Each use of an expired key was a database lookup (its refusal was not cached): a cheap load on
    the database for anyone holding one. An expiry is for good: the refusal is remembered as long as
    an identity (`ttl`), under every process's cache, and each use still gets `token_expired`."""

    class ExpiringSource(Source):
        async def authenticate(self, token: str) -> Identity | None:
            self.calls += 1
            raise Expired()

    source, store = ExpiringSource(), MemoryStore(clock=clock)
    auth = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=clock)
    other = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=clock)  # another process
    for _ in range(3):
        for each in (auth, other):
            with pytest.raises(AuthenticationError) as refused:
                await each.authenticate("sk-sentinel-expired")
            assert (refused.value.code, refused.value.status) == ("token_expired", 401)
            assert "expired" in refused.value.message
    assert source.calls == 1
    clock.advance(10)  # bounded like any entry: after the TTL the source is asked once more
    with pytest.raises(Expired):
        await auth.authenticate("sk-sentinel-expired")
    assert source.calls == 2


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


# --- identities that expire (JWTs) and identities whose usage cannot be reported ------------------


class JwtSource:
    """A JWT source vouching for any token it was given, with `expires_at` from the token's `exp`."""

    name = "jwt"

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def authenticate(self, token: str) -> Identity | None:
        self.calls += 1
        if self.down:
            raise GovernanceUnavailable("down")
        return Identity("jwt-user", "u9", "j@example.com", source="jwt", expires_at=unverified_expiry(token))


def jwt_token(exp: float) -> str:
    return pyjwt.encode({"sub": "u9", "exp": int(exp)}, "signing-key-the-test-never-checks-0123", algorithm="HS256")


def make_jwt(clock: FakeClock, **kw: object) -> tuple[Authenticator, JwtSource]:
    source = JwtSource()
    store = MemoryStore(clock=clock)
    auth = Authenticator(store, api_keys=None, jwt=source, ttl=300, grace=900, clock=clock, **kw)  # type: ignore[arg-type]
    return auth, source


async def test_a_cached_jwt_identity_ends_at_exp_plus_leeway_not_at_the_ttl(clock: FakeClock) -> None:
    auth, source = make_jwt(clock)
    token = jwt_token(clock.now + 60)  # usable until now + 60 + LEEWAY_SECONDS
    assert (await auth.authenticate(token)).external_id == "jwt-user"
    clock.now += 60 + LEEWAY_SECONDS - 1
    assert (await auth.authenticate(token)).external_id == "jwt-user"
    assert source.calls == 1  # served from the cache until then
    clock.now += 1
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(token)  # the TTL (300 s) has not passed, the token has
    assert caught.value.code == "token_expired"
    assert source.calls == 1  # refused without asking the source


async def test_an_expired_jwt_is_refused_in_the_grace_period_too(clock: FakeClock) -> None:
    auth, source = make_jwt(clock)
    token = jwt_token(clock.now + 400)  # outlives the TTL (300 s), not TTL + grace
    await auth.authenticate(token)
    source.down = True
    clock.now += 350  # stale, in the grace period, token still valid: the stale identity is served
    assert (await auth.authenticate(token)).external_id == "jwt-user"
    clock.now += 400 + LEEWAY_SECONDS - 350  # the token has expired; the source is still down
    with pytest.raises(AuthenticationError):
        await auth.authenticate(token)


async def test_an_identity_the_source_returns_already_expired_is_refused(clock: FakeClock) -> None:
    class Expired(JwtSource):
        async def authenticate(self, token: str) -> Identity | None:
            self.calls += 1
            return Identity("jwt-user", "u9", "j@example.com", source="jwt", expires_at=clock.now - 1)

    source = Expired()
    auth = Authenticator(MemoryStore(clock=clock), api_keys=None, jwt=source, clock=clock)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("opaque-token")
    assert source.calls == 1  # remembered as invalid


async def test_identities_without_email_are_refused_when_usage_is_reported_by_email(clock: FakeClock) -> None:
    source = Source()
    source.valid["sk-sentinel-nomail"] = Identity("bob", "u2", None)
    source.valid["sk-sentinel-good"] = Identity("alice", "u1", "alice@example.com")
    store = MemoryStore(clock=clock)
    auth = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=clock, require_email=True)
    assert (await auth.authenticate("sk-sentinel-good")).email == "alice@example.com"
    for step in (0, 5, 15):  # fresh from the source, fresh from the cache, stale while the source is down
        clock.now += step
        source.down = step == 15
        with pytest.raises(PermissionDenied) as caught:
            await auth.authenticate("sk-sentinel-nomail")
        assert caught.value.code == "usage_unreportable" and caught.value.status == 403
        assert "email" in caught.value.message
    assert source.calls == 3
    lenient = Authenticator(MemoryStore(), api_keys=source, require_email=False)
    source.down = False
    assert (await lenient.authenticate("sk-sentinel-nomail")).external_id == "bob"


async def test_a_key_revoked_while_its_lookup_is_in_flight_stays_revoked(clock: FakeClock) -> None:
    """A lookup that read the key as active just before its revocation used to cache it just after
    (the revocation only deleted the cached entry): the key then worked for the cache's TTL. The
    revocation is a tombstone, and a value never replaces a refusal."""
    import asyncio

    from sentinel.governance.keys import hash_key

    class SlowSource(Source):
        def __init__(self) -> None:
            super().__init__()
            self.read = asyncio.Event()
            self.release = asyncio.Event()

        async def authenticate(self, token: str) -> Identity | None:
            found = await super().authenticate(token)  # read as active
            self.read.set()
            await self.release.wait()
            return found

    source, store = SlowSource(), FlakyStore(clock)
    auth = Authenticator(store, api_keys=source, ttl=10, grace=20, clock=clock)  # type: ignore[arg-type]
    in_flight = asyncio.ensure_future(auth.authenticate("sk-sentinel-good"))
    await source.read.wait()
    del source.valid["sk-sentinel-good"]
    await auth.revoke(hash_key("sk-sentinel-good"))  # what the admin service does on revocation
    source.release.set()
    assert (await in_flight).external_id == "alice"  # that request was admitted before the revocation
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")
    clock.advance(25)  # past the TTL, within the grace: still refused, never the stale identity
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-good")


async def test_an_operator_key_is_refused_before_any_source_sees_it(clock: FakeClock) -> None:
    """The admin (or docs) key sent as a bearer by mistake went to the identity source — in Zion
    mode, to Zion's /users/me. It is refused here, and never cached as anyone's identity."""
    from sentinel.governance.keys import hash_key

    admin, provider = "operator-admin-key-0123456789", "sk-sentinel-shaped-configured-secret"  # the source would be asked
    auth, source, _ = make(clock, withheld=[hash_key(provider)], operator_keys=[hash_key(admin)])
    source.valid[admin] = source.valid[provider] = Identity("mallory", "u9")  # whatever a source would have said
    with pytest.raises(AuthenticationError, match="operator key"):
        await auth.authenticate(admin)
    # Another secret of the configuration: refused as any wrong token is, with nothing to tell it apart.
    with pytest.raises(AuthenticationError) as refused:
        await auth.authenticate(provider)
    assert (refused.value.code, refused.value.message) == (AuthenticationError().code, AuthenticationError().message)
    assert source.calls == 0
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"


async def test_only_a_token_not_known_good_meets_the_unknown_hook(clock: FakeClock) -> None:
    """`unknown` (the throttle's check) runs before anything is done for a token whose identity is
    not cached — uncached, remembered as invalid, an operator key — and may refuse it before any
    source is asked; a cached identity, fresh or stale, is served without it."""
    from sentinel.errors import RateLimited
    from sentinel.governance.keys import hash_key

    auth, source, _ = make(clock, withheld=[hash_key("operator-admin-key-0123456789")])
    met: list[str] = []

    async def refuse(token: str) -> None:
        met.append(token)
        raise RateLimited("throttled", code="auth_rate_limited")

    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    with pytest.raises(AuthenticationError):
        await auth.authenticate("sk-sentinel-bad")  # remembered as invalid
    calls = source.calls
    assert (await auth.authenticate("sk-sentinel-good", unknown=lambda: refuse("good"))).external_id == "alice"
    clock.advance(15)  # past the TTL, within the grace: refreshed, not refused
    assert (await auth.authenticate("sk-sentinel-good", unknown=lambda: refuse("stale"))).external_id == "alice"
    assert source.calls == calls + 1
    for token in ("sk-sentinel-bad", "sk-sentinel-never-seen", "operator-admin-key-0123456789"):
        with pytest.raises(RateLimited):
            await auth.authenticate(token, unknown=functools.partial(refuse, token))
    assert met == ["sk-sentinel-bad", "sk-sentinel-never-seen", "operator-admin-key-0123456789"]
    assert source.calls == calls + 1


async def test_an_identity_that_cannot_be_stored_is_refused_not_a_500(clock: FakeClock) -> None:
    """A JWT's claims may hold a lone surrogate (JSON allows the escape): caching such an identity
    raised inside the encoder — a 500 — and on Redis it would have failed the other commands of its
    pipeline. It is refused (403) and never cached; the refusal is, for the negative TTL (each use
    asked the source again), then the source is asked again."""
    auth, source, store = make(clock)
    source.valid["sk-sentinel-odd"] = Identity("alice\ud800", "u1")
    for _ in range(2):
        with pytest.raises(PermissionDenied, match="not valid Unicode"):
            await auth.authenticate("sk-sentinel-odd")
    assert source.calls == 1  # the refusal was remembered, never the identity
    clock.advance(auth.negative_ttl + 1)
    with pytest.raises(PermissionDenied):
        await auth.authenticate("sk-sentinel-odd")
    assert source.calls == 2
    assert Identity("a", "u\udfff").unstorable() is not None
    assert Identity("alice", "u1", email="a@example.com").unstorable() is None


async def test_a_stale_identity_is_refreshed_without_waiting_for_a_lookup_turn(clock: FakeClock) -> None:
    """Lookups that go to the source take a turn of the failed-authentication throttle; a token
    already known good (cached, past its TTL) waited behind unknown ones from its address — and got
    429 instead of its identity once they had failed."""
    import asyncio
    import contextlib

    auth, source, _ = make(clock)
    await auth.authenticate("sk-sentinel-good")
    clock.advance(15)  # past the TTL: the next use refreshes it from the source
    turns: list[str] = []

    @contextlib.asynccontextmanager
    async def never_your_turn() -> AsyncIterator[None]:  # every turn taken by unknown tokens
        turns.append("waited")
        await asyncio.Event().wait()
        yield

    identity = await asyncio.wait_for(auth.authenticate("sk-sentinel-good", lookup=never_your_turn), 5)
    assert identity.external_id == "alice" and turns == [] and source.calls == 2
    with pytest.raises(TimeoutError):  # an unknown token does wait its turn
        await asyncio.wait_for(auth.authenticate("sk-sentinel-unknown", lookup=never_your_turn), 0.1)
    assert turns == ["waited"]


async def test_a_stale_identity_is_refreshed_once_however_many_requests_carry_it(clock: FakeClock) -> None:
    """Stale identities skip the throttle's lookup turns: without one refresh per token at a time,
    100 concurrent requests with one stale key made 100 source lookups (each waiting out an outage)."""
    import asyncio

    auth, source, _ = make(clock)
    await auth.authenticate("sk-sentinel-good")
    clock.advance(15)  # past the TTL
    release = asyncio.Event()
    real = source.authenticate

    async def slow(token: str) -> Identity | None:
        await release.wait()
        return await real(token)

    source.authenticate = slow  # type: ignore[method-assign]
    pending = [asyncio.create_task(auth.authenticate("sk-sentinel-good")) for _ in range(100)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    identities = await asyncio.gather(*pending)
    assert {i.external_id for i in identities} == {"alice"}
    assert source.calls == 2  # the first authentication, then one refresh


# --- a locally verified JWT served from its claims while Zion is down (a stand-in) -----------------


JWT_SECRET = "stand-in-test-secret-0123456789-0123456789"


def claims_token(exp: float, **claims: object) -> str:
    return pyjwt.encode({"sub": "auth0|dora", "exp": int(exp), **claims}, JWT_SECRET, algorithm="HS256")


def make_zion_jwt(clock: FakeClock) -> tuple[Authenticator, ZionProfiles]:
    from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource

    profiles = ZionProfiles()
    source = LocalJwtIdentitySource(JwtVerifier(JWT_SECRET, None, None, None), profile_source=profiles)
    auth = Authenticator(MemoryStore(clock=clock), api_keys=None, jwt=source, ttl=300, grace=900, clock=clock,
                         require_email=True)
    return auth, profiles


async def test_a_stand_in_is_not_cached_as_an_identity_zion_confirmed() -> None:
    """While Zion was unreachable a token carrying `externalId` and `email` was served from its
    claims — and that stand-in was cached like an identity Zion had confirmed: fresh for the TTL
    (300 s), so once Zion was back a user it now refuses (deactivated) was served from the claims,
    with no Zion call, until the TTL ended. The stand-in is kept for the outage only: each use asks
    Zion, and the first one Zion answers again is refused."""
    import time

    clock = FakeClock(time.time())  # the token's `exp` is verified against the real time
    auth, profiles = make_zion_jwt(clock)
    token = claims_token(clock.now + 3600, externalId="dora-ext", email="dora@example.com")
    profiles.down = True
    served = await auth.authenticate(token)
    assert (served.external_id, served.email, served.source) == ("dora-ext", "dora@example.com", "jwt")
    assert profiles.calls == 1
    clock.advance(5)
    assert (await auth.authenticate(token)).external_id == "dora-ext"  # still down: the stand-in again
    assert profiles.calls == 2  # asked again (at once while the breaker is open: see test_zion_breaker)
    profiles.down = False  # Zion is back, and has deactivated the user (403: no identity)
    clock.advance(5)  # well within the TTL the stand-in was once cached fresh for
    with pytest.raises(AuthenticationError):
        await auth.authenticate(token)
    assert profiles.calls == 3
    with pytest.raises(AuthenticationError):  # remembered as refused, as any refusal
        await auth.authenticate(token)
    assert profiles.calls == 3


async def test_zions_answer_after_an_outage_replaces_the_stand_in_and_is_cached_fresh() -> None:
    import time

    clock = FakeClock(time.time())
    auth, profiles = make_zion_jwt(clock)
    token = claims_token(clock.now + 3600, externalId="dora-ext", email="dora@example.com")
    profiles.down = True
    assert (await auth.authenticate(token)).source == "jwt"  # the claims' stand-in
    profiles.down = False
    profiles.answer = Identity("dora-ext", "usr-dora", "dora@zion.example", source="zion")
    clock.advance(1)
    assert (await auth.authenticate(token)).email == "dora@zion.example"  # Zion asked, and answered
    profiles.down = True
    clock.advance(200)  # within the TTL: Zion's answer is served without asking
    assert (await auth.authenticate(token)).email == "dora@zion.example"
    clock.advance(200)  # past it, Zion down: Zion's identity (stale), not the claims', in the grace
    assert (await auth.authenticate(token)).email == "dora@zion.example"
    assert profiles.calls == 3



async def test_a_refusal_holds_for_every_encoding_of_the_refused_token() -> None:
    """Zion's refusal was remembered under the SHA-256 of the token as sent; the same token with its
    signature padded (`=`: PyJWT verifies it) was another token, and in an outage it was served from
    its claims. It is remembered by what the signature covers, which each encoding shares."""
    import time

    from cryptography.hazmat.primitives.asymmetric import ec

    clock = FakeClock(time.time())
    auth, profiles = make_zion_jwt(clock)
    token = claims_token(clock.now + 3600, externalId="dora-ext", email="dora@example.com")
    padded = token + "="  # a 43-character HS256 signature: one `=` pads it
    assert pyjwt.decode(padded, JWT_SECRET, algorithms=["HS256"])["sub"] == "auth0|dora"
    with pytest.raises(AuthenticationError):  # Zion refuses her (deactivated): remembered
        await auth.authenticate(token)
    profiles.down = True
    clock.advance(31)  # the refusal's 30 s in the identity cache are over
    for encoding in (token, padded):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(encoding)
    assert profiles.calls == 2  # the token asked Zion (down) and got no stand-in; the padded one is not canonical: not asked
    # An ES256 token's two signatures (r, s) and (r, n-s) both verify: one key for both.
    from sentinel.governance.auth import refusal_key

    private = ec.generate_private_key(ec.SECP256R1())
    es = pyjwt.encode({"sub": "x", "exp": int(clock.now) + 600}, private, algorithm="ES256")
    head, body, signature = es.split(".")
    raw = pyjwt.utils.base64url_decode(signature)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's
    twin = f"{head}.{body}." + pyjwt.utils.base64url_encode(
        raw[:32] + (order - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")).decode()
    assert twin != es and pyjwt.decode(twin, private.public_key(), algorithms=["ES256"])["sub"] == "x"
    assert refusal_key(twin) == refusal_key(es) == refusal_key(es + "==")
    assert len({refusal_key(es), refusal_key(token), refusal_key("opaque"), refusal_key("other")}) == 4


# --- one source lookup per token at a time (single flight) -------------------------------------------


class HeldSource(Source):
    """`Source` whose lookups, counted as they begin, wait for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def authenticate(self, token: str) -> Identity | None:
        self.calls += 1
        await self.release.wait()
        if self.down:
            raise GovernanceUnavailable("down")
        return self.valid.get(token)


class Turns:
    """A `lookup` context that counts the turns entered and given back (the throttle's, in `Deps`)."""

    def __init__(self) -> None:
        self.entered = 0
        self.left = 0

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        self.entered += 1
        try:
            yield
        finally:
            self.left += 1


def make_held(clock: FakeClock, **kw: object) -> tuple[Authenticator, HeldSource, Metrics]:
    source, metrics = HeldSource(), Metrics()
    auth = Authenticator(MemoryStore(clock=clock), api_keys=source, ttl=10, grace=20, clock=clock, metrics=metrics,
                         **kw)  # type: ignore[arg-type]
    return auth, source, metrics


def misses(metrics: Metrics) -> float:
    """Identity cache misses: a caller counted here goes on to its lookup, or joins one, in the same loop turn."""
    return counted(metrics, "sentinel_cache_lookups_total", cache="identity", result="miss")


async def test_concurrent_requests_with_one_uncached_token_share_one_source_lookup(clock: FakeClock) -> None:
    """At every cache expiry (or on a cold cache) N concurrent requests with one token each asked
    the source — N Zion calls, N database queries, N of the client's lookup turns. They share one."""
    auth, source, metrics = make_held(clock)
    turns = Turns()
    pending = [asyncio.create_task(auth.authenticate("sk-sentinel-good", lookup=turns)) for _ in range(20)]
    await until(lambda: misses(metrics) == 20 and source.calls == 1)
    source.release.set()
    identities = await asyncio.gather(*pending)
    assert {i.external_id for i in identities} == {"alice"}
    assert source.calls == 1
    assert (turns.entered, turns.left) == (1, 1)  # the followers asked nothing: they took no turn
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"  # cached, as before
    assert source.calls == 1


async def test_a_cancelled_first_caller_leaves_its_lookup_to_the_others(clock: FakeClock) -> None:
    """The first caller runs the lookup as a task of its own: its cancellation (shutdown, a timeout)
    gives its lookup turn back but neither stops the lookup nor fails the requests waiting on it."""
    auth, source, metrics = make_held(clock)
    turns = Turns()
    first = asyncio.create_task(auth.authenticate("sk-sentinel-good", lookup=turns))
    await until(lambda: source.calls == 1)
    others = [asyncio.create_task(auth.authenticate("sk-sentinel-good")) for _ in range(3)]
    await until(lambda: misses(metrics) == 4)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (turns.entered, turns.left) == (1, 1)
    source.release.set()
    assert [i.external_id for i in await asyncio.gather(*others)] == ["alice"] * 3
    assert source.calls == 1
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"  # its answer was cached
    assert source.calls == 1


@pytest.mark.parametrize(
    ("token", "down", "error", "status"),
    [
        ("sk-sentinel-unknown", False, AuthenticationError, 401),
        ("sk-sentinel-nomail", False, PermissionDenied, 403),
        ("sk-sentinel-good", True, GovernanceUnavailable, 503),
    ],
)
async def test_a_shared_lookups_error_reaches_every_caller(
    clock: FakeClock, token: str, down: bool, error: type[Exception], status: int
) -> None:
    auth, source, metrics = make_held(clock, require_email=True)
    source.valid["sk-sentinel-good"] = Identity("alice", "u1", "alice@example.com")
    source.valid["sk-sentinel-nomail"] = Identity("bob", "u2", None)
    source.down = down
    pending = [asyncio.create_task(auth.authenticate(token)) for _ in range(5)]
    await until(lambda: misses(metrics) == 5)
    source.release.set()
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert [type(o) for o in outcomes] == [error] * 5, outcomes
    assert {o.status for o in outcomes if isinstance(o, SentinelError)} == {status}
    assert source.calls == 1


async def test_once_a_shared_lookup_ended_the_next_miss_asks_the_source_again(clock: FakeClock) -> None:
    """The lookup is shared while it runs only: its outcome is kept no longer than the cache keeps
    it — an outage (not cached) is asked about again at the next request, an identity past its TTL
    is refreshed from the source."""
    auth, source, _ = make_held(clock)
    source.release.set()
    source.down = True
    with pytest.raises(GovernanceUnavailable):
        await auth.authenticate("sk-sentinel-good")
    source.down = False
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    assert source.calls == 2
    clock.advance(11)  # past the TTL
    assert (await auth.authenticate("sk-sentinel-good")).external_id == "alice"
    assert source.calls == 3


async def test_a_cached_jwt_identity_is_verified_once_by_each_process_before_it_serves_it() -> None:
    """Two processes on one store: the one that did not verify a token itself verifies it once
    (locally, no lookup) before serving the identity the other cached, and then never again; a
    token its secret does not verify (the other's secret, before a rotation) is refused by it, at each
    use, and still served by the other (a process whose JWKS is older than the other's must not
    refuse a new key's tokens for everyone). While its key set cannot be had the cached identity is
    served, as before."""
    import time

    from sentinel.governance.jwt import JwtVerifier, LocalJwtIdentitySource

    clock = FakeClock(time.time())  # the token's `exp` is verified against the real time
    store = MemoryStore(clock=clock)

    class Counting(JwtVerifier):
        calls = 0
        down = False

        async def verify(self, token: str) -> dict[str, object] | None:
            Counting.calls += 1
            if Counting.down:
                raise GovernanceUnavailable("no key set")
            return await super().verify(token)

    def process(secret: str) -> Authenticator:
        source = LocalJwtIdentitySource(Counting(secret, None, None, None))
        return Authenticator(store, api_keys=None, jwt=source, ttl=300, grace=900, clock=clock)

    old, new = process(JWT_SECRET), process("a-rotated-secret-0123456789-0123456789")
    token = claims_token(clock.now + 3600, externalId="dora-ext")
    assert (await old.authenticate(token)).external_id == "dora-ext"
    assert (await old.authenticate(token)).external_id == "dora-ext"
    assert Counting.calls == 1  # its lookup's verification, remembered
    again = process(JWT_SECRET)
    Counting.down = True
    assert (await again.authenticate(token)).external_id == "dora-ext"  # the key set cannot be had
    Counting.down = False
    for _ in range(2):
        assert (await again.authenticate(token)).external_id == "dora-ext"
    assert Counting.calls == 3  # once while down, once since: not at each use
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await new.authenticate(token)
    assert Counting.calls == 5
    assert (await old.authenticate(token)).external_id == "dora-ext"
    assert Counting.calls == 5
