"""`/debug/*` over HTTP: off by default (404 debug_disabled), authenticated and owner-scoped when on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.api.conftest import Gateway
from tests.routing.helpers import AN_HAIKU, AN_SONNET, OA_4O, OA_MINI, THREE, chat, entry, served, start
from tests.support.accounts import create_key
from tests.support.servers import free_port

DISABLED = {
    "error": {
        "message": "Debug endpoints are disabled. Set SENTINEL_DEBUG=true to enable.",
        "type": "not_found_error",
        "param": None,
        "code": "debug_disabled",
    }
}


def test_debug_endpoints_are_404_when_debug_is_off(gateway: Gateway) -> None:
    for path in ("/debug/health", "/debug/sessions/conv-1", "/debug/cache", "/debug/config"):
        for headers in ({}, {"Authorization": f"Bearer {gateway.key}"}):
            for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):  # a 405 told a route apart
                r = httpx.request(method, gateway.url + path, headers=headers)
                assert r.status_code == 404, (method, path, r.status_code)
                if method != "HEAD":
                    assert r.json() == DISABLED, (method, path, r.text)


def test_debug_endpoints_when_on(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    tiers = {**THREE, "moderate": [entry(("dead", "gpt-4o"))]}
    gw = start(gateway_factory, tmp_path, backend_url, tiers, {"dead": f"http://127.0.0.1:{free_port()}/v1"},
               debug=True, session_ttl_seconds=1000)
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, "bob"))
    assert httpx.get(gw.url + "/debug/health").status_code == 401
    assert httpx.get(gw.url + "/debug/sessions/conv-1").status_code == 401
    with gw.client() as http:
        candidates = http.get("/debug/health").json()["candidates"]
        rows = {(c["provider"], c["model"]): c for c in candidates}
        assert set(rows) == {OA_MINI, OA_4O, AN_HAIKU, AN_SONNET, ("dead", "gpt-4o")}
        assert rows[OA_4O]["tiers"] == ["simple", "complex"]
        assert all(c["available"] and c["failures"] == 0 and c["remaining_seconds"] == 0 for c in candidates)

        assert chat(http, "dead end", tier="moderate").status_code == 502
        dead = next(c for c in http.get("/debug/health").json()["candidates"] if c["provider"] == "dead")
        assert (dead["available"], dead["failures"], dead["backoff_seconds"]) == (False, 1, 30)
        assert 0 < dead["remaining_seconds"] <= 30

        tier, provider, model = served(chat(http, "hello", conv="conv-debug"))
        r = http.get("/debug/sessions/conv-debug")
        assert r.status_code == 200, r.text
        session = r.json()
        assert (session["conversation_id"], session["external_id"]) == ("conv-debug", "alice")
        assert (session["tier"], session["provider"], session["model"]) == (tier, provider, model)
        assert 0 < session["ttl_remaining_seconds"] <= 1000

        odd = "team/a?b#c%d"  # no path segment holds it: named in the query
        served(chat(http, "hello", conv=odd))
        r = http.get("/debug/session", params={"conversation_id": odd})
        assert r.status_code == 200 and r.json()["conversation_id"] == odd, r.text
        assert http.get("/debug/session").status_code == 400

        missing = http.get("/debug/sessions/conv-nobody")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
        unknown = http.get("/debug/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "endpoint_not_found"
        for path in ("/debug/health", "/debug/sessions/conv-debug"):  # another method: 405, as on any served path
            other = http.post(path)  # (it was a 404 on the sessions path: the catch-all took it)
            assert other.status_code == 405 and other.headers["allow"] == "GET", (path, other.text)
            assert other.json()["error"]["code"] == "method_not_allowed"
    with gw.client(bob_key) as bob:
        r = bob.get("/debug/sessions/conv-debug")  # bob has no conversation by alice's id
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        assert bob.get("/debug/session", params={"conversation_id": odd}).status_code == 404
        assert "alice" not in r.text and model not in r.text


def test_a_long_conversation_id_is_clipped_in_the_answer(gateway_factory: Callable[..., Gateway]) -> None:
    """The 404 quoted the whole conversation id of the path: like every path quoted in an error
    answer, it is cut to 256 characters."""
    gw = gateway_factory(debug=True)
    with gw.client() as http:
        r = http.get("/debug/sessions/" + "c" * 6000)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert "c" * 256 + "…" in r.json()["error"]["message"] and len(r.text) < 600, len(r.text)
