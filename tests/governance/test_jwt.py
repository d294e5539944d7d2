"""Local JWT verification: HMAC secrets, RS256 through a JWKS served over real HTTP, key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sentinel.domain.identity import Identity
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.identity import NotYetValid, Refused, StandIn
from sentinel.governance.jwt import (
    LEEWAY_SECONDS,
    MAX_KEYS_PER_KID,
    JwtVerifier,
    LocalJwtIdentitySource,
    canonical_encoding,
    unverified_expiry,
)
from tests.support.fake_zion import ZionProfiles
from tests.support.servers import free_port, serving

SECRET = "test-secret-" + "0123456789" * 6  # 71 bytes: long enough for HS512 without a warning


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user-1", "email": "u@example.com", "exp": int(time.time()) + 300, **extra}


def hs(payload: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


@pytest.fixture
def verifier() -> JwtVerifier:
    return JwtVerifier(SECRET, None, "sentinel", "https://issuer.example")


def aud(**extra: Any) -> dict[str, Any]:
    return claims(aud="sentinel", iss="https://issuer.example", **extra)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_token_is_valid(verifier: JwtVerifier, alg: str) -> None:
    found = await verifier.verify(hs(aud(), alg=alg))
    assert found is not None and found["sub"] == "user-1"


async def test_alg_none_is_rejected(verifier: JwtVerifier) -> None:
    unsigned = jwt.encode(aud(), None, algorithm="none")  # type: ignore[arg-type]
    assert await verifier.verify(unsigned) is None
    # A forged header claiming HS256 with an empty signature is no better.
    head, body, _ = hs(aud()).split(".")
    assert await verifier.verify(f"{head}.{body}.") is None


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(hs(aud(), key="another-secret-0123456789-0123456789-01234"), id="wrong-secret"),
        pytest.param(hs(claims(aud="other", iss="https://issuer.example")), id="wrong-audience"),
        pytest.param(hs(claims(iss="https://issuer.example")), id="no-audience"),
        pytest.param(hs(claims(aud="sentinel", iss="https://evil.example")), id="wrong-issuer"),
        pytest.param(hs(aud(exp=int(time.time()) - 60)), id="expired"),
        pytest.param(hs({k: v for k, v in aud().items() if k != "exp"}), id="no-exp"),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_tokens_are_rejected(verifier: JwtVerifier, token: str) -> None:
    assert await verifier.verify(token) is None


async def test_leeway_is_30_seconds(verifier: JwtVerifier) -> None:
    assert await verifier.verify(hs(aud(exp=int(time.time()) - 10))) is not None
    assert await verifier.verify(hs(aud(exp=int(time.time()) - 45))) is None


async def test_a_token_not_yet_valid_is_refused_as_such(verifier: JwtVerifier) -> None:
    """Its `nbf` or `iat` ahead beyond the leeway: NotYetValid (a 401 not remembered), not None."""
    for name in ("nbf", "iat"):
        with pytest.raises(NotYetValid):
            await verifier.verify(hs(aud(**{name: int(time.time()) + 86400})))
        assert await verifier.verify(hs(aud(**{name: int(time.time()) + 10}))) is not None  # within the leeway


async def test_without_configured_audience_any_audience_passes() -> None:
    open_verifier = JwtVerifier(SECRET, None, None, None)
    assert await open_verifier.verify(hs(claims(aud="whatever"))) is not None


async def test_identity_from_claims(verifier: JwtVerifier) -> None:
    source = LocalJwtIdentitySource(verifier)
    exp = int(time.time()) + 300
    identity = await source.authenticate(hs(aud(externalId="ext-9", exp=exp)))
    assert identity == Identity("ext-9", "user-1", "u@example.com", source="jwt", expires_at=exp + LEEWAY_SECONDS)
    only_sub = await source.authenticate(hs(aud(email=None)))
    assert only_sub is not None and (only_sub.external_id, only_sub.email) == ("user-1", None)
    snake = await source.authenticate(hs(aud(external_id="ext-snake")))
    assert snake is not None and snake.external_id == "ext-snake"
    assert await source.authenticate(hs(aud(), key="wrong-secret-0123456789-0123456789-0123")) is None


@pytest.mark.parametrize("claim", ["externalId", "external_id"])
async def test_an_id_claim_is_never_skipped_for_the_sub(verifier: JwtVerifier, claim: str) -> None:
    """A number is the id as its text (as Zion's profile reads one); a claim of another type refuses
    the token: it was skipped, and the token served as its `sub` — another id space, another user."""
    source = LocalJwtIdentitySource(verifier)
    numbered = await source.authenticate(hs(aud(**{claim: 42})))
    assert numbered is not None and (numbered.external_id, numbered.user_id) == ("42", "user-1")
    for unreadable in (["ext-9"], {"id": "ext-9"}, True, False, 0, float("nan"), float("inf")):
        assert await source.authenticate(hs(aud(**{claim: unreadable}))) is None, unreadable
    for absent in (None, ""):  # null or "" names nobody: the `sub` then, as before
        only_sub = await source.authenticate(hs(aud(**{claim: absent})))
        assert only_sub is not None and only_sub.external_id == "user-1"
    # `externalId` is read first, and decides: an unreadable one is not made up for by `external_id`
    assert await source.authenticate(hs(aud(externalId=["x"], external_id="ext-snake"))) is None


async def stand_in(source: LocalJwtIdentitySource, token: str) -> Identity:
    """The identity a token's claims stand in with while governance is down (raised, never returned)."""
    with pytest.raises(StandIn) as outage:
        await source.authenticate(token)
    return outage.value.identity


async def test_governance_is_asked_about_every_token_and_its_claims_serve_only_in_an_outage(
    verifier: JwtVerifier,
) -> None:
    """A locally verified token of a user Zion has since deactivated or deleted was served until
    its `exp` whenever it carried an email (Zion was asked only for tokens without one). Zion is
    asked for every token; its refusal is a refusal; its outage serves a token from its claims only
    when they name the profile's id and the email (anything else fails as an outage)."""
    profiles = ZionProfiles(Identity("ext-z", "usr-z", "z@example.com", source="zion"))
    source = LocalJwtIdentitySource(verifier, profile_source=profiles)
    answered = await source.authenticate(hs(aud(externalId="ext-z")))
    assert answered is not None and (answered.external_id, answered.email, answered.source) == (
        "ext-z", "z@example.com", "zion")
    assert profiles.calls == 1
    profiles.answer = None  # deactivated since the token was issued: refused, until the token expires
    with pytest.raises(Refused) as refused:
        await source.authenticate(hs(aud(externalId="ext-z")))
    assert refused.value.expires_at > time.time()
    profiles.down = True
    in_outage = await stand_in(source, hs(aud(externalId="ext-z")))
    assert (in_outage.external_id, in_outage.email) == ("ext-z", "u@example.com")
    assert (await stand_in(source, hs(aud(external_id="ext-z")))).external_id == "ext-z"
    # `sub` is not Zion's id; no email; an `externalId` that is no id (not made up for by `external_id`)
    for no_stand_in in (hs(aud()), hs(aud(externalId="ext-z", email=None)),
                        hs(aud(externalId=["ext-z"], external_id="ext-z"))):
        with pytest.raises(GovernanceUnavailable) as outage:
            await source.authenticate(no_stand_in)
        assert not isinstance(outage.value, StandIn)
    assert profiles.calls == 7
    assert await source.authenticate(hs(aud(), key="wrong-secret-0123456789-0123456789-0123")) is None
    assert profiles.calls == 7  # a token that fails verification never reaches governance


async def test_with_zion_the_identity_is_always_the_profiles(verifier: JwtVerifier) -> None:
    """A token carrying an email was keyed by its claims (`sub`) even when Zion answered, one without
    by Zion's profile: a realistic {sub, email} token had its limits read at /limits/external/<sub>
    (404: the default plan instead of the user's), and the same person's objects, sessions and ledger
    rows split across two ids. Whatever the token carries, Zion's answer is the identity."""
    exp = int(time.time()) + 120
    profiles = ZionProfiles(Identity("ext-z", "usr-z", "z@example.com", source="zion", expires_at=exp + 3600))
    source = LocalJwtIdentitySource(verifier, profile_source=profiles)
    for token in (hs(aud(exp=exp)), hs(aud(exp=exp, email=None)), hs(aud(exp=exp, externalId="claimed"))):
        identity = await source.authenticate(token)
        assert identity == Identity("ext-z", "usr-z", "z@example.com", source="zion", expires_at=exp + LEEWAY_SECONDS)
    profiles.down = True  # in an outage, a numeric externalId is the text Zion's profile gives it
    assert (await stand_in(source, hs(aud(exp=exp, externalId=42)))).external_id == "42"
    for odd in (True, 0, "", None):
        with pytest.raises(GovernanceUnavailable) as outage:
            await source.authenticate(hs(aud(exp=exp, externalId=odd)))
        assert not isinstance(outage.value, StandIn)


async def test_a_profile_never_outlives_the_verified_token(verifier: JwtVerifier) -> None:
    class Profiles:
        name = "zion"

        async def authenticate(self, token: str) -> Identity | None:
            return Identity("ext-z", "usr-z", "z@example.com", source="zion", expires_at=None)

    exp = int(time.time()) + 120
    identity = await LocalJwtIdentitySource(verifier, profile_source=Profiles()).authenticate(
        hs(aud(email=None, exp=exp))
    )
    assert identity is not None and identity.expires_at == exp + LEEWAY_SECONDS


def test_unverified_expiry_reads_exp_plus_the_leeway_and_nothing_else() -> None:
    assert unverified_expiry(hs(claims(exp=1_700_000_000), key="some other key, never verified: 0123456789")) == 1_700_000_030
    assert LEEWAY_SECONDS == 30
    assert unverified_expiry(hs({"sub": "no-exp"})) is None
    assert unverified_expiry(hs(claims(exp="soon"))) is None
    assert unverified_expiry(hs(claims(exp=True))) is None
    assert unverified_expiry("opaque-zion-token") is None
    assert unverified_expiry("a.b.c") is None
    far = 253_402_300_799 + LEEWAY_SECONDS  # 9999-12-31: a later exp means the same
    assert unverified_expiry(hs(claims(exp=10**400))) == far  # no float holds it: capped, not an error
    assert unverified_expiry(hs(claims(exp=1e300))) == far
    long_ago = -253_402_300_799 + LEEWAY_SECONDS
    assert unverified_expiry(hs(claims(exp=-(10**400)))) == long_ago  # nor this one, of anyone's making
    assert unverified_expiry(hs(claims(exp=-1e300))) == long_ago
    assert unverified_expiry(hs(claims(exp=float("nan")))) is None


def respellings(token: str) -> dict[str, str]:
    """Other spellings of `token` (43-character signature, one holding a `-` or `_`) that decode to
    the same bytes, or nearly: each was a separate identity-cache entry and identity lookup."""
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = alphabet[alphabet.index(sig[-1]) ^ 1]  # one of the 2 unused trailing bits set
    return {
        "padded signature": f"{token}=",
        "padded twice": f"{token}==",
        "padded payload": f"{head}.{body}{'=' * (-len(body) % 4)}.{sig}",
        "trailing bits": f"{head}.{body}.{sig[:-1]}{flipped}",
        "standard alphabet": token.replace("-", "+").replace("_", "/"),
        "junk": f"{head}.{body}.{sig[:8]}!{sig[8:]}",
    }


def dashed_token() -> str:
    """A valid HS256 token whose signature holds a `-` or `_` (the jti picked to make one)."""
    for n in range(1000):
        token = hs(aud(jti=str(n)))
        if len(token.rpartition(".")[2]) == 43 and set(token.rpartition(".")[2]) & {"-", "_"}:
            return token
    raise AssertionError("no such token")


async def test_only_the_canonical_spelling_of_a_token_is_valid(verifier: JwtVerifier) -> None:
    """PyJWT takes a signature padded with `=`: one signed token had several spellings, each its own
    identity-cache entry and governance lookup. RFC 7515 wants unpadded base64url: any other is refused."""
    token = dashed_token()
    assert canonical_encoding(token) and await verifier.verify(token) is not None
    for name, other in respellings(token).items():
        assert other != token
        assert not canonical_encoding(other), name
        assert await verifier.verify(other) is None, name


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "RS256", "PS512", "ES256", "ES384", "ES512", "EdDSA"])
def test_tokens_pyjwt_makes_are_canonical(alg: str) -> None:
    """Every token PyJWT encodes (each algorithm's signature length) passes; so does an opaque one."""
    curves = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
    key: Any = (SECRET if alg.startswith("HS") else ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA"
                else ec.generate_private_key(curves[alg]) if alg in curves
                else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for n in range(8):  # payloads of each length mod 3
        assert canonical_encoding(jwt.encode(claims(jti="x" * n), key, algorithm=alg))
    assert canonical_encoding("opaque-zion-token")


# --- RS256 through a JWKS ---------------------------------------------------------------------------


class Jwks:
    """A JWKS endpoint whose key list tests change; counts downloads."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.downloads = 0
        self.down = False  # answer 503, as an identity provider in an outage
        self.app = Starlette(routes=[Route("/jwks.json", self.serve)])

    async def serve(self, request: Request) -> JSONResponse:
        self.downloads += 1
        if self.down:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        return JSONResponse({"keys": self.keys})


def rsa_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


def hmac_signed(payload: dict[str, Any], key: bytes, kid: str) -> str:
    """An HS256 token signed by hand (PyJWT refuses PEM keys as HMAC secrets when encoding)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        + "."
        + part(json.dumps(payload).encode())
    )
    return signing_input + "." + part(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def rs(private: rsa.RSAPrivateKey, kid: str | None, alg: str = "RS256", **extra: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**extra), private, algorithm=alg, headers=headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks() -> Iterator[tuple[Jwks, str]]:
    server = Jwks()
    with serving(server.app) as srv:
        yield server, srv.url + "/jwks.json"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_rs256_via_jwks_and_one_refetch_per_unknown_kid(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    key_b, jwk_b = rsa_key("b")
    server.keys = [jwk_a]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, clock=clock)

    assert await verifier.verify(rs(key_a, "a")) is not None
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 1  # cached

    server.keys = [jwk_a, jwk_b]  # rotation, seen at the next allowed refetch
    assert await verifier.verify(rs(key_b, "b")) is None  # fetched < 60 s ago: no refetch yet
    assert server.downloads == 1
    clock.now += 61
    assert await verifier.verify(rs(key_b, "b")) is not None  # unknown kid -> one refetch
    assert server.downloads == 2
    assert await verifier.verify(rs(key_b, "unknown")) is None
    assert await verifier.verify(rs(key_b, "unknown")) is None
    assert server.downloads == 2  # at most once per 60 s
    clock.now += 61
    assert await verifier.verify(rs(key_b, "unknown")) is None
    assert server.downloads == 3


async def test_a_token_not_yet_valid_costs_no_jwks_fetch_and_is_valid_at_its_nbf(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """Not yet valid is a verdict for now (NotYetValid, which the refusal cache does not keep):
    read on the verifier's wall clock, after the signature, and never a reason to fetch the set."""
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    server.keys = [jwk_a]
    wall = Clock()
    wall.now = time.time()
    verifier = JwtVerifier(None, url, None, None, session, clock=Clock(), wall_clock=wall)
    early = rs(key_a, "a", nbf=int(wall.now) + LEEWAY_SECONDS + 60)
    for _ in range(5):
        with pytest.raises(NotYetValid):
            await verifier.verify(early)
    assert server.downloads == 1
    other, _ = rsa_key("a")  # same kid, a key not in the set: a forgery is refused as any other
    assert await verifier.verify(rs(other, "a", nbf=int(wall.now) + LEEWAY_SECONDS + 60)) is None
    assert await verifier.verify(rs(key_a, "a", nbf="soon")) is None  # not a number: invalid, as PyJWT has it
    wall.now += 60
    assert await verifier.verify(early) is not None


async def test_every_key_sharing_the_tokens_kid_is_tried(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """A rotation that kept the kid (old and new key both published under it) locked out the users
    of whichever key came second: only the first key with the token's kid was tried. Each is tried
    now; a token none of them signed is still refused, with no refetch within the minute."""
    server, url = jwks
    (old, jwk_old), (new, jwk_new), (forger, _) = rsa_key("k"), rsa_key("k"), rsa_key("k")
    server.keys = [jwk_old, jwk_new]
    verifier = JwtVerifier(None, url, None, None, session, clock=Clock())
    for signer in (old, new):
        found = await verifier.verify(rs(signer, "k"))
        assert found is not None and found["sub"] == "user-1"
    assert await verifier.verify(rs(forger, "k")) is None
    assert await verifier.verify(rs(new, "k", exp=int(time.time()) - 60)) is None  # its key, but expired
    assert server.downloads == 1


async def test_a_rotation_that_replaced_a_key_under_its_kid_is_fetched_like_an_unknown_kid(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """The cached set knew the kid, so a token of the new key (same kid) never caused a refetch: its
    users were refused until the set's `max_age` (an hour). A token no key of its kid signed now
    refetches the set as an unknown kid does: at most once per `refetch_interval`."""
    server, url = jwks
    (old, jwk_old), (new, jwk_new), (forger, _) = rsa_key("k"), rsa_key("k"), rsa_key("k")
    server.keys = [jwk_old]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, clock=clock)
    assert await verifier.verify(rs(old, "k")) is not None
    server.keys = [jwk_new]  # the old key withdrawn, the new one published under the same kid
    assert await verifier.verify(rs(new, "k")) is None  # fetched < 60 s ago: no refetch yet
    assert server.downloads == 1
    clock.now += 61
    assert await verifier.verify(rs(new, "k")) is not None  # one refetch
    assert await verifier.verify(rs(old, "k")) is None  # withdrawn
    assert await verifier.verify(rs(forger, "k")) is None
    assert server.downloads == 2  # at most once per 60 s, forged tokens included


async def test_the_keys_tried_for_one_kid_are_bounded(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1 MiB set could hold thousands of keys under one kid, each a signature check per token:
    the first MAX_KEYS_PER_KID are tried, and the set's crowded kid is logged."""
    server, url = jwks
    pairs = [rsa_key("k") for _ in range(MAX_KEYS_PER_KID + 1)]
    server.keys = [jwk for _, jwk in pairs]
    verifier = JwtVerifier(None, url, None, None, session, clock=Clock())
    assert await verifier.verify(rs(pairs[MAX_KEYS_PER_KID - 1][0], "k")) is not None
    assert await verifier.verify(rs(pairs[MAX_KEYS_PER_KID][0], "k")) is None
    assert "'k' have more than" in caplog.text


async def test_a_stale_key_set_is_honoured_for_max_stale_then_it_is_an_outage(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """Once the cached JWKS was older than `max_age`, a failed refetch kept its keys for ever: a key
    the identity provider removed stayed valid for as long as the JWKS URL was unreachable. The set
    serves through an outage up to `max_stale` old; past that a JWKS token is an outage (503)."""
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    server.keys = [jwk_a]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, clock=clock)  # max_age 1 h, max_stale 24 h
    assert await verifier.verify(rs(key_a, "a")) is not None  # fetched at 1000
    server.down, server.keys = True, []  # key "a" removed, and the JWKS unreachable
    clock.now = 1000 + 3601
    assert await verifier.verify(rs(key_a, "a")) is not None  # stale: refetch failed, cached set served
    clock.now = 1000 + 86400
    assert await verifier.verify(rs(key_a, "a")) is not None
    downloads = server.downloads
    clock.now = 1000 + 86410  # past max_stale, and the next refetch is allowed
    with pytest.raises(GovernanceUnavailable):
        await verifier.verify(rs(key_a, "a"))
    assert server.downloads == downloads + 1  # it did try once more
    server.down, server.keys = False, [rsa_key("b")[1]]
    clock.now += 6  # the next refetch allowed after a failure
    assert await verifier.verify(rs(key_a, "a")) is None  # back: the key is gone from the new set


async def test_a_token_whose_key_is_cached_does_not_wait_for_a_slow_refresh(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """Once the set was due for a refresh, every token waited for the fetch under way: a JWKS URL
    that is slow or unreachable (a timeout each time, tried again every 5 s) held every new token up
    to `fetch_timeout`, most of the time. A token whose key is cached is verified with it meanwhile;
    one naming an unknown kid still waits for the new set (it may hold a rotated key)."""
    import asyncio

    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    key_b, jwk_b = rsa_key("b")
    server.keys = [jwk_a]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, clock=clock)
    assert await verifier.verify(rs(key_a, "a")) is not None
    server.keys = [jwk_a, jwk_b]
    clock.now += 3601  # due for a refresh
    release = asyncio.Event()
    download = verifier._download

    async def slow() -> Any:
        await release.wait()
        return await download()

    verifier._download = slow  # type: ignore[method-assign]
    refreshing = asyncio.create_task(verifier.verify(rs(key_a, "a")))
    rotated = asyncio.create_task(verifier.verify(rs(key_b, "b")))
    known = asyncio.create_task(verifier.verify(rs(key_a, "a")))
    for _ in range(10):
        await asyncio.sleep(0)
    assert known.done() and known.result() is not None  # verified with the cached key meanwhile
    assert not refreshing.done() and not rotated.done()  # the unknown kid waits for the new set
    release.set()
    assert await refreshing is not None and await rotated is not None
    assert verifier.fetches == 2


async def test_a_max_age_and_max_stale_below_the_refetch_interval_are_kept(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """A set past `max_age` was refetched only `refetch_interval` (60 s) after its fetch, yet refused
    once past `max_stale`: with JWT_JWKS_MAX_STALE_SECONDS=20 a reachable JWKS made every JWKS token
    a 503 from 20 s to 60 s after each fetch, and JWT_JWKS_MAX_AGE_SECONDS=10 refreshed once a minute.
    A set past `max_age` is now fetched again at once (never within 5 s of a failure)."""
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    server.keys = [jwk_a]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, max_age=10, max_stale=20, clock=clock)
    assert await verifier.verify(rs(key_a, "a")) is not None
    clock.now += 5
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 1  # fresh: cached
    clock.now += 6  # 11 s old: due
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 2
    clock.now += 21  # past max_stale of the last fetch, the JWKS reachable: fetched, not an outage
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 3
    server.down = True
    clock.now += 21
    with pytest.raises(GovernanceUnavailable):  # unreachable and too old: the outage it should be
        await verifier.verify(rs(key_a, "a"))
    with pytest.raises(GovernanceUnavailable):
        await verifier.verify(rs(key_a, "a"))
    assert server.downloads == 4  # one try; the next only 5 s after the failure
    server.down = False
    clock.now += 5
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 5


async def test_jwks_key_misuse_is_rejected(jwks: tuple[Jwks, str], session: aiohttp.ClientSession) -> None:
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    key_other, _ = rsa_key("a")  # same kid, different key: a forgery
    server.keys = [jwk_a]
    verifier = JwtVerifier(SECRET, url, None, None, session)
    assert await verifier.verify(rs(key_other, "a")) is None
    assert await verifier.verify(rs(key_a, "a", alg="PS256")) is None  # the JWK says RS256 only
    assert await verifier.verify(rs(key_a, None)) is not None  # no kid, one usable key
    assert await verifier.verify(rs(key_a, "a", exp=int(time.time()) - 120)) is None
    # The RSA public key must not work as an HMAC secret (algorithm confusion).
    pem = key_a.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert await JwtVerifier(None, url, None, None, session).verify(hmac_signed(claims(), pem, "a")) is None
    # A secret-only verifier has no key for RS256 tokens.
    assert await JwtVerifier(SECRET, None, None, None).verify(rs(key_a, "a")) is None
    # A key the token carries or points at (`jwk`, `jku`, `x5u`) is never used nor fetched, and a
    # `kid` is only ever compared with the set's.
    downloads = server.downloads
    own = json.loads(RSAAlgorithm.to_jwk(key_other.public_key()))
    carried = {"kid": "a", "jwk": own, "jku": url + "?attacker", "x5u": url + "?attacker"}
    assert await verifier.verify(jwt.encode(claims(), key_other, algorithm="RS256", headers=carried)) is None
    assert await verifier.verify(rs(key_a, "../../a")) is None
    assert server.downloads == downloads  # never the `jku` (nor a refetch: the set is under a minute old)


async def test_a_jwks_key_pyjwt_cannot_build_is_skipped_not_an_error(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """PyJWT raises NotImplementedError for a JWK whose `alg` is "none" and TypeError for one whose
    `alg` is a list, not the PyJWTError the key loop skipped: every JWKS-signed token was a 500, and
    with no failure recorded each one downloaded the key set again. Such a key is skipped."""
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    server.keys = [{**jwk_a, "kid": "n", "alg": "none"}, {**jwk_a, "kid": "l", "alg": ["RS256"]}, jwk_a]
    verifier = JwtVerifier(None, url, None, None, session)
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert await verifier.verify(rs(key_a, "n")) is None
    assert await verifier.verify(rs(key_a, "a")) is not None
    assert server.downloads == 1


async def test_a_key_set_with_no_usable_key_keeps_the_cached_one(
    jwks: tuple[Jwks, str], session: aiohttp.ClientSession
) -> None:
    """A JWKS answering 200 with no key Sentinel can use (`{"keys": []}`, `[{}]`, only HMAC or
    encryption keys) replaced the cached set: every JWKS token was refused until the next allowed
    refetch. It is a failed fetch: the cached keys serve (up to max_stale) and it is tried again."""
    server, url = jwks
    key_a, jwk_a = rsa_key("a")
    server.keys = [jwk_a]
    clock = Clock()
    verifier = JwtVerifier(None, url, None, None, session, clock=clock)
    assert await verifier.verify(rs(key_a, "a")) is not None
    for broken in ([], [{}], [{"kty": "oct", "k": "c2VjcmV0"}], [{**jwk_a, "use": "enc"}]):
        server.keys = broken
        clock.now += 3601  # past max_age: refetched
        downloads = server.downloads
        assert await verifier.verify(rs(key_a, "a")) is not None, broken
        assert server.downloads == downloads + 1
    fresh = JwtVerifier(None, url, None, None, session, clock=clock)  # nothing cached: an outage, not a 401
    with pytest.raises(GovernanceUnavailable):
        await fresh.verify(rs(key_a, "a"))


async def test_unreachable_jwks_is_governance_unavailable(session: aiohttp.ClientSession) -> None:
    key_a, _ = rsa_key("a")
    verifier = JwtVerifier(None, f"http://127.0.0.1:{free_port()}/jwks.json", None, None, session)
    with pytest.raises(GovernanceUnavailable):
        await verifier.verify(rs(key_a, "a"))


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        JwtVerifier(None, None, None, None)
    with pytest.raises(ValueError):
        JwtVerifier(None, "http://127.0.0.1:1/jwks.json", None, None, None)
    with pytest.raises(ValueError):  # a set refused as too old before it is even due for a refresh
        JwtVerifier(None, "http://127.0.0.1:1/jwks.json", None, None, object(), max_age=3600, max_stale=60)  # type: ignore[arg-type]


async def test_the_jwks_is_read_through_the_apps_session_unredirected_and_bounded() -> None:
    """Production fetches the JWKS with the app's upstream session, which does not inflate answers:
    a JWKS host that compresses (most CDNs) made every JWT a 503. A redirect is not followed (the
    keys come from the configured URL, nowhere else), and a document past 1 MiB is refused unread."""
    import gzip

    from starlette.responses import RedirectResponse, Response

    from sentinel.providers.http import create_session

    key, jwk = rsa_key("a")
    document = json.dumps({"keys": [jwk]}).encode()

    async def compressed(request: Request) -> Response:
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gzip.compress(document), headers={"content-encoding": "gzip"},
                            media_type="application/json")
        return Response(document, media_type="application/json")

    async def moved(_: Request) -> Response:
        return RedirectResponse("/compressed.json", status_code=302)

    async def huge(_: Request) -> Response:
        return Response(json.dumps({"keys": [jwk], "pad": "x" * (2 * 1024 * 1024)}), media_type="application/json")

    app = Starlette(routes=[Route("/compressed.json", compressed), Route("/moved.json", moved),
                            Route("/huge.json", huge)])
    session = create_session(read_timeout=5, connect_timeout=5)

    async def verified(url: str) -> object:
        try:
            return await JwtVerifier(None, url, None, None, session).verify(rs(key, "a"))
        except GovernanceUnavailable:  # no key set could be read
            return "unavailable"

    try:
        with serving(app) as srv:
            found = {name: await verified(f"{srv.url}/{name}.json") for name in ("compressed", "moved", "huge")}
    finally:
        await session.close()
    assert isinstance(found["compressed"], dict), found
    assert found["moved"] == "unavailable" and found["huge"] == "unavailable", found
