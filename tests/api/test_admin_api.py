"""The admin API over HTTP: off without SENTINEL_ADMIN_KEY, its credentials apart from users', the
session cookie and its CSRF token, the sign-in throttle, the OpenAPI document, an operator's flow."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from sentinel.api.admin_auth import AdminGate
from sentinel.api.throttle import FailedAuthThrottle
from sentinel.domain.numbers import MAX_INT64
from sentinel.errors import StoreUnavailable
from sentinel.store.memory import MemoryStore
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, sqlite_file
from tests.support.clock import FakeClock
from tests.support.waiting import wait_for

ADMIN_KEY = "admin-key-for-tests-0123"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(admin_key=ADMIN_KEY, auth_failures_per_minute=5, window_clock=FakeClock())


def signed_in(gw: Gateway) -> tuple[httpx.Client, str]:
    """A client holding the console's session cookie, and the page's CSRF token."""
    client = httpx.Client(base_url=gw.url, timeout=30)
    answer = client.post("/admin/signin", data={"key": ADMIN_KEY})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
    page = client.get("/admin/users")
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert token is not None
    return client, token.group(1)


ADMIN_PATHS = ["/admin", "/admin/", "/admin/signin", "/admin/users/alice", "/admin/api/users", "/admin/api/openapi.json",
               "/admin/assets/console.css", "/admin/anything/else"]


def test_without_the_admin_key_every_admin_path_is_404(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for path in ADMIN_PATHS:
            for method in ("GET", "POST"):
                answer = client.request(method, path, headers={"Authorization": f"Bearer {gateway.key}"})
                assert answer.status_code == 404, (method, path)
                assert answer.json()["error"]["code"] == "endpoint_not_found"


def test_admin_routes_want_the_admin_key_and_refuse_user_keys(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url) as client:
        assert client.get("/admin/api/users").status_code == 401
        refused = client.get("/admin/api/users", headers={"Authorization": f"Bearer {gw.key}"})  # a user's key
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "admin_auth_required"
        assert client.get("/admin/api/users", headers={"Authorization": "Basic abc"}).status_code == 401
        assert client.get("/admin", follow_redirects=False).headers["location"] == "/admin/signin"
    with gw.admin() as client:
        assert client.get("/admin/api/users").status_code == 200


def test_the_admin_key_is_not_accepted_on_user_routes(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
        # Refused before any identity source is asked (in Zion mode it was sent to Zion's /users/me).
        assert refused.status_code == 401 and "operator key" in refused.json()["error"]["message"], refused.text
        assert client.get("/v1/models").status_code == 401
        assert client.post("/native/v1/chat/completions",
                           json={"tier": "simple", "messages": [{"role": "user", "content": "x"}]}).status_code == 401
    signed, _ = signed_in(gw)
    try:  # nor the console's session cookie
        assert signed.post("/v1/chat/completions", json=CHAT).status_code == 401
    finally:
        signed.close()


def test_session_cookie_attributes_and_csrf_on_changes(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url) as client:
        answer = client.post("/admin/signin", data={"key": ADMIN_KEY})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("sentinel_admin=v1.") and ADMIN_KEY not in cookie
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain http here; https answers add Secure (see the gate test)
    client, csrf = signed_in(gw)
    try:
        assert client.get("/admin/api/plans").status_code == 200  # reading needs no token
        body = {"limits": [{"metric": "requests", "limit": 5, "window": "1m"}]}
        refused = client.put("/admin/api/plans/team", json=body)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        assert client.put("/admin/api/plans/team", json=body, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        assert client.put("/admin/api/plans/team", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
        # Console forms: the same token as a form field.
        assert client.post("/admin/plans/team/delete", data={"confirm": "1"}).status_code == 403
        assert client.post("/admin/plans/team/delete", data={"csrf": csrf}).status_code == 303
        signout = client.post("/admin/signout", data={"csrf": csrf})
        assert signout.status_code == 303 and "Max-Age=0" in signout.headers["set-cookie"]
    finally:
        client.close()


def test_signing_out_ends_the_session_not_just_the_cookie(
    gateway_factory: Callable[..., Gateway], backend_url: str | None,
) -> None:
    """Signing out only cleared the cookie: a copy of it (a proxy's log, a shared machine's cookie
    jar) stayed a working console session for up to 8 hours. Now the session itself ends, on every
    process sharing the store; other sessions go on."""
    gw = gateway_factory(admin_key=ADMIN_KEY, redis_url=backend_url)
    client, csrf = signed_in(gw)
    other, _ = signed_in(gw)
    try:
        copied = {"Cookie": f"sentinel_admin={client.cookies['sentinel_admin']}"}
        with httpx.Client(base_url=gw.url, timeout=30) as thief:
            assert thief.get("/admin/users", headers=copied).status_code == 200
            signout = client.post("/admin/signout", data={"csrf": csrf})
            assert signout.status_code == 303 and "Max-Age=0" in signout.headers["set-cookie"]
            page = thief.get("/admin/users", headers=copied)
            assert page.status_code == 303 and page.headers["location"] == "/admin/signin"
            api = thief.put("/admin/api/users/zoe/plan", json={"plan": None}, headers={**copied, "X-CSRF-Token": csrf})
            assert api.status_code == 401 and api.json()["error"]["code"] == "admin_auth_required"
            form = thief.post("/admin/users/zoe/plan", data={"plan": "", "csrf": csrf}, headers=copied)
            assert form.status_code == 401
        assert other.get("/admin/users").status_code == 200  # another sign-in is another session
    finally:
        client.close()
        other.close()
    with gw.admin() as api_client:  # nothing was changed by the refused requests
        assert api_client.get("/admin/api/user", params={"id": "zoe"}).status_code == 404


def test_a_sign_out_the_store_cannot_keep_says_so(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    client, csrf = signed_in(gw)
    try:
        async def unavailable(key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
            raise StoreUnavailable("store unavailable (set)")

        monkeypatch.setattr(gw.runtime.store, "set", unavailable)
        answer = client.post("/admin/signout", data={"csrf": csrf})
        monkeypatch.undo()
        assert answer.status_code == 503 and "could not be ended" in answer.text
        assert "Max-Age=0" in answer.headers["set-cookie"]  # this browser is signed out all the same
    finally:
        client.close()


def test_failed_sign_ins_are_rate_limited(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url) as client:
        for _ in range(5):
            wrong = client.post("/admin/signin", data={"key": "not-the-key"})
            assert wrong.status_code == 401 and "Wrong admin key" in wrong.text
        limited = client.post("/admin/signin", data={"key": ADMIN_KEY})
        assert limited.status_code == 429 and limited.headers["retry-after"]
        assert client.get("/admin/api/users", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 429


def test_a_sign_in_posted_by_another_site_is_refused_and_not_counted(gateway_factory: Callable[..., Gateway]) -> None:
    """Any page an operator opened could post the sign-in forms (a plain form post needs no CORS
    preflight) with wrong keys from their browser: five, and their address was throttled — 429 for
    the admin key too (and for users' keys from that address). The browser says where a post came
    from (`Sec-Fetch-Site`): from another site it is 403 and counts as nothing."""
    gw = gateway_factory(admin_key=ADMIN_KEY, docs_api_key="docs-key-for-tests-0123", auth_failures_per_minute=5,
                         window_clock=FakeClock())
    docs = "/native/docs/signin"
    with httpx.Client(base_url=gw.url) as browser:
        for site in ("cross-site", "same-site", "Cross-Site"):
            for path in ("/admin/signin", docs):
                for _ in range(5):
                    refused = browser.post(path, data={"key": "not-the-key"}, headers={"Sec-Fetch-Site": site})
                    assert refused.status_code == 403 and "own form" in refused.text, (path, refused.status_code)
                    assert "set-cookie" not in refused.headers
        assert browser.get("/admin/api/users", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        signed = browser.post("/admin/signin", data={"key": ADMIN_KEY}, headers={"Sec-Fetch-Site": "same-origin"})
        assert signed.status_code == 303 and signed.headers["set-cookie"].startswith("sentinel_admin=v1.")


def test_sessions_expire_and_die_with_the_key() -> None:
    clock = FakeClock()
    gate = AdminGate(ADMIN_KEY, throttle=FailedAuthThrottle(10, clock=clock), clock=clock, session_seconds=60)
    token = gate.mint()
    assert gate.session_valid(token)
    assert "Secure" in gate.set_cookie(token, secure=True)
    assert not gate.session_valid(token[:-1] + ("0" if token[-1] != "0" else "1"))  # tampered
    other = AdminGate(ADMIN_KEY + "-rotated", throttle=FailedAuthThrottle(10, clock=clock), clock=clock)
    assert not other.session_valid(token)
    assert gate.csrf_for(token) != other.csrf_for(token)
    clock.advance(61)
    assert not gate.session_valid(token)


async def test_a_signed_out_session_is_kept_until_it_would_have_expired() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    gate = AdminGate(ADMIN_KEY, throttle=FailedAuthThrottle(10, clock=clock), store=store, clock=clock,
                     session_seconds=60)
    token, other = gate.mint(), gate.mint()
    cookie = {"cookie": f"sentinel_admin={token}"}
    assert await gate.session_of(cookie) == token
    await gate.sign_out(token)
    assert await gate.session_of(cookie) is None
    assert await gate.session_of({"cookie": f"sentinel_admin={other}"}) == other
    ttl = await store.ttl("sentinel:console:signed-out:" + token.split(".")[2])
    assert ttl is not None and 0 < ttl <= 61  # no longer than the token lives

    async def unreadable(key: str) -> bytes | None:
        raise StoreUnavailable("store unavailable (get)")

    store.get = unreadable  # type: ignore[method-assign]
    # A store that cannot say does not refuse sessions: the console stays usable through an outage.
    assert await gate.session_of({"cookie": f"sentinel_admin={other}"}) == other


def test_the_openapi_document_is_valid_and_covers_every_route(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url) as anonymous:
        assert anonymous.get("/admin/api/openapi.json").status_code == 401
    with gw.admin() as client:
        document = client.get("/admin/api/openapi.json").json()
    validate(document)
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    app = gw.server.server.config.app
    served = {
        (route.path, method)
        for route in app._http.app.patterned
        for method in route.methods or ()
        if route.path.startswith("/admin/api") and method != "HEAD"
    }
    served |= {(path, method) for path, methods in app._http.app.exact.items() if path.startswith("/admin/api")
               for method in methods if method != "HEAD"}
    assert served == documented


def test_an_operator_flow_through_the_api(gw: Gateway) -> None:
    with gw.admin() as client:
        bad = client.put("/admin/api/plans/team", json={"limits": [{"metric": "requests", "limit": "x", "window": "1m"}]})
        assert bad.status_code == 400 and bad.json()["error"]["details"]["fields"] == {"limits.0.limit": "a whole number from 0 to 1,000,000,000,000,000"}
        plan = client.put("/admin/api/plans/team", json={"create": True, "limits": [
            {"metric": "requests", "limit": 2, "window": "1h"}, {"metric": "output_tokens", "limit": 100000, "window": "1d"}]})
        assert plan.status_code == 200 and plan.json()["spec"] == "output_tokens=100000/1d,requests=2/1h"
        assert client.put("/admin/api/users/dave/plan", json={"plan": "team"}).json() == {"external_id": "dave", "plan": "team"}
        created = client.post("/admin/api/users/dave/keys", json={"name": "ci"})
        assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
        key, key_id = created.json()["key"], created.json()["id"]
        user = gw.client(key)
        with user:
            assert [user.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)] == [200, 200, 429]
            assert wait_for(lambda: len(client.get("/admin/api/users/dave").json()["recent_requests"]) == 2)
            view = client.get("/admin/api/users/dave").json()
            assert view["user"]["plan"] == "team" and view["keys"][0]["id"] == key_id
            requests = next(lim for lim in view["quota"]["limits"] if lim["metric"] == "requests")
            assert (requests["used"], requests["limit"], requests["remaining"]) == (2, 2, 0)
            totals = client.get("/admin/api/usage/totals", params={"user": "dave", "since": "1h"}).json()
            assert totals["models"][0]["requests"] == 2
            csv = client.get("/admin/api/usage.csv", params={"since": "1h"})
            assert csv.headers["content-type"].startswith("text/csv") and "dave,gpt-4o-mini,2," in csv.text
            # The ledger is rolled up in the background (within about a second).
            assert wait_for(lambda: client.get("/admin/api/overview", params={"period": "1h"})
                            .json()["series"]["totals"]["requests"] >= 2)
            overview = client.get("/admin/api/overview", params={"period": "1h"}).json()
            assert overview["outbox_depth"] is not None

            def answers() -> dict[str, int]:
                return dict(client.get("/admin/api/overview", params={"period": "1h"}).json()["series"]["totals"])

            # Every answer is counted (the 429 left no usage record), written every few seconds.
            assert wait_for(lambda: answers()["rate_limited"] >= 1, timeout=20)
            assert answers()["answers"] >= 3 and answers()["refused_rate"] > 0
            assert {p["provider"] for p in overview["providers"]} >= {"openai"}
            assert {p["state"] for p in overview["providers"]} == {"healthy"}  # the breaker's state (routing.health.phase)
            assert client.post(f"/admin/api/keys/{key_id}/revoke").json()["active"] is False
            assert user.post("/v1/chat/completions", json=CHAT).status_code == 401  # at once, despite the cache
        again = client.post(f"/admin/api/keys/{key_id}/revoke")  # revoked already: its tombstone is sent again
        assert again.status_code == 200 and again.json()["active"] is False and again.json()["revoked_at"]
        assert client.post("/admin/api/keys/key_doesnotexist/revoke").status_code == 404
        audit = [(e["action"], e["target"]) for e in client.get("/admin/api/audit").json()["entries"]]
        assert audit == [("key.revoke", key_id), ("key.create", key_id), ("user.plan", "dave"), ("plan.create", "team")]
        series = client.get("/admin/api/usage", params={"since": "2h", "step": "15m"}).json()
        assert sum(p["requests"] for p in series["points"]) >= 2
        assert client.get("/admin/api/usage", params={"step": "7m"}).status_code == 400
        assert client.get("/admin/api/users/alice/sessions/none-such").status_code == 404
        assert client.get("/admin/api/users/nobody-at-all").status_code == 404
    with gw.client() as alice:
        started = alice.post("/native/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "conversation_id": "conv-ops"})
        assert started.status_code == 200, started.text
    with gw.admin() as client:  # a conversation id is looked up with its user: ids are each user's own
        found = client.get("/admin/api/users/alice/sessions/conv-ops")
        assert found.status_code == 200 and found.json()["external_id"] == "alice", found.text
        assert found.json()["ttl_remaining_seconds"] > 0
        assert client.get("/admin/api/users/dave/sessions/conv-ops").status_code == 404


def test_a_session_whose_id_no_path_segment_holds_is_found_by_query(gw: Gateway) -> None:
    """A native `conversation_id` may be any text (`team/a?b#c%d`): no `sessions/{id}` segment could
    name it (`/` splits it, the encoded forms are refused), so users could make sessions operators
    could not look at. `.../session?conversation_id=` names it, for a user in the path or by `?id=`."""
    odd = "team/a?b#c%d .."
    with gw.client() as alice:
        started = alice.post("/native/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "conversation_id": odd})
        assert started.status_code == 200, started.text
    with gw.admin() as client:
        for path, params in (("/admin/api/users/alice/session", {"conversation_id": odd}),
                             ("/admin/api/user/session", {"id": "alice", "conversation_id": odd})):
            found = client.get(path, params=params)
            assert found.status_code == 200, (path, found.text)
            assert (found.json()["external_id"], found.json()["conversation_id"]) == ("alice", odd)
        assert client.get("/admin/api/users/dave/session", params={"conversation_id": odd}).status_code == 404
        missing = client.get("/admin/api/users/alice/session")
        assert missing.status_code == 400 and "conversation_id" in missing.text


MALFORMED_SESSIONS = [
    b"sentinel_admin=v1.\xb2.aa.bb",  # one raw byte 0xB2: '\u00b2' (latin-1), a "digit" int() refuses
    "sentinel_admin=v1.\u0663\u0663.aa.bb".encode(),  # Arabic-Indic digits: int() takes them, the gate must not
    b"sentinel_admin=v1.99999999999999999999.aa.bb",
    b"sentinel_admin=v1.+1.aa.bb",
    b"sentinel_admin=v1. 1.aa.bb",
]


def test_a_malformed_session_cookie_is_no_session(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for cookie in MALFORMED_SESSIONS:
            api = client.get("/admin/api/users", headers={b"Cookie": cookie})
            assert api.status_code == 401 and api.json()["error"]["code"] == "admin_auth_required", cookie
            page = client.get("/admin/users", headers={b"Cookie": cookie})
            assert page.status_code == 303 and page.headers["location"] == "/admin/signin", cookie
    gate = AdminGate(ADMIN_KEY, throttle=FailedAuthThrottle(10))
    assert not any(gate.session_valid(c.decode("latin-1").partition("=")[2]) for c in MALFORMED_SESSIONS)


def test_bad_numbers_in_queries_are_validation_failures(gw: Gateway) -> None:
    huge = "9" * 26
    bad = [
        ("/admin/api/audit", {"before": "\u00b2"}, "before"),
        ("/admin/api/audit", {"before": huge}, "before"),
        ("/admin/api/audit", {"before": str(2**63)}, "before"),
        ("/admin/api/audit", {"before": "-1"}, "before"),
        ("/admin/api/audit", {"limit": "\u00b2"}, "limit"),
        ("/admin/api/audit", {"limit": "\u0661"}, "limit"),  # an Arabic-Indic 1
        ("/admin/api/users", {"limit": "\u00b2"}, "limit"),
        ("/admin/api/users", {"offset": "\u00b2"}, "offset"),
        ("/admin/api/users", {"offset": huge}, "offset"),
        ("/admin/api/usage", {"since": "99999999d"}, "since"),
        ("/admin/api/usage", {"until": "99999999999999999999w"}, "until"),
        ("/admin/api/usage/totals", {"user": "dave", "since": "99999999d"}, "since"),
        ("/admin/api/usage.csv", {"since": "99999999d"}, "since"),
    ]
    with gw.admin() as client:
        for path, params, field in bad:
            answer = client.get(path, params=params)
            assert answer.status_code == 400, (path, params, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "validation_failed" and field in error["details"]["fields"], (path, params)
        assert client.get("/admin/api/audit", params={"before": str(2**63 - 1), "limit": "500"}).status_code == 200
        assert client.get("/admin/api/audit", params={"before": "0"}).json() == {"entries": []}
        assert client.get("/admin/api/usage.csv", params={"since": "400d"}).status_code == 200  # not a plan window


def test_the_key_list_is_paged_as_the_user_list_is(gw: Gateway) -> None:
    """`GET /admin/api/keys` answered every key in one answer (read whole into memory), whatever
    `limit` said: it takes `limit` (default 50, at most 500) and `offset`, as `users` does, oldest
    first, and refuses a bad one as `users` does."""
    with gw.admin() as client:
        for user in ("bob", "carol", "bob", "dave"):
            assert client.post(f"/admin/api/users/{user}/keys", json={"name": "job"}).status_code == 201
        listed = client.get("/admin/api/keys").json()["keys"]
        every = [k["id"] for k in listed]
        assert len(every) == 5 and gw.key_id in every  # alice's and the four above
        pages = [client.get("/admin/api/keys", params={"limit": "2", "offset": str(n)}).json()["keys"] for n in (0, 2, 4, 6)]
        assert [[k["id"] for k in page] for page in pages] == [every[:2], every[2:4], every[4:], []]
        bobs = client.get("/admin/api/keys", params={"user": "bob", "limit": "1", "offset": "1"}).json()["keys"]
        assert [k["id"] for k in bobs] == [k["id"] for k in listed if k["user"] == "bob"][1:]
        for params, field in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "\u00b2"}, "limit"),
                              ({"offset": "-1"}, "offset"), ({"offset": "9" * 26}, "offset")):
            answer = client.get("/admin/api/keys", params=params)
            assert answer.status_code == 400, (params, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "validation_failed" and field in error["details"]["fields"], (params, error)
        assert len(client.get("/admin/api/keys", params={"limit": "500"}).json()["keys"]) == 5


def test_a_user_s_page_lists_the_newest_keys_and_says_there_are_more(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's page (`users/{id}`, the console's) listed every key of the user in one answer, however
    many a key-per-job deployment had issued: it lists the newest USER_PAGE_KEYS (two here), oldest
    first as before, and says there are more (`more_keys`)."""
    from sentinel.services import admin

    monkeypatch.setattr(admin, "USER_PAGE_KEYS", 2)
    with gw.admin() as client:
        assert client.get("/admin/api/users/alice").json()["more_keys"] is False
        for _ in range(3):
            assert client.post("/admin/api/users/alice/keys", json={"name": "job"}).status_code == 201
        every = [k["id"] for k in client.get("/admin/api/keys", params={"user": "alice"}).json()["keys"]]
        page = client.get("/admin/api/users/alice").json()
        assert [k["id"] for k in page["keys"]] == every[-2:] and page["more_keys"] is True
    console, _ = signed_in(gw)
    try:
        shown = console.get("/admin/users/alice")
    finally:
        console.close()
    assert shown.status_code == 200 and "Only the newest 2 keys are shown" in shown.text


def test_a_key_field_that_is_not_text_is_the_only_field_named(gw: Gateway) -> None:
    with gw.admin() as client:
        for body, fields in (
            ({"name": 5}, {"name": "text or null"}),
            ({"name": "laptop", "email": ["a@x"]}, {"email": "text or null"}),
            ({"name": True, "email": 1}, {"name": "text or null", "email": "text or null"}),
        ):
            refused = client.post("/admin/api/users/frank/keys", json=body)
            assert refused.status_code == 400, body
            error = refused.json()["error"]
            assert error["code"] == "validation_failed" and error["details"]["fields"] == fields, body
        assert client.get("/admin/api/keys", params={"user": "frank"}).json() == {"keys": []}  # nothing made


def test_plan_limits_and_windows_are_bounded(gw: Gateway) -> None:
    def put(limit: object, window: object) -> httpx.Response:
        return client.put("/admin/api/plans/team", json={"create": True, "limits": [
            {"metric": "requests", "limit": limit, "window": window}]})

    with gw.admin() as client:
        # (10**30 is read as a float, past 64 bits: it was "limit and window are text or whole numbers")
        for limit in ("\u00b2", 10**16, 10**30, 5.5, -1):
            refused = put(limit, "1h")
            assert refused.status_code == 400, limit
            assert refused.json()["error"]["details"]["fields"] == {
                "limits.0.limit": "a whole number from 0 to 1,000,000,000,000,000"}, limit
        for window in ("99999999999999d", "367d", "53w", 366 * 86400 + 1, 2**62, 10**30, 3600.5, "\u00b2h"):
            refused = put(5, window)
            assert refused.status_code == 400, window
            error = refused.json()["error"]
            assert error["code"] == "validation_failed" and "at most 366d" in error["details"]["fields"]["limits.0.window"]
        assert client.get("/admin/api/plans/team").status_code == 404  # nothing was saved
        saved = put(5, "366d")
        assert saved.status_code == 200 and saved.json()["spec"] == "requests=5/366d"
        assert client.put("/admin/api/users/erin/plan", json={"plan": "team"}).status_code == 200
        quota = client.get("/admin/api/users/erin/quota")
        assert quota.status_code == 200 and quota.json()["limits"][0]["window_seconds"] == 366 * 86400


def test_tier_prices_must_be_finite(gw: Gateway) -> None:
    with gw.admin() as client:
        for price in ("inf", "1e400", "nan", "-1"):
            refused = client.put("/admin/api/tiers/simple", json={"entries": [f"openai/gpt-4o-mini:1:{price}:0.6"]})
            assert refused.status_code == 400, price
            message = refused.json()["error"]["details"]["fields"]["entries.0"]
            assert message.startswith("input_price_per_million: "), message
        assert client.put("/admin/api/tiers/simple", json={"entries": ["openai/gpt-4o-mini:1:1e3:0.6"]}).status_code == 200


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_gw(request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway]) -> Gateway:
    if request.param == "postgres":
        return gateway_factory(admin_key=ADMIN_KEY, database_url=request.getfixturevalue("pg_url"))
    return gateway_factory(admin_key=ADMIN_KEY)


def test_operator_input_a_column_cannot_hold_is_a_400_that_changes_nothing(any_db_gw: Gateway) -> None:
    """A NUL in a plan, key name or email, a tier entry longer than its columns, a NUL in a search:
    500s on PostgreSQL, and on SQLite stored as given — an email with a NUL made every key of its
    user refused at authentication. Each is 400 now, and nothing changed."""
    gw = any_db_gw
    key = gw.key
    console = signed_in(gw)[0]
    with gw.admin() as http:
        before = http.get("/admin/api/tiers").json()
        answers = [
            http.put("/admin/api/users/alice/plan", json={"plan": "a\x00b"}),
            http.post("/admin/api/users/alice/keys", json={"name": "second", "email": "a\x00@example.com"}),
            http.post("/admin/api/users/bob/keys", json={"name": "a\x00b"}),
            http.put("/admin/api/tiers/simple", json={"entries": ["p" * 41 + "/m:1"]}),
            http.put("/admin/api/tiers/simple", json={"entries": ["openai/" + "m" * 201 + ":1"]}),
            http.put("/admin/api/tiers/simple", json={"entries": ["openai/a\x00b:1"]}),
            http.get("/admin/api/users", params={"q": "\x00"}),
            http.get("/admin/api/audit", params={"target": "a\rb"}),
            console.get("/admin/users", params={"q": "\x00"}),
            http.put("/admin/api/plans/%20pro", json={"limits": [{"metric": "requests", "limit": 5, "window": "1h"}]}),
        ]
        after = http.get("/admin/api/tiers").json()
        users = http.get("/admin/api/users").json()
    console.close()
    assert [r.status_code for r in answers] == [400] * len(answers), [(r.status_code, r.text[:120]) for r in answers]
    assert before == after
    assert "bob" not in str(users)
    with gw.client(key) as alice:  # alice's key still works: her email was not replaced
        assert alice.get("/v1/models").status_code == 200


def test_the_usage_csv_quotes_a_cell_holding_a_line_break(gateway_factory: Callable[..., Gateway]) -> None:
    """A bare CR in a cell (an external id an identity source vouched for) was not quoted: a
    spreadsheet reading CR as a row's end saw a cell starting with '=' on a row of its own. Such an
    identity is refused now (403 `identity_unrecordable`); a row an earlier version recorded is
    still exported quoted."""
    import sqlite3

    import jwt

    from tests.support.attack import sqlite_file

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    gw = gateway_factory(admin_key=ADMIN_KEY, jwt_secret=secret, usage_flush_interval_seconds=0.1)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    def post(external_id: str) -> httpx.Response:
        token = jwt.encode({"sub": "u", "externalId": external_id, "exp": int(time.time()) + 600}, secret,
                           algorithm="HS256")
        return httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"}, json=chat,
                          timeout=30)

    refused = post("alice\r=1+1")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "identity_unrecordable", refused.text
    assert post("alice").status_code == 200
    with gw.admin() as http:
        assert wait_for(lambda: "alice" in http.get("/admin/api/usage.csv").text)
        conn = sqlite3.connect(sqlite_file(gw.settings.database_url), timeout=10)
        with conn:
            conn.execute("UPDATE usage_ledger SET external_id = ? WHERE external_id = 'alice'", ("alice\r=1+1",))
        conn.close()
        csv_text = http.get("/admin/api/usage.csv").text
    assert '"alice\r=1+1",' in csv_text, csv_text  # quoted whole: the CR stays inside its cell


def _chat_as_each(gw: Gateway, secret: str, external_ids: list[str]) -> None:
    """One chat each, as each of `external_ids` (an HS256 JWT signed with `secret` vouching for it)."""
    import jwt

    for external_id in external_ids:
        token = jwt.encode({"sub": "u", "externalId": external_id, "exp": int(time.time()) + 600}, secret,
                           algorithm="HS256")
        answer = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"}, json=CHAT,
                            timeout=30)
        assert answer.status_code == 200, answer.text


def test_an_external_id_holding_another_separator_stays_one_cell_of_text(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An external id an identity source vouched for, `alice;=1+1`, was exported unquoted: Excel where
    the decimal mark is a comma splits a .csv on `;`, and read a second cell `=1+1`, a formula. It is
    quoted now; read with `;`, `,`, tab or `|` as the separator, no cell starts a formula."""
    import csv
    import io

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    gw = gateway_factory(admin_key=ADMIN_KEY, jwt_secret=secret, usage_flush_interval_seconds=0.1)
    ids = ["alice;=1+1", "bob;@SUM(1)", "carol|+1", "dave;-1"]
    _chat_as_each(gw, secret, ids)
    with gw.admin() as http:
        assert wait_for(lambda: all(i.split(";")[0] in http.get("/admin/api/usage.csv").text for i in ids))
        text = http.get("/admin/api/usage.csv").text
    for separator in (",", ";", "\t", "|"):
        cells = [cell for row in csv.reader(io.StringIO(text), delimiter=separator) for cell in row]
        formulas = [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
        assert formulas == [], (separator, formulas)
    exported = {row["external_id"]: row for row in csv.DictReader(io.StringIO(text))}
    assert set(exported) == set(ids)  # each id read back whole, its cell quoted, not prefixed
    assert all(row["model"] == "gpt-4o-mini" and row["requests"] == "1" for row in exported.values())


def test_a_formula_after_whitespace_or_in_a_fullwidth_sign_is_text_in_the_usage_csv(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Only a cell starting with an ASCII `=`, `+`, `-`, `@`, tab or CR was prefixed with `'`: an external id
    an identity source vouched for, ` =1+1` (LibreOffice and Excel skip the space) or `＝1+1` (a fullwidth
    sign, which a spreadsheet set for CJK input reads as `=`), and a model name a provider reported,
    `x; ＋1`, were exported as formulas. Read with `,`, `;`, tab or `|`, no cell starts one now, past
    whitespace and in any form Unicode folds to a sign (NFKC) or the minus sign — on the admin API's
    export and the console's download alike."""
    import csv
    import io
    import unicodedata

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    gw = gateway_factory(admin_key=ADMIN_KEY, jwt_secret=secret, usage_flush_interval_seconds=0.1)
    ids = [" =1+1", "\uff1d1+1", "  \uff0bSUM(1)", "\uff20A1", "\uff0d1", "\u22121", "\ufe661"]
    _chat_as_each(gw, secret, ids)
    models = {"\uff1d1+1": "x; =1+1", "\uff20A1": "x|\uff0b1", "\uff0d1": "\uff1dx"}  # as a provider may report
    with gw.admin() as http:
        assert wait_for(lambda: http.get("/admin/api/usage.csv").text.count("\r\n") == len(ids) + 1)
        conn = sqlite3.connect(sqlite_file(gw.settings.database_url), timeout=10)
        with conn:
            for external_id, model in models.items():
                conn.execute("UPDATE usage_ledger SET model = ? WHERE external_id = ?", (model, external_id))
        conn.close()
        exports = [http.get("/admin/api/usage.csv").text]
    console, _ = signed_in(gw)
    exports.append(console.get("/admin/export.csv").text)
    console.close()
    for text in exports:
        for separator in (",", ";", "\t", "|"):
            cells = [cell for row in csv.reader(io.StringIO(text), delimiter=separator) for cell in row]
            starts = [unicodedata.normalize("NFKC", cell.lstrip())[:1] for cell in cells]
            formulas = [c for c, s in zip(cells, starts, strict=True) if s in ("=", "+", "-", "@", "\u2212")]
            assert formulas == [], (separator, formulas)
        exported = {row["external_id"]: row["model"] for row in csv.DictReader(io.StringIO(text))}
        assert exported == {"'" + i: models.get(i, "gpt-4o-mini").replace("; ", ";' ").replace("|", "|'")
                            .replace("\uff1dx", "'\uff1dx") for i in ids}, exported


def test_every_admin_api_error_is_not_stored(gw: Gateway) -> None:
    """Only the admin API's successes carried `Cache-Control: no-store`: its refusals (a missing key,
    a bad input, an unknown user or route, a wrong method) could be kept by a cache along the way."""
    with gw.admin() as client:
        answers = [
            httpx.get(gw.url + "/admin/api/users"),  # no key: 401
            client.get("/admin/api/usage", params={"step": "1y"}),  # 400
            client.get("/admin/api/users/nobody-at-all"),  # 404
            client.get("/admin/api/nope"),  # no such route: 404
            client.post("/admin/api/users"),  # 405
            client.get("/admin/api//users"),  # not canonical: 400
        ]
        user_error = client.post("/v1/chat/completions", json=CHAT)  # the admin key is no user's: 401
    assert [a.status_code for a in answers] == [401, 400, 404, 404, 405, 400], [a.text for a in answers]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert user_error.status_code == 401 and "cache-control" not in user_error.headers


def test_every_console_error_is_not_stored(gw: Gateway) -> None:
    """The console's pages are `no-store`, its refusals in Sentinel's shape were not: a 404 is
    cacheable by default, so a cache along the way could keep "No plan 'gold'" (or a key's) for a
    signed-in operator after the plan was created."""
    console, csrf = signed_in(gw)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        answers = [
            console.get("/admin/plans/gold"),  # no such plan: 404
            console.post("/admin/keys/key_nope/revoke", content=f"csrf={csrf}", headers=form),  # 404
            console.post("/admin/plans", content=f"csrf={csrf}", headers={"Content-Type": "text/plain"}),  # 400
            console.get("/admin/users?q=%FF"),  # not UTF-8: 400
            console.get("/admin/nope"),  # no such page: 404
            console.get("/admin/assets/nope.js"),  # 404
            console.get("/admin//users"),  # not canonical: 400
            console.put("/admin/plans"),  # 405
        ]
    finally:
        console.close()
    assert [a.status_code for a in answers] == [404, 404, 400, 400, 404, 404, 400, 405], [a.text for a in answers]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    with gw.client() as user:  # a user's surface is not the console's
        assert "cache-control" not in user.get("/v1/nope").headers


def on_a_new_plan(http: httpx.Client) -> tuple[str, str, str, dict[str, Any]]:
    """A new plan of 1,000 requests a minute and a new user on it with a key: (plan, user, key, the
    plan's limits as sent). Names are new each time: the PostgreSQL database is the session's."""
    suffix = uuid.uuid4().hex[:8]
    plan, user = f"gold-{suffix}", f"alice-{suffix}"
    limits: dict[str, Any] = {"create": True, "limits": [{"metric": "requests", "limit": 1000, "window": "1m"}]}
    assert http.put(f"/admin/api/plans/{plan}", json=limits).status_code == 200
    assert http.put(f"/admin/api/users/{user}/plan", json={"plan": plan}).status_code == 200
    key = http.post(f"/admin/api/users/{user}/keys", json={"name": "laptop"}).json()["key"]
    return plan, user, key, limits


def test_a_deleted_plans_users_get_the_default_plan_not_a_later_plan_of_its_name(any_db_gw: Gateway) -> None:
    """Deleting a plan left its users on its name: shown as assigned to it, and put on any plan later
    created under that name — here one of 999,999 requests a minute (the default allows 100)."""
    gw = any_db_gw
    with gw.admin() as http:
        plan, user, key, limits = on_a_new_plan(http)
        with gw.client(key) as alice:
            assert alice.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-limit"] == "1000"
            assert http.delete(f"/admin/api/plans/{plan}").json() == {"deleted": plan}
            assert alice.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-limit"] == "100"
            view = http.get(f"/admin/api/users/{user}").json()
            assert (view["user"]["plan"], view["plan_origin"]) == (None, "default")
            limits["limits"][0]["limit"] = 999_999
            assert http.put(f"/admin/api/plans/{plan}", json=limits).status_code == 200
            assert alice.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-limit"] == "100"
        listed = {p["name"]: p["users"] for p in http.get("/admin/api/plans").json()["plans"]}
        assert listed[plan] == 0
        assert http.get(f"/admin/api/users/{user}").json()["plan_origin"] == "default"
        deleted = http.get("/admin/api/audit", params={"target": plan}).json()["entries"][1]
        assert (deleted["action"], deleted["details"]) == ("plan.delete", {"from": "requests=1000/1m", "users": 1})


@pytest.mark.postgres
def test_a_plan_deleted_on_one_replica_is_off_the_others_at_once(
    gateway_factory: Callable[..., Gateway], pg_url: str, redis_url: str
) -> None:
    """Two replicas share PostgreSQL and Redis: a delete through one drops the plan its users had
    cached in Redis, so the other enforces the default plan within its one-second local copy."""
    one = gateway_factory(admin_key=ADMIN_KEY, database_url=pg_url, redis_url=redis_url)
    other = gateway_factory(admin_key=ADMIN_KEY, database_url=pg_url, redis_url=redis_url)
    with one.admin() as http:
        plan, user, key, limits = on_a_new_plan(http)
        with other.client(key) as alice:

            def limit() -> str:
                return str(alice.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-limit"])

            assert limit() == "1000"  # cached by the other replica
            assert http.delete(f"/admin/api/plans/{plan}").status_code == 200
            limits["limits"][0]["limit"] = 999_999
            assert http.put(f"/admin/api/plans/{plan}", json=limits).status_code == 200
            later = time.time() + 1.1  # the other replica's local copy (one second) ran out
            other.runtime.relay.meter.plans.cache.clock = lambda: later  # type: ignore[attr-defined]
            assert limit() == "100"


def test_a_revocation_the_store_did_not_hear_about_is_a_503_and_revoking_again_completes_it(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store could not take the revoked key's tombstone (logged only) and the answer was 200, while
    the identity it had cached kept the key working for up to JWT_CACHE_TTL_SECONDS."""
    with gw.admin() as client, gw.client() as user:
        assert user.post("/v1/chat/completions", json=CHAT).status_code == 200  # its identity is cached now

        async def unavailable(key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
            raise StoreUnavailable("store unavailable (set)")

        monkeypatch.setattr(gw.runtime.store, "set", unavailable)  # as a lost Redis refuses writes
        refused = client.post(f"/admin/api/keys/{gw.key_id}/revoke")
        monkeypatch.undo()
        assert refused.status_code == 503 and refused.headers["cache-control"] == "no-store", refused.text
        error = refused.json()["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "revocation_incomplete"
        assert "revoked in the database" in error["message"] and "JWT_CACHE_TTL_SECONDS" in error["message"]
        assert error["details"] == {"key_id": gw.key_id, "user": "alice", "revoked": True}
        listed = client.get("/admin/api/keys", params={"user": "alice"}).json()["keys"]
        assert [k["active"] for k in listed] == [False]
        assert user.post("/v1/chat/completions", json=CHAT).status_code == 200  # the cached identity, as warned
        retried = client.post(f"/admin/api/keys/{gw.key_id}/revoke")
        assert retried.status_code == 200 and retried.json()["active"] is False, retried.text
        assert user.post("/v1/chat/completions", json=CHAT).status_code == 401
        audit = [(e["action"], e["target"]) for e in client.get("/admin/api/audit").json()["entries"]]
        assert audit == [("key.revoke", gw.key_id)]


def test_a_revocation_answers_the_key_as_revoked_when_it_was(any_db_gw: Gateway) -> None:
    """The answer to a revocation showed the key as read before it (`revoked_at: null`, beside
    `active: false`): a script confirming a revocation by its time read that none had been made. It
    shows the moment the key list shows, and revoking it again the same one, not a later."""
    gw = any_db_gw
    with gw.admin() as client:
        revoked = client.post(f"/admin/api/keys/{gw.key_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        [listed] = [k for k in client.get("/admin/api/keys", params={"user": "alice"}).json()["keys"]
                    if k["id"] == gw.key_id]
        assert listed["revoked_at"] is not None
        assert revoked.json() == listed and revoked.json()["status"] == "revoked"
        again = client.post(f"/admin/api/keys/{gw.key_id}/revoke")
        assert again.status_code == 200 and again.json() == listed, again.text


def test_a_key_given_for_its_id_is_refused_without_quoting_it(gw: Gateway) -> None:
    """An operator who pastes the API key itself where its id goes got a 404 `No key 'sk-sentinel-...'`:
    the secret, in the answer (and an admin client's logs). It is a 400 in the admin API's error shape
    that does not repeat it, the console's form alike; nothing is revoked and the key still works."""
    with gw.admin() as client:
        created = client.post("/admin/api/users/pasted/keys", json={"name": "laptop"})
        key = created.json()["key"]
        body = key[len("sk-sentinel-"):]  # the key without its public prefix is the key too
        for path in (f"/admin/api/keys/{key}/revoke", f"/admin/api/keys/%20{key}/revoke", f"/admin/api/keys/{body}/revoke"):
            refused = client.post(path)
            assert refused.status_code == 400, (refused.status_code, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "validation_failed" and "not a key id" in error["details"]["fields"]["key_id"]
            assert key[len("sk-sentinel-"):] not in refused.text
        assert [k["active"] for k in client.get("/admin/api/keys", params={"user": "pasted"}).json()["keys"]] == [True]
        assert client.get("/admin/api/audit").json()["entries"][0]["action"] == "key.create"
    console, token = signed_in(gw)
    try:
        for pasted in (key, body):
            refused = console.post(f"/admin/keys/{pasted}/revoke", data={"csrf": token})
            assert refused.status_code == 400 and body not in refused.text
    finally:
        console.close()
    with gw.client(key) as user:
        assert user.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_usage_totals_past_what_a_64_bit_integer_holds_are_reported_at_the_most_it_holds(gw: Gateway) -> None:
    """Ledger rows that each hold the most a BIGINT column can (provider counts are believed up to
    MAX_TOKENS each) added up past 2^64: the sum was no JSON number orjson writes, and the report a 500.
    It stops at the largest, as a roll-up's sum does."""
    with gw.client() as user:
        assert [user.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)] == [200] * 3
    database = sqlite_file(gw.settings.database_url)

    def rolled_up() -> bool:  # (the background roll-up has taken the rows: it reads them no more)
        with sqlite3.connect(database, timeout=10) as db:
            (requests,) = db.execute("SELECT sum(requests) FROM usage_daily_users WHERE external_id = 'alice'").fetchone()
        return bool(requests == 3)

    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3) and wait_for(rolled_up)
    with sqlite3.connect(database, timeout=10) as db:
        db.execute("UPDATE usage_ledger SET input_tokens = ? WHERE external_id = 'alice'", (MAX_INT64,))
    with gw.admin() as client:
        totals = client.get("/admin/api/usage/totals", params={"user": "alice", "since": "1h"})
    assert totals.status_code == 200, totals.text
    (model,) = totals.json()["models"]
    assert (model["requests"], model["input_tokens"]) == (3, MAX_INT64)
