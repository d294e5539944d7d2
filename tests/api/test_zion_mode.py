"""GOVERNANCE=zion over HTTP: Zion JWTs, limits read from Zion, usage reported to Zion, Zion outages."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator

import httpx
import jwt
import orjson
import pytest

from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.domain.plans import ENDED_PERIOD_RECHECK_SECONDS, MAX_WINDOW_SECONDS
from sentinel.errors import InvalidRequest
from sentinel.governance.jwt import LEEWAY_SECONDS
from sentinel.governance.keys import KeyService
from sentinel.governance.zion import MAX_ZION_TOKEN_BYTES
from sentinel.routing.sessions import SessionStore
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock
from tests.support.fake_zion import BATCH, LIMITS, ME, FakeZion
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "zion says hi"}]}


@pytest.fixture
def zion() -> Iterator[FakeZion]:
    fake = FakeZion()
    with serving(fake) as srv:
        fake.url = srv.url
        yield fake


def zion_gateway(factory: Callable[..., Gateway], zion: FakeZion, **kw: object) -> Gateway:
    return factory(
        governance="zion", zion_api_url=zion.url, zion_api_key=zion.api_key,
        usage_flush_interval_seconds=0.1, **kw,
    )


def post(gw: Gateway, token: str, body: dict = CHAT) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"},
                      timeout=30)


async def make_key(database_url: str, external_id: str, email: str | None = None) -> str:
    """A Sentinel key as `sentinel keys create` makes it under GOVERNANCE=zion."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        _, key = await KeyService(session_factory(engine), require_email=True).create_key(external_id, email=email)
        return key
    finally:
        await engine.dispose()


def test_zion_jwt_validated_and_cached(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-carol", "carol-ext", "carol@example.com")
    gw = zion_gateway(gateway_factory, zion)
    assert post(gw, "jwt-carol").status_code == 200
    assert post(gw, "jwt-carol").status_code == 200
    assert zion.calls[ME] == 1  # validated once, then cached by token hash
    bad = post(gw, "jwt-unknown")
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    # Sentinel-issued API keys keep working alongside Zion JWTs (for a user with an email).
    key = asyncio.run(make_key(gw.settings.database_url, "carol-ext", email="carol@example.com"))
    assert post(gw, key).status_code == 200


def test_zion_limits_enforced_with_local_admissions(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-dave", "dave-ext", "dave@example.com", requests=5, used_requests=2)
    gw = zion_gateway(gateway_factory, zion)
    codes = [post(gw, "jwt-dave").status_code for _ in range(5)]
    # Zion said 3 remain; Sentinel counts what it admitted since that reading.
    assert codes == [200, 200, 200, 429, 429]
    denied = post(gw, "jwt-dave")
    assert "requests" in denied.json()["error"]["message"]
    assert denied.headers["x-ratelimit-limit"] == "5"


def test_usage_reported_to_zion_exactly(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-erin", "erin-ext", "erin@example.com")
    gw = zion_gateway(gateway_factory, zion)
    seen_in = seen_out = 0
    for _ in range(3):
        usage = post(gw, "jwt-erin").json()["usage"]
        seen_in += usage["prompt_tokens"]
        seen_out += usage["completion_tokens"]
    user = zion.user("erin@example.com")
    assert user is not None
    assert wait_for(lambda: user.used["aiRequests"] == 3)
    assert user.used["aiInputTokens"] == seen_in and user.used["aiOutputTokens"] == seen_out
    batch_calls = [s for s in zion.seen if s.route == BATCH]
    assert batch_calls and all("idempotency-key" in s.headers for s in batch_calls)


def test_zion_outage_loses_nothing(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-frank", "frank-ext", "frank@example.com")
    zion.add_user("jwt-gina", "gina-ext", "gina@example.com")
    gw = zion_gateway(gateway_factory, zion)
    assert post(gw, "jwt-frank").status_code == 200  # identity and limits now cached
    zion.set_down(True)
    during = [post(gw, "jwt-frank").status_code for _ in range(5)]
    unknown = post(gw, "jwt-gina")  # nothing cached for her: 503, not 401
    # Deliveries fail meanwhile and back off.
    assert wait_for(lambda: (metric(gw.url, "sentinel_usage_deliveries_total", result="failure") or 0) >= 1)
    zion.set_down(False)
    assert during == [200] * 5
    assert unknown.status_code == 503
    frank = zion.user("frank@example.com")
    assert frank is not None
    assert wait_for(lambda: frank.used["aiRequests"] == 6, timeout=40)
    # Once the outbox is empty nothing is left that could be delivered again...
    assert wait_for(lambda: metric(gw.url, "sentinel_usage_outbox_depth") == 0)
    assert frank.used["aiRequests"] == 6  # ...and it was delivered once, not twice


def test_native_tiers_come_from_zion(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    zion.add_user("jwt-hank", "hank-ext", "hank@example.com")
    gw = zion_gateway(gateway_factory, zion)
    models = set()
    for tier in ("simple", "complex", "complex"):
        r = httpx.post(
            gw.url + "/native/v1/chat/completions",
            json={"tier": tier, "messages": [{"role": "user", "content": "tiers"}]},
            headers={"Authorization": "Bearer jwt-hank"}, timeout=30,
        )
        assert r.status_code == 200, r.text
        models.add((tier, r.headers["x-sentinel-provider"], r.headers["x-sentinel-model"]))
    assert models == {("simple", "openai", "gpt-4o-mini"), ("complex", "openai", "gpt-4o")}
    assert zion.calls["/api/v1/tiers/config"] == 1  # cached for TIER_CONFIG_TTL_SECONDS


# --- identity and governance that do not outlive their truth (issue 8, section 4) -------------------


def zion_jwt(seconds_left: float, sub: str) -> str:
    """A JWT (signed by "Zion", never verified by Sentinel) usable for `seconds_left` more seconds,
    counting Sentinel's leeway on `exp`."""
    exp = int(time.time() + seconds_left) - LEEWAY_SECONDS
    return jwt.encode({"sub": sub, "exp": exp}, "zion-own-signing-key-0123456789abcdef", algorithm="HS256")


def test_locally_verified_jwts_are_the_zion_profiles_user(gateway_factory: Callable[..., Gateway], zion: FakeZion) -> None:
    """With JWT_SECRET and GOVERNANCE=zion, a token carrying an email was keyed by its `sub` even
    though Zion answered: a realistic {sub, email} token had its limits read at
    /limits/external/<sub>, Zion answered 404, and the default plan replaced the user's own limits.
    The identity is Zion's profile (its externalId), so Zion's limits apply."""
    secret = "shared-jwt-signing-secret-0123456789"
    token = jwt.encode({"sub": "auth0|mona", "email": "mona@example.com", "exp": int(time.time()) + 600},
                       secret, algorithm="HS256")
    zion.add_user(token, "mona-ext", "mona@example.com", requests=2)
    gw = zion_gateway(gateway_factory, zion, jwt_secret=secret)
    assert [post(gw, token).status_code for _ in range(3)] == [200, 200, 429]
    assert {s.path for s in zion.seen if s.route == LIMITS} == {"/api/v1/limits/external/mona-ext"}


def test_a_cached_zion_identity_ends_with_its_token_even_while_zion_is_down(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    gw = zion_gateway(gateway_factory, zion)  # JWT_CACHE_TTL_SECONDS = 300, grace 900
    token = zion_jwt(5, "ivan")  # minted once the gateway is up: its start-up takes none of the 5 s
    zion.add_user(token, "ivan-ext", "ivan@example.com")
    assert post(gw, token).status_code == 200
    zion.set_down(True)
    deadline = time.monotonic() + 20
    answer = post(gw, token)
    while answer.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = post(gw, token)
    assert answer.status_code == 401, answer.text  # not the cached identity, and not a 503
    assert answer.json()["error"]["code"] == "token_expired"
    assert zion.attempts[ME] == 1  # the cache served it until exp; the expiry needed no Zion call


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_user_zion_refuses_is_401_not_a_stale_identity(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, status: int
) -> None:
    """A deactivated (403) or deleted (404) user — or a token Zion cannot read (400) — is a refusal,
    not an outage: once the cached identity is due for a check it is dropped and the caller gets 401,
    counted by the failed-authentication throttle; the grace period is for outages only."""
    zion.add_user("jwt-olga", "olga-ext", "olga@example.com")
    clock = FakeClock(1_700_000_000.0 - 1_700_000_000.0 % 60)  # the throttle's minute just begun
    gw = zion_gateway(gateway_factory, zion, jwt_cache_ttl_seconds=1, auth_failures_per_minute=1,
                      window_clock=clock)
    assert post(gw, "jwt-olga").status_code == 200
    zion.refuse_user("jwt-olga", status)
    assert post(gw, "jwt-olga").status_code == 200  # cached, not yet due for a check
    clock.advance(2)  # the identity cache reads the gateway's clock: the cached identity is due
    answer = post(gw, "jwt-olga")
    assert answer.status_code == 401, answer.text  # neither the stale identity nor a 503
    assert answer.headers["www-authenticate"] == "Bearer"
    # That failure counted: the next request from this address is throttled.
    assert post(gw, "jwt-olga").json()["error"]["code"] == "auth_rate_limited"


@pytest.mark.parametrize("status", [402, 405, 409, 410, 413, 414, 422, 431])
def test_any_other_4xx_zion_answers_for_a_token_is_401_not_503(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, status: int
) -> None:
    """Zion (or a proxy in front of it) answering /users/me with a 4xx other than 400/401/403/404 —
    431 or 414 for a token too large for it, 405, 422, ... — did not accept the token: it was a
    503 (an outage, served a stale identity for the grace period), and is a 401 now, in each surface's
    shape, remembered as any wrong token is (Zion is not asked again at once)."""
    zion.refuse_user("jwt-uma", status)
    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=1000)
    answer = post(gw, "jwt-uma")
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "invalid_api_key"
    anthropic = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": "jwt-uma", "anthropic-version": "2023-06-01"},
                           json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                           timeout=30)
    assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"
    assert zion.attempts[ME] == 1  # one answer, no retry, and remembered: the second request did not ask
    assert gw.read_stored("sentinel:profile:" + hashlib.sha256(b"jwt-uma").hexdigest()) is not None


@pytest.mark.parametrize("status", [408, 429])
def test_a_timeout_or_429_from_zion_stays_an_outage(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, status: int
) -> None:
    """408 and 429 say nothing of the token: Zion could not take the call now. A 503 (Zion down),
    never a 401 (the caller would be signed out, and the failure counted against their address)."""
    zion.refuse_user("jwt-val", status)
    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=1000)
    answer = post(gw, "jwt-val")
    assert answer.status_code == 503, answer.text


def test_a_token_longer_than_zion_takes_is_401_without_asking_zion(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """A bearer token of 8 KiB and more (the gateway takes 16 KiB of headers) went to Zion, whose
    server or proxy may answer it 431/414 — which was a 503. Past MAX_ZION_TOKEN_BYTES it is refused
    (401) before Zion is asked, and remembered as any wrong token is; one at the bound is still asked."""
    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=1000)
    long = "t" * (MAX_ZION_TOKEN_BYTES + 1)
    for _ in range(2):
        answer = post(gw, long)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_api_key"
    assert zion.attempts[ME] == 0
    assert gw.read_stored("sentinel:profile:" + hashlib.sha256(long.encode()).hexdigest()) is not None
    # The longest token sent is still Zion's to judge.
    zion.add_user("u" * MAX_ZION_TOKEN_BYTES, "wes-ext", "wes@example.com")
    assert post(gw, "u" * MAX_ZION_TOKEN_BYTES).status_code == 200
    assert zion.attempts[ME] == 1


def test_a_token_zion_refused_is_never_served_from_its_claims_during_a_later_outage(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """A fired employee: Zion deactivates the user, refuses their (locally verified, still unexpired)
    JWT, and the client gets 401. The refusal was remembered for 30 s only; once it was gone, a Zion
    outage let the same token in again from its claims (a stand-in), for as long as the outage
    lasted. A token Zion refused gets no stand-in before it expires; Zion's answer still decides
    once it is back."""
    secret = "shared-jwt-signing-secret-0123456789"
    token = jwt.encode({"sub": "auth0|pat", "externalId": "pat-ext", "email": "pat@example.com",
                        "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    other = jwt.encode({"sub": "auth0|quin", "externalId": "quin-ext", "email": "quin@example.com",
                        "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    zion.add_user(token, "pat-ext", "pat@example.com")
    zion.add_user(other, "quin-ext", "quin@example.com")
    gw = zion_gateway(gateway_factory, zion, jwt_secret=secret, auth_failures_per_minute=1000)
    assert post(gw, token).status_code == 200
    assert post(gw, other).status_code == 200  # her plan is cached now
    zion.refuse_user(token, 403)  # deactivated
    profile = "sentinel:profile:" + hashlib.sha256(token.encode()).hexdigest()
    gw.drop_stored(profile)  # the cached identity's TTL over: Zion is asked and refuses
    assert post(gw, token).status_code == 401
    zion.set_down(True)
    gw.drop_stored(profile)  # the remembered refusal's 30 s over, and Zion is down now
    refused = post(gw, token)
    assert refused.status_code == 401, refused.text  # not served from its claims
    # A token that was never refused is served from its claims during the outage, as before.
    gw.drop_stored("sentinel:profile:" + hashlib.sha256(other.encode()).hexdigest())
    assert post(gw, other).status_code == 200


def test_a_refused_token_sent_in_another_encoding_gets_no_stand_in_either(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """The refusal was remembered under the SHA-256 of the token as sent, but one signed token has
    several encodings that verify: its signature segment with `=` padding (PyJWT takes it), and for
    ES256 the signature (r, n-s) as well as (r, s). The fired employee added a `=` and was served from
    the claims again during the outage. The refusal is remembered by what the signature covers."""
    secret = "shared-jwt-signing-secret-0123456789"
    token = jwt.encode({"sub": "auth0|pat", "externalId": "pat-ext", "email": "pat@example.com",
                        "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    assert len(token.rpartition(".")[2]) % 4 == 3  # 43 characters: one `=` pads it
    zion.add_user(token, "pat-ext", "pat@example.com")
    gw = zion_gateway(gateway_factory, zion, jwt_secret=secret, auth_failures_per_minute=1000)
    assert post(gw, token).status_code == 200
    zion.refuse_user(token, 403)  # deactivated
    gw.drop_stored("sentinel:profile:" + hashlib.sha256(token.encode()).hexdigest())
    assert post(gw, token).status_code == 401
    zion.set_down(True)
    padded = post(gw, token + "=")
    assert padded.status_code == 401, padded.text  # not served from its claims
    assert post(gw, token).status_code == 401


def test_other_spellings_of_a_users_token_never_reach_zion(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """One valid token spelled otherwise (its signature padded with `=`, its base64url in the standard
    alphabet, trailing bits set): each was its own identity-cache entry and its own `/users/me` call,
    so one user's token multiplied into as many Zion lookups as spellings. Only the canonical spelling
    is asked about; the others are 401, counted as failed authentications."""
    token = next(t for n in range(1000) if set((t := zion_jwt(600, f"auth0|ria-{n}")).rpartition(".")[2]) & {"-", "_"})
    zion.add_user(token, "ria-ext", "ria@example.com")
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    others = [token + "=", token + "==", token.replace("-", "+").replace("_", "/"),
              f"{head}.{body}.{sig[:-1]}{alphabet[alphabet.index(sig[-1]) ^ 1]}"]  # an unused bit set
    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=len(others), window_clock=FakeClock())
    assert post(gw, token).status_code == 200
    for other in others:
        refused = post(gw, other)
        assert refused.status_code == 401, (other, refused.text)
        assert refused.json()["error"]["type"] == "authentication_error"
    assert zion.calls[ME] == 1
    assert post(gw, "jwt-made-up").status_code == 429  # each was a failed authentication
    assert post(gw, token).status_code == 200  # the user's own token still serves


def test_users_whose_usage_cannot_be_reported_are_refused(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    zion.add_user("jwt-nomail", "nomail-ext", "")  # Zion knows no email for this user
    gw = zion_gateway(gateway_factory, zion)
    for bearer in ("jwt-nomail", gw.key):  # a Zion user, and a Sentinel key whose user has no email
        for _ in range(2):  # first request and cached
            r = post(gw, bearer)
            assert r.status_code == 403, r.text
            error = r.json()["error"]
            assert (error["type"], error["code"]) == ("permission_error", "usage_unreportable")
            assert "email" in error["message"]
    # Key creation refuses such a user up front (what `sentinel keys create` prints).
    with pytest.raises(InvalidRequest, match="email"):
        asyncio.run(make_key(gw.settings.database_url, "nomail-ext"))


def test_a_zion_profile_whose_usage_cannot_be_recorded_is_refused_without_asking_zion_at_each_use(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, backend_url: str | None
) -> None:
    """A Zion profile whose id or email the ledger cannot hold (an id over 255 characters, a bidi
    override in it) is 403 `identity_unrecordable` — and that verdict was never remembered: each use of
    the token was another `/users/me` call, none of them a failed authentication for the throttle (the
    token is valid), so one user could make Sentinel call Zion at the rate of their requests. The
    refusal is remembered now, as a refused token's: the same 403 on both surfaces, one call to Zion."""
    zion.add_user("jwt-long", "x" * 300, "long@example.com")
    zion.add_user("jwt-bidi", "ecila\u202e", "bidi@example.com")
    gw = zion_gateway(gateway_factory, zion, redis_url=backend_url)
    message = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for bearer, why in (("jwt-long", "longer than 255"), ("jwt-bidi", "control or invisible")):
        before = zion.calls[ME]
        for _ in range(3):
            openai_style = post(gw, bearer)
            assert openai_style.status_code == 403, openai_style.text
            error = openai_style.json()["error"]
            assert (error["type"], error["code"]) == ("permission_error", "identity_unrecordable"), error
            assert why in error["message"], error
            anthropic_style = httpx.post(gw.url + "/v1/messages", json=message, headers={"x-api-key": bearer},
                                         timeout=30)
            assert anthropic_style.status_code == 403, anthropic_style.text
            assert anthropic_style.json()["error"]["type"] == "permission_error", anthropic_style.text
            assert why in anthropic_style.json()["error"]["message"], anthropic_style.text
        assert zion.calls[ME] == before + 1, zion.calls
    zion.add_user("jwt-fine", "fine-ext", "fine@example.com")
    assert post(gw, "jwt-fine").status_code == 200  # no failed authentication was counted against the address


def test_the_default_plan_throttles_zion_users_unless_configured_off(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    zion.add_user("jwt-judy", "judy-ext", "judy@example.com", requests=1000)
    gw = zion_gateway(gateway_factory, zion, default_plan="requests=3/1h")
    codes = [post(gw, "jwt-judy").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # Zion allows 1000; DEFAULT_PLAN allows 3
    denied = post(gw, "jwt-judy")
    assert denied.headers["x-ratelimit-limit"] == "3"
    zion.add_user("jwt-kim", "kim-ext", "kim@example.com", requests=4)
    codes = [post(gw, "jwt-kim").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # the stricter of the two wins, whichever it is
    off = zion_gateway(gateway_factory, zion, default_plan="requests=3/1h", zion_apply_default_plan=False)
    zion.add_user("jwt-lee", "lee-ext", "lee@example.com", requests=1000)
    assert [post(off, "jwt-lee").status_code for _ in range(5)] == [200] * 5


def test_once_zion_is_known_down_requests_do_not_wait_for_it(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.zion")
    zion.add_user("jwt-mia", "mia-ext", "mia@example.com")
    # The wait below can take ~100 requests (until the circuit lets a /users/me through): this test
    # is about not waiting, so the default 100-a-minute throttle is raised out of the way.
    gw = zion_gateway(gateway_factory, zion, jwt_cache_ttl_seconds=1, cache_ttl_seconds=1,
                      default_plan="requests=100000/60s")
    assert post(gw, "jwt-mia").status_code == 200
    mia = zion.user("mia@example.com")
    assert mia is not None and wait_for(lambda: mia.used["aiRequests"] == 1)  # its delivery is done
    zion.set_down(True)
    # Past the cache TTL the gateway asks Zion (and finds it down); the identity is served stale.
    deadline = time.monotonic() + 20
    while zion.attempts[ME] < 2 and time.monotonic() < deadline:
        assert post(gw, "jwt-mia").status_code == 200
        time.sleep(0.1)
    assert zion.attempts[ME] >= 2
    asked = zion.attempts[ME] + zion.attempts[LIMITS]
    stale_before = (metric(gw.url, "sentinel_cache_lookups_total", cache="identity", result="stale") or 0.0)
    n = 20
    assert [post(gw, "jwt-mia").status_code for _ in range(n)] == [200] * n
    # Without a breaker each of them would try Zion 3 times for the identity and 3 for the limits.
    assert zion.attempts[ME] + zion.attempts[LIMITS] - asked < n
    assert (metric(gw.url, "sentinel_cache_lookups_total", cache="identity", result="stale") or 0.0) - stale_before >= n
    assert "Zion circuit open" in caplog.text


def test_a_failing_usage_endpoint_does_not_stop_zion_from_validating_users(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """Identity, limits and usage delivery shared one circuit breaker: while Zion's batch-increment
    endpoint failed (its own outage, or a batch it answers 500 to, retried under its key for as
    long), each delivery attempt opened the breaker for 5 s, and every user not cached meanwhile got
    503 though `/users/me` and the limits answered. Delivery has a breaker of its own."""
    zion.add_user("jwt-rae", "rae-ext", "rae@example.com")
    zion.add_user("jwt-sid", "sid-ext", "sid@example.com")
    zion.fail_batches(500)
    gw = zion_gateway(gateway_factory, zion)
    assert post(gw, "jwt-rae").status_code == 200  # her record waits; its deliveries fail
    assert wait_for(lambda: zion.attempts[BATCH] >= 3)  # three outage answers in a row
    assert wait_for(lambda: (metric(gw.url, "sentinel_usage_deliveries_total", result="failure") or 0) >= 1)
    answer = post(gw, "jwt-sid")  # nothing cached for him: Zion is asked, and answers
    assert answer.status_code == 200, answer.text
    zion.fail_batches(None)
    rae = zion.user("rae@example.com")
    assert rae is not None and wait_for(lambda: rae.used["aiRequests"] == 1, timeout=40)


# --- undecodable cache entries are misses, never 500s (a real Redis) --------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff\xfe not json at all", b'{"id": "usr_1", "email": "x@example.com", "externalId": null}', b"[]",
     b'{"v":null,"fresh_until":'],
    ids=["bytes", "original-format", "wrong-shape", "cut-refusal"],
)
def test_undecodable_cache_entries_are_misses(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, redis_url: str, garbage: bytes
) -> None:
    import redis

    token, conversation = "jwt-nora", "conv-nora"
    zion.add_user(token, "nora-ext", "nora@example.com")
    keys = {
        "identity": "sentinel:profile:" + hashlib.sha256(token.encode()).hexdigest(),
        "plan": "sentinel:limits:nora-ext",
        "session": SessionStore.key("nora-ext", conversation),
        "tiers": "sentinel:tiers:config",
    }
    r = redis.Redis.from_url(redis_url)
    for key in keys.values():
        r.set(key, garbage)
    gw = zion_gateway(gateway_factory, zion, redis_url=redis_url)
    body = {"tier": "simple", "conversation_id": conversation, "messages": [{"role": "user", "content": "hi"}]}

    def native() -> httpx.Response:
        return httpx.post(gw.url + "/native/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)

    first = native()
    assert first.status_code == 200, first.text
    for cache in keys:
        assert (metric(gw.url, "sentinel_cache_lookups_total", cache=cache, result="undecodable") or 0.0) >= 1, cache
    # Each entry was replaced by a good one: the next request reads them all without Zion.
    stored = {name: orjson.loads(r.get(key) or b"null") for name, key in keys.items()}
    assert stored["identity"]["v"]["external_id"] == "nora-ext"
    assert stored["plan"]["v"]["limits"]
    assert stored["session"]["external_id"] == "nora-ext"
    assert stored["session"]["model"] == first.headers["x-sentinel-model"]
    assert stored["tiers"]["tiers"]["simple"]
    def lookups() -> int:  # identity, limits and tier config: not usage delivery, which runs on its own
        return sum(n for route, n in zion.calls.items() if "usage" not in route)

    calls = lookups()
    second = native()
    assert second.status_code == 200 and second.headers["x-sentinel-model"] == first.headers["x-sentinel-model"]
    assert lookups() == calls
    r.close()


def test_concurrent_made_up_tokens_reach_zion_no_more_often_than_the_throttle_allows(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """The throttle was checked before the lookup and counted after it: 20 made-up tokens sent at
    once from one address all passed the check while its count was 0, 20 Zion calls a minute
    instead of 3. A client has at most `limit` minus its failures of lookups in flight."""
    from concurrent.futures import ThreadPoolExecutor

    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=3, window_clock=FakeClock())
    zion.set_down(True, "hang")
    with ThreadPoolExecutor(20) as pool:
        answers = [pool.submit(post, gw, f"made-up-{i}") for i in range(20)]
        assert wait_for(lambda: zion.attempts[ME] >= 3)
        time.sleep(0.5)  # the other 17 are in by now (waiting their turn, or, before, at Zion)
        zion.set_down(False)
        codes = sorted(a.result().status_code for a in answers)
    assert zion.attempts[ME] == 3, zion.attempts[ME]
    assert codes == [401] * 3 + [429] * 17, codes


def test_concurrent_requests_with_one_new_token_make_one_zion_call(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """Each request with a token not in the identity cache called /users/me: at every cache expiry
    a user's N concurrent requests made N Zion calls. Requests that arrive while the token's lookup
    runs wait for its answer."""
    from concurrent.futures import ThreadPoolExecutor

    zion.add_user("jwt-erin", "erin-ext", "erin@example.com")
    gw = zion_gateway(gateway_factory, zion)

    def misses() -> float:
        return metric(gw.url, "sentinel_cache_lookups_total", cache="identity", result="miss") or 0

    zion.set_down(True, "hang")
    with ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(post, gw, "jwt-erin") for _ in range(6)]
        # A miss is counted in the loop turn its request starts or joins the token's lookup.
        assert wait_for(lambda: misses() == 6 and zion.attempts[ME] >= 1)
        zion.set_down(False)
        codes = [a.result().status_code for a in answers]
    assert codes == [200] * 6, codes
    assert zion.attempts[ME] == 1, zion.attempts[ME]


def test_a_zion_answering_429_is_not_called_for_every_made_up_token(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """A 429 counted as Zion being up: every made-up token (none of them counted by the throttle,
    each a 503) was one more call to a Zion asking to be called less. It opens the circuit now."""
    gw = zion_gateway(gateway_factory, zion)
    zion.fail_next(20, status=429)
    codes = [post(gw, f"made-up-{i}").status_code for i in range(10)]
    assert codes == [503] * 10, codes
    assert zion.attempts[ME] <= 3, zion.attempts[ME]  # the circuit's threshold; the rest fail at once


@pytest.mark.parametrize("limits", [False, 0, "", {}, [{"aiRequests": {"limit": 1, "used": False}}]])
def test_limits_of_a_wrong_type_are_an_outage_not_no_limits(
    gateway_factory: Callable[..., Gateway], limits: object,
) -> None:
    """Zion's `limits` must be a list (null: none), a `used` figure a number (null: none). A falsy
    value of another type was read as "no limits" (the user's requests were served with none of
    Zion's limits) or as nothing used."""
    from tests.governance.test_zion import ShapedZion

    with serving(ShapedZion(limits=limits, batch={"processed": 1, "failed": 0}).app) as shaped:
        gw = gateway_factory(governance="zion", zion_api_url=shaped.url, zion_api_key="k" * 20,
                             zion_apply_default_plan=False)
        r = post(gw, "any-token")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "service_unavailable"


@pytest.mark.parametrize("external_id", [["carol-ext"], {"id": "carol-ext"}, True, 0])
def test_a_profile_whose_external_id_cannot_be_read_is_an_outage_not_zions_id(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, external_id: object,
) -> None:
    """Zion's `externalId` must be a string or a number (null or "": the profile's `id` is the key).
    One of another type was read as none: the user was keyed by Zion's `id`, its limits asked for by
    that id (unknown to Zion: the default plan, Zion's 1 request lifted) and its objects, sessions
    and counters kept apart from its own."""
    zion.add_user("jwt-carol", external_id, "carol@example.com", user_id="usr_carol", requests=1)  # type: ignore[arg-type]
    gw = zion_gateway(gateway_factory, zion, zion_apply_default_plan=False)
    for _ in range(2):
        r = post(gw, "jwt-carol")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "governance_unavailable"
    assert zion.calls[LIMITS] == 0  # no limits asked for under Zion's id


def test_no_secret_of_the_configuration_is_sent_to_zion_as_a_users_token(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """Every secret Sentinel is configured with is refused as a user credential before any identity
    source is asked — the metrics token, the Zion service key, the provider keys, the end-user
    secret, not only the admin and docs keys: each was sent to Zion's `/users/me` as a
    bearer token (into Zion's logs): a scrape configured against the wrong URL, a key pasted in the
    wrong field. The keys operators sign in with are refused saying so; the others as any wrong token
    is (a distinct answer would be an oracle for guessing, say, END_USER_SECRET)."""
    operator = {"metrics_token": "metrics-token-0123456789abcdef", "admin_key": "admin-key-0123456789abcdef",
                "docs_api_key": "docs-key-0123456789abcdef"}
    others = {"end_user_secret": "end-user-secret-0123456789abcdef"}  # (with JWT_SECRET, Zion sees only JWTs)
    gw = zion_gateway(gateway_factory, zion, **operator, **others)
    settings = gw.settings
    assert settings.openai_api_key is not None and settings.anthropic_api_key is not None
    secrets = [*others.values(), zion.api_key, settings.openai_api_key.get_secret_value(),
               settings.anthropic_api_key.get_secret_value()]
    for token in [*operator.values(), *secrets]:
        refused = post(gw, token)
        assert refused.status_code == 401, refused.text
        message = refused.json()["error"]["message"]
        if token in secrets:
            assert refused.json() == post(gw, "made-up-token-0123456789").json()  # the answer any wrong token gets
        else:
            assert "operator key" in message, refused.text
        anthropic = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": token}, timeout=30, json={
            "model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
        assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"
    assert zion.attempts[ME] == 1, zion.attempts  # only the made-up token reached Zion (then remembered as invalid)


def test_a_zion_token_the_client_put_in_the_path_is_never_logged(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Zion token has no shape the log redaction knows (a Sentinel key's prefix, a JWT's `eyJ`): one a
    client put in a forwarded path was refused (400 `credential_in_path`) or not found (404) — and
    written whole to the access log's path and the failure line's path and message. The caller's own
    credential is taken out of every line logged of its request."""
    token = "opaque-zion-token-" + "q7" * 12
    zion.add_user(token, "olga-ext", "olga@example.com")
    logging.getLogger("sentinel.access").setLevel(logging.INFO)  # as `sentinel serve` configures it
    try:
        gw = zion_gateway(gateway_factory, zion, passthrough="/v1/moderations/*", access_log=True)
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO, logger="sentinel.request")
    headers = {"Authorization": f"Bearer {token}"}
    refused = httpx.post(gw.url + f"/v1/moderations/x/{token}", json={"input": "a"}, headers=headers, timeout=30)
    missing = httpx.get(gw.url + f"/v1/nowhere/{token}", headers=headers, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "credential_in_path"), refused.text
    assert missing.status_code == 404, missing.text
    gw.server.stop()  # the lifespan shutdown writes the last batch
    logged = capfd.readouterr().err
    access = [orjson.loads(line) for line in logged.splitlines() if '"logger":"sentinel.access"' in line]
    ids = {refused.headers["x-request-id"], missing.headers["x-request-id"]}
    assert ids <= {line["request_id"] for line in access}
    assert [line["path"] for line in access if line["request_id"] in ids] == [
        "/v1/moderations/x/***", "/v1/nowhere/***"]
    failed = [rec for rec in caplog.records if rec.getMessage() == "request failed"]
    assert len(failed) >= 2
    assert token not in logged
    assert not [rec for rec in caplog.records if token in str(rec.__dict__)]


def test_a_request_id_holding_the_callers_zion_token_is_replaced_not_logged_or_sent_upstream(
    gateway_factory: Callable[..., Gateway], zion: FakeZion, capfd: pytest.CaptureFixture[str],
) -> None:
    """A client's X-Request-Id goes in every log line of its request, in the ledger and to the provider
    as `X-Client-Request-Id`; one holding a Sentinel key or a JWT is replaced, but a Zion token has
    no shape the redaction knows: the caller's own token sent as its request id (or in it) was kept
    as it was — logged and sent to the provider. It is replaced by a new id."""
    token = "opaque-zion-token-" + "r8" * 12
    zion.add_user(token, "rita-ext", "rita@example.com")
    logging.getLogger("sentinel.access").setLevel(logging.INFO)  # as `sentinel serve` configures it
    try:
        gw = zion_gateway(gateway_factory, zion, access_log=True)
    finally:
        logging.getLogger("sentinel.access").setLevel(logging.NOTSET)
    mock = str(gw.settings.openai_api_url).removesuffix("/v1")
    answers, sent = [], []
    for request_id in (token, f"trace:{token}", "rita-trace.7"):
        answers.append(httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                                  headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id}))
        sent.append(httpx.get(mock + "/__mock/last_request", timeout=30).json())
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    ids = [a.headers["x-request-id"] for a in answers]
    assert ids[2] == "rita-trace.7"  # an ordinary id is kept
    for rid, upstream in zip(ids, sent, strict=True):
        assert token not in rid, rid
        assert dict(upstream["headers"])["x-client-request-id"] == rid  # the provider is told the id answered
    gw.server.stop()  # the lifespan shutdown writes the last access lines
    assert token not in capfd.readouterr().err


def test_a_sentinel_key_sent_behind_other_text_never_reaches_zion(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """A user's Sentinel key sent with something before it — a second `Bearer` (a client that adds the
    scheme to a value that already has it), `x-api-key: Bearer <key>` (ANTHROPIC_API_KEY set so),
    quotes kept from an env file — is not a key (it does not begin as one), so it went to Zion's
    `/users/me` as a user's bearer token, into Zion's logs. It is refused (401, saying why, counted)
    before any identity source is asked."""
    gw = zion_gateway(gateway_factory, zion)
    key = asyncio.run(make_key(gw.settings.database_url, "kim-ext", "kim@example.com"))
    assert post(gw, key).status_code == 200
    messages = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for sent in (f"Bearer {key}", f'"{key}"', f"'{key}'", f"bearer\t{key}"):
        refused = post(gw, sent)
        assert refused.status_code == 401, (sent, refused.text)
        assert refused.json()["error"]["type"] == "authentication_error"
        assert "before it" in refused.json()["error"]["message"]
        assert key not in refused.text
        anthropic = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": sent}, json=messages, timeout=30)
        assert anthropic.status_code == 401, (sent, anthropic.text)
        assert anthropic.json()["error"]["type"] == "authentication_error"
    assert zion.attempts[ME] == 0, zion.attempts
    assert not [seen for seen in zion.seen if key in str(seen.headers)]


def test_a_sentinel_key_with_its_prefix_in_other_case_never_reaches_zion(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """A user's key with its prefix written in other case (`Sk-sentinel-`, as a capitalising keyboard
    or form writes it; `SK-SENTINEL-` and the key upper-cased) does not begin as a key, so it went to
    Zion's `/users/me` as a bearer token — the key's body whole, into Zion's logs. It is refused (401,
    saying why, never repeating it, counted) before any identity source is asked."""
    gw = zion_gateway(gateway_factory, zion, auth_failures_per_minute=4, window_clock=FakeClock(time.time()))
    key = asyncio.run(make_key(gw.settings.database_url, "kim-ext", "kim@example.com"))
    body = key.removeprefix("sk-sentinel-")
    messages = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for sent in ("Sk-sentinel-" + body, "SK-SENTINEL-" + body):
        refused = post(gw, sent)
        assert refused.status_code == 401, (sent, refused.text)
        assert "other case" in refused.json()["error"]["message"] and body not in refused.text
        anthropic = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": sent}, json=messages, timeout=30)
        assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"
    assert zion.attempts[ME] == 0, zion.attempts
    assert not [seen for seen in zion.seen if body.lower() in str(seen.headers).lower()]
    assert post(gw, key.upper()).json()["error"]["code"] == "auth_rate_limited"  # each was a failed authentication


def test_a_zion_period_already_ended_is_read_again_soon_and_never_said_to_reset_in_the_past(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """Zion's reading of a period that has ended (it has not rolled it over yet) is enforced until it
    is read again — within ENDED_PERIOD_RECHECK_SECONDS, not CACHE_TTL_SECONDS — and the refusal says
    so: a Retry-After of that recheck and a reset ahead, never "Retry in 1s" with a reset gone by."""
    clock = FakeClock(1_700_000_000.0)  # 2023-11-14T22:13:20Z
    user = zion.add_user("jwt-pia", "pia-ext", "pia@example.com", requests=5, used_requests=5,
                         period_end="2023-11-01T00:00:00.000Z")
    gw = zion_gateway(gateway_factory, zion, window_clock=clock)
    denied = post(gw, "jwt-pia")
    assert denied.status_code == 429, denied.text
    assert denied.headers["retry-after"] == str(ENDED_PERIOD_RECHECK_SECONDS)
    assert int(denied.headers["x-ratelimit-reset"]) == clock() + ENDED_PERIOD_RECHECK_SECONDS
    assert f"Retry in {ENDED_PERIOD_RECHECK_SECONDS}s" in denied.json()["error"]["message"]
    reads = zion.calls[LIMITS]
    # Zion rolls the period over: the reading is asked for again once the recheck is due, not before.
    user.used["aiRequests"], user.period_end = 0, "2023-12-01T00:00:00.000Z"
    clock.advance(ENDED_PERIOD_RECHECK_SECONDS - 1)
    assert post(gw, "jwt-pia").status_code == 429
    assert zion.calls[LIMITS] == reads  # one user's requests do not keep Zion busy
    clock.advance(1)
    served = post(gw, "jwt-pia")
    assert served.status_code == 200, served.text
    assert zion.calls[LIMITS] == reads + 1
    assert int(served.headers["x-ratelimit-reset"]) == 1_701_388_800  # the new period's end


def test_a_zion_period_ending_in_year_9999_is_said_to_reset_no_more_than_a_year_ahead(
    gateway_factory: Callable[..., Gateway], zion: FakeZion
) -> None:
    """.NET's DateTime.MaxValue as a period end keeps the refusal, but Retry-After and the reset
    headers say at most MAX_WINDOW_SECONDS (a year) ahead: it said 251605528328 s (8,000 years)."""
    clock = FakeClock(1_700_000_000.0)
    zion.add_user("jwt-quinn", "quinn-ext", "quinn@example.com", requests=5, used_requests=5,
                  reset_period="NEVER", period_end="9999-12-31T23:59:59.999Z")
    gw = zion_gateway(gateway_factory, zion, window_clock=clock)
    denied = post(gw, "jwt-quinn")
    assert denied.status_code == 429, denied.text
    assert denied.headers["retry-after"] == str(MAX_WINDOW_SECONDS)
    assert int(denied.headers["x-ratelimit-reset"]) == clock() + MAX_WINDOW_SECONDS
    assert denied.json()["error"]["code"] == "quota_exceeded"
