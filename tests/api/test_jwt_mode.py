"""Locally verified JWTs (JWT_SECRET) as bearer tokens, over HTTP, with the built-in governance."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import httpx
import jwt

from sentinel.governance.jwt import LEEWAY_SECONDS
from tests.api.conftest import Gateway

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
