"""Locally verified JWTs (JWT_SECRET) as bearer tokens, over HTTP, with the built-in governance."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt

from tests.api.conftest import Gateway

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "jwt"}]}


def token(**claims: object) -> str:
    base = {"sub": "user-9", "externalId": "jwt-user", "email": "j@example.com", "aud": "sentinel",
            "exp": int(time.time()) + 600}
    base.update(claims)
    return jwt.encode(base, SECRET, algorithm="HS256")


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
    ):
        r = post(bad)
        assert r.status_code == 401, (bad, r.text)
    assert post(gw.key).status_code == 200  # Sentinel API keys still work
