"""Locally verified JWTs (JWT_SECRET) as bearer tokens, over HTTP, with the built-in governance."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from sentinel.governance.jwt import LEEWAY_SECONDS
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "jwt"}]}


def token(**claims: object) -> str:
    base = {"sub": "user-9", "externalId": "jwt-user", "email": "j@example.com", "aud": "sentinel",
            "exp": int(time.time()) + 600}
    base.update(claims)
    return jwt.encode(base, SECRET, algorithm="HS256")


def forged(header: dict[str, object]) -> str:
    """A token with this header, valid claims and a signature of nothing."""
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part({'sub': 'x', 'aud': 'sentinel', 'exp': int(time.time()) + 600})}.AAAA"


def test_local_jwt_verification(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel")

    def post(bearer: str) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    assert post(token()).status_code == 200
    none_alg = jwt.encode({"sub": "x", "aud": "sentinel", "exp": int(time.time()) + 600}, None, algorithm="none")
    for bad in (
        none_alg,
        jwt.encode({"sub": "x", "aud": "sentinel", "exp": int(time.time()) + 600}, "wrong-key-" * 4, algorithm="HS256"),
        token(aud="someone-else"),
        token(exp=int(time.time()) - 600),
        # unsigned, with an `exp` of 401 digits (no float holds it) or a NaN: a 401, never a 500
        jwt.encode({"sub": "x", "aud": "sentinel", "exp": 10**400}, "wrong-key-" * 4, algorithm="HS256"),
        jwt.encode({"sub": "x", "aud": "sentinel", "exp": -(10**400)}, "wrong-key-" * 4, algorithm="HS256"),
        jwt.encode({"sub": "x", "aud": "sentinel", "exp": float("nan")}, "wrong-key-" * 4, algorithm="HS256"),
        # an `alg` that is a list or an object (PyJWT does not check its type): a 401, never a 500
        forged({"alg": ["HS256"], "typ": "JWT"}),
        forged({"alg": {"HS256": 1}, "typ": "JWT"}),
        # a valid token's signature padded with `=` (PyJWT verifies it): not canonical base64url
        token() + "=",
    ):
        r = post(bad)
        assert r.status_code == 401, (bad, r.text)
    assert post(gw.key).status_code == 200  # Sentinel API keys still work
    # signed by the issuer with an `exp` no float holds: valid, and kept as "far away", not a 500
    assert post(token(exp=10**400)).status_code == 200


def test_a_cached_jwt_identity_never_outlives_exp_plus_the_leeway(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel")  # JWT_CACHE_TTL_SECONDS = 300
    short = token(exp=int(time.time() + 3) - LEEWAY_SECONDS)  # usable for about 3 more seconds

    def post() -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {short}"}, timeout=30)

    assert post().status_code == 200  # now cached
    deadline = time.monotonic() + 20
    answer = post()
    while answer.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = post()
    assert answer.status_code == 401, answer.text  # well within the cache TTL
    assert answer.json()["error"]["code"] == "token_expired"
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_jwt_past_exp_but_within_the_leeway_is_accepted(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel")
    lenient = token(exp=int(time.time()) - LEEWAY_SECONDS + 60)  # exp passed, the leeway has not
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {lenient}"},
                   timeout=30)
    assert r.status_code == 200, r.text


def test_a_jwt_not_yet_valid_is_accepted_once_its_nbf_comes(gateway_factory: Callable[..., Gateway]) -> None:
    """A validly signed token whose `nbf` was ahead of Sentinel's clock (beyond the leeway) was
    remembered as invalid for the refusal cache's 30 s, past the moment it became valid: it is
    refused only while it is not yet valid (and a token signed by no one is still remembered)."""
    clock = FakeClock(time.time())
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", window_clock=clock)
    early = token(nbf=int(clock.now) + LEEWAY_SECONDS + 60)

    def post(bearer: str) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    refused = post(early)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["message"] == "The token is not yet valid (nbf)"
    assert post(token(iat=int(clock.now) + LEEWAY_SECONDS + 60)).status_code == 401  # `iat` ahead too
    clock.advance(60)  # its `nbf` less the leeway: valid now, well within the 30 s refusal cache
    assert post(early).status_code == 200
    assert post(token(iat=int(clock.now) + LEEWAY_SECONDS)).status_code == 200


def test_an_identity_whose_usage_cannot_be_recorded_is_refused_before_anything_is_served(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A validly signed token may carry any claims. A user id over 255 characters or an email over
    320 (the ledger's columns) or a NUL made the record of a served request unstorable: the client
    got a 500 after the provider had answered, and the records written with it were lost too."""
    from tests.support.attack import ledger_rows, wait_for

    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", usage_flush_interval_seconds=0.1)

    def post(bearer: str) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    for claims in ({"email": "a" * 330 + "@example.com"}, {"externalId": "x" * 256}, {"externalId": "nul\x00id"}):
        r = post(token(**claims))
        assert r.status_code == 403, (claims, r.text)
        assert r.json()["error"]["code"] == "identity_unrecordable"
    assert post(token()).status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    assert [row["external_id"] for row in ledger_rows(gw.settings.database_url)] == ["jwt-user"]


def test_a_tokens_claims_cannot_choose_its_plan_and_its_id_is_the_key_users(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A token's `plan` (or limits) claim is never read: its user's plan is the database's, found by
    the token's id — which is the id space API keys are issued in (`alice` here is the gateway's key
    user), so the key and the token are one user, one plan, one count."""
    import asyncio

    from tests.support.accounts import set_user_plan

    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", default_plan="requests=100/60s")
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=2/60s", plan="tight"))
    asyncio.run(set_user_plan(gw.settings.database_url, "bob", "requests=1000/60s", plan="generous"))
    claims: dict[str, object] = {"externalId": "alice", "plan": "generous", "limits": {"requests": 1000}}

    def post(bearer: str) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    assert post(gw.key).status_code == 200
    first = post(token(**claims))
    assert first.status_code == 200 and first.headers["x-ratelimit-limit"] == "2", first.headers
    refused = post(token(**claims, jti="another"))
    assert refused.status_code == 429, refused.text


def test_an_id_claim_that_is_not_text_never_falls_back_to_another_users_sub(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """`externalId` (or `external_id`) names the user; `sub` only stands in when neither is there. A
    number in it was skipped, and so was a list, an object or a boolean: the token was served as its
    `sub` — another id space, here `alice`, the gateway's key user — on her plan and her count. A
    number is its text now (as Zion's profile and a stand-in read it); any other type is a 401."""
    import asyncio

    from tests.support.accounts import set_user_plan
    from tests.support.attack import ledger_rows, wait_for

    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", default_plan="requests=100/60s",
                         usage_flush_interval_seconds=0.1)
    asyncio.run(set_user_plan(gw.settings.database_url, "alice", "requests=2/60s", plan="tight"))

    def post(bearer: str, path: str = "/v1/chat/completions", body: object = CHAT) -> httpx.Response:
        return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    numbered = post(token(sub="alice", externalId=42))
    assert numbered.status_code == 200, numbered.text
    assert numbered.headers["x-ratelimit-limit"] == "100", numbered.headers  # user "42": the default plan
    snake = post(token(sub="alice", externalId=None, external_id=7))
    assert snake.status_code == 200 and snake.headers["x-ratelimit-limit"] == "100", snake.headers
    message = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for unreadable in (["alice"], {"id": "alice"}, True, 0, float("nan")):
        for claim in ("externalId", "external_id"):
            bearer = token(sub="alice", **{"externalId": None, claim: unreadable})
            openai_style = post(bearer)
            assert openai_style.status_code == 401, (claim, unreadable, openai_style.text)
            assert openai_style.json()["error"]["code"] == "invalid_api_key", openai_style.text
            anthropic_style = post(bearer, "/v1/messages", message)
            assert anthropic_style.status_code == 401, (claim, unreadable, anthropic_style.text)
            assert anthropic_style.json()["error"]["type"] == "authentication_error", anthropic_style.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    assert sorted(row["external_id"] for row in ledger_rows(gw.settings.database_url)) == ["42", "7"]
    # alice's own count was not touched: her two requests are still hers
    assert post(gw.key).status_code == 200 and post(gw.key).status_code == 200


def test_a_plan_claim_no_store_can_hold_does_not_refuse_the_token(gateway_factory: Callable[..., Gateway]) -> None:
    """The `plan` claim is never read (above): one holding a lone surrogate (text no store takes) made
    the token's identity unstorable, a 403 `identity_unrecordable` for a valid token of a valid user."""
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel")
    answer = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                        headers={"Authorization": f"Bearer {token(plan=chr(0xD800))}"})
    assert answer.status_code == 200, answer.text


def test_a_jwts_exp_is_judged_on_the_gateways_clock_as_its_nbf_and_iat(gateway_factory: Callable[..., Gateway]) -> None:
    """`nbf` and `iat` were read on the gateway's (injected) Unix clock but `exp` on PyJWT's own
    `time.time()`, and the authenticator's expiry check before it on a third: a token was judged on
    two clocks at once. Every time claim is now read on the one clock, with the one leeway."""
    clock = FakeClock(time.time() - 86_400)  # the gateway's clock is a day behind the real one
    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", window_clock=clock)

    def post(bearer: str) -> httpx.Response:
        return httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

    # In the real past (an hour ago) but a day ahead of the gateway's clock: valid.
    assert post(token(exp=int(time.time()) - 3600)).status_code == 200
    # Ahead of the real clock but past the gateway's, beyond the leeway: expired.
    clock.advance(2 * 86_400)
    late = token(exp=int(clock.now) - LEEWAY_SECONDS - 60)
    jwt.decode(late, SECRET, algorithms=["HS256"], audience="sentinel")  # which PyJWT, on `time.time()`, takes as valid
    refused = post(late)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "token_expired"
    # Within the leeway on the gateway's clock: valid.
    assert post(token(exp=int(clock.now) - LEEWAY_SECONDS + 60)).status_code == 200


def test_validly_signed_tokens_with_claims_out_of_bounds_are_refused_in_each_surfaces_shape(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture,
) -> None:
    """Signed with the right secret, so only the claims and the header decide: a token not valid yet
    (`nbf`, `iat` in the future), an `exp` that is not a number (`"…"`, `true`: PyJWT takes a string
    of digits), an extension the verifier does not know marked critical, a token naming no user, and
    a token whose `exp` is given twice (the last is read, by the verification and the expiry read
    before it alike: past, it is `token_expired`). Each is a 401 in OpenAI's shape on `/v1` and
    Anthropic's on `/v1/messages`, nothing reaches the provider, and no token is in any log line."""
    import logging

    from tests.support.attack import ledger_rows

    gw = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel")
    later = int(time.time()) + 3600

    def signed(claims: dict[str, object], header: dict[str, object] | None = None) -> str:
        return jwt.encode(claims, SECRET, algorithm="HS256", headers=header)

    def raw(payload: bytes) -> str:  # HS256 over a payload written by hand (a key given twice)
        import hashlib
        import hmac

        def part(value: bytes) -> str:
            return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

        signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(payload)
        mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + part(mac)

    base = {"sub": "user-9", "externalId": "jwt-user", "aud": "sentinel", "exp": later}
    expired_last = b'{"sub":"u","aud":"sentinel","exp":%d,"exp":%d}' % (later, int(time.time()) - 3600)
    refused = {
        "nbf in the future": signed({**base, "nbf": later}),
        "iat in the future": signed({**base, "iat": later}),
        "exp a string": signed({**base, "exp": str(later)}),
        "exp true": signed({**base, "exp": True}),
        "unknown critical extension": signed(base, {"crit": ["x-sentinel"], "x-sentinel": 1}),
        "no user named": signed({"aud": "sentinel", "exp": later}),
        "a user id that is not text": signed({"sub": 42, "externalId": ["a"], "aud": "sentinel", "exp": later}),
        "exp given twice, the last past": raw(expired_last),
    }
    caplog.set_level(logging.DEBUG)
    message = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for why, bearer in refused.items():
        openai_style = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                                  headers={"Authorization": f"Bearer {bearer}"})
        assert openai_style.status_code == 401, (why, openai_style.text)
        assert openai_style.json()["error"]["type"] == "authentication_error", (why, openai_style.text)
        anthropic_style = httpx.post(gw.url + "/v1/messages", json=message, timeout=30, headers={"x-api-key": bearer})
        assert anthropic_style.status_code == 401, (why, anthropic_style.text)
        assert anthropic_style.json()["type"] == "error", (why, anthropic_style.text)
        assert anthropic_style.json()["error"]["type"] == "authentication_error", (why, anthropic_style.text)
    last = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                      headers={"Authorization": f"Bearer {refused['exp given twice, the last past']}"})
    assert last.json()["error"]["code"] == "token_expired", last.text
    assert ledger_rows(gw.settings.database_url) == []  # nothing was served
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert "request failed" in logged  # the refusals were logged: what is looked through is there
    assert not any(bearer in logged or bearer.split(".")[2] in logged for bearer in refused.values())
    # The same claims in bounds are served: the refusals above are the claims'.
    assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                      headers={"Authorization": f"Bearer {signed(base)}"}).status_code == 200


def test_a_rotated_jwt_secret_ends_the_old_secrets_tokens_cached_by_earlier_processes(
    gateway_factory: Callable[..., Gateway], redis_url: str,
) -> None:
    """JWT_SECRET rotated (it leaked) and Sentinel restarted on the same Redis: a token signed with the
    old secret (a forgery, now) whose identity a process of the old configuration cached was served
    from that cache for JWT_CACHE_TTL_SECONDS (300 s) after the restart. A process now verifies a
    cached JWT itself once before serving it: the old secret's tokens are 401 at once, the new
    secret's work, and the process on the old configuration goes on with its own."""
    rotated = "a-rotated-secret-that-is-long-enough-for-hs256"
    before = gateway_factory(jwt_secret=SECRET, jwt_audience="sentinel", redis_url=redis_url)
    after = gateway_factory(jwt_secret=rotated, jwt_audience="sentinel", redis_url=redis_url,
                            database_url=before.settings.database_url)
    old = token()
    with before.client(old) as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # cached, in Redis
    with after.client(old) as http:
        first = http.post("/v1/chat/completions", json=CHAT)
        assert first.status_code == 401, first.text
        assert first.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401
    new = jwt.encode(jwt.decode(old, SECRET, algorithms=["HS256"], audience="sentinel"), rotated, algorithm="HS256")
    with after.client(new) as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    with before.client(new) as http:  # cached by the new one, never served by the old one's secret
        assert http.get("/v1/models").status_code == 401
