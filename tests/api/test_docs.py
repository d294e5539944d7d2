"""`/native/docs` over HTTP: the key from a header or the sign-in cookie only, never the URL; shipped
Swagger UI assets with cache headers and integrity; a strict Content-Security-Policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sentinel.api.docs_auth import COOKIE, SESSION_SECONDS, DocsGate
from tests.api.conftest import Gateway

KEY = "docs-secret-7f3a9c"
STATIC = Path(__file__).resolve().parents[2] / "sentinel" / "api" / "static"


def signed_in(http: httpx.Client, key: str = KEY, **headers: str) -> httpx.Response:
    return http.post(
        "/native/docs/signin", data={"key": key}, headers=headers, follow_redirects=False
    )


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token of the docs page's sign-out form."""
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.fixture
def keyed(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(docs_api_key=KEY)


def test_key_in_query_string_is_refused(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        page = http.get("/native/docs", params={"key": KEY})
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert "not accepted in the URL" in page.text and KEY not in page.text
        assert "set-cookie" not in page.headers
        doc = http.get("/native/docs/openapi.json", params={"key": KEY})
        assert doc.status_code == 401
        assert doc.json()["error"]["code"] == "invalid_docs_key"
        assert "www-authenticate" not in doc.headers


def test_header_key_accepted_and_wrong_key_refused(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        assert http.get("/native/docs", headers={"X-Docs-Key": KEY}).status_code == 200
        doc = http.get("/native/docs/openapi.json", headers={"X-Docs-Key": KEY})
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.1")
        for wrong in ("nope", KEY + "x", KEY[:-1], ""):
            assert http.get("/native/docs", headers={"X-Docs-Key": wrong}).status_code == 401
            assert http.get("/native/docs/openapi.json", headers={"X-Docs-Key": wrong}).status_code == 401
        assert http.get("/native/docs").status_code == 401  # nothing at all: the sign-in form
        refused = signed_in(http, "wrong-key")
        assert refused.status_code == 401 and "Wrong docs key" in refused.text
        assert "set-cookie" not in refused.headers


def test_signin_cookie_grants_access_and_holds_no_key(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        form = http.get("/native/docs/signin")
        assert form.status_code == 200 and 'action="/native/docs/signin"' in form.text
        r = signed_in(http)
        assert r.status_code == 303 and r.headers["location"] == "/native/docs"
        cookie = r.headers["set-cookie"]
        attributes = [a.strip().lower() for a in cookie.split(";")]
        assert {"httponly", "samesite=strict", "path=/native/docs", f"max-age={SESSION_SECONDS}"} <= set(attributes)
        assert "secure" not in attributes  # plain http here; see the https test below
        token = cookie.split(";")[0].split("=", 1)[1]
        assert KEY not in token and re.fullmatch(r"v2\.\d+\.[0-9a-f]{16}\.[0-9a-f]{64}", token)
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as browser_like:
        assert browser_like.get("/native/docs").status_code == 200
        assert browser_like.get("/native/docs/openapi.json").status_code == 200
    version, expires, nonce, mac = token.split(".")
    forged = [
        f"{version}.{int(expires) + 3600}.{nonce}.{mac}",  # a longer life, same mac
        f"{version}.{expires}.{nonce}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        f"{version}.{expires}.{'0' * 16}.{mac}",  # another session's nonce, same mac
        f"v1.{expires}.{mac}",  # the former format, which could not be signed out
        KEY,  # the key itself is not a token
        "v2...",
    ]
    for bad in forged:
        with httpx.Client(base_url=keyed.url, cookies={COOKIE: bad}) as http:
            assert http.get("/native/docs/openapi.json").status_code == 401, bad


def test_signin_over_https_sets_a_secure_cookie(gateway_factory: Callable[..., Gateway]) -> None:
    """Behind a proxy named in SENTINEL_FORWARDED_ALLOW_IPS (here the loopback) that terminates TLS."""
    behind_proxy = gateway_factory(docs_api_key=KEY, forwarded_allow_ips="127.0.0.1")
    with httpx.Client(base_url=behind_proxy.url) as http:
        r = signed_in(http, **{"X-Forwarded-Proto": "https"})
    assert r.status_code == 303
    assert "secure" in [a.strip().lower() for a in r.headers["set-cookie"].split(";")]


def test_a_clients_own_forwarded_proto_is_not_the_scheme(keyed: Gateway) -> None:
    """With no proxy named, X-Forwarded-Proto is the client's word, not the scheme: the cookie is
    not marked Secure for a plain-http sign-in (served as `sentinel serve` is: the test gateways
    trusted it from the loopback, as uvicorn does by default)."""
    with httpx.Client(base_url=keyed.url) as http:
        r = signed_in(http, **{"X-Forwarded-Proto": "https"})
    assert r.status_code == 303
    assert "secure" not in [a.strip().lower() for a in r.headers["set-cookie"].split(";")]


def test_signin_form_rules(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        as_json = http.post("/native/docs/signin", json={"key": KEY})
        assert as_json.status_code == 400 and "set-cookie" not in as_json.headers
        huge = http.post(
            "/native/docs/signin",
            content=b"key=" + b"a" * 10_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert huge.status_code == 413
        assert http.post("/native/docs/signin", data={"other": KEY}).status_code == 401


def test_gate_tokens_expire_and_die_with_the_key() -> None:
    now = [1_000_000.0]
    gate = DocsGate(KEY, clock=lambda: now[0])
    token = gate.mint()
    assert gate.session_valid(token)
    now[0] += SESSION_SECONDS - 1
    assert gate.session_valid(token)
    now[0] += 1
    assert not gate.session_valid(token)
    assert not DocsGate("another-key", clock=lambda: 1_000_000.0).session_valid(token)
    assert gate.key_matches(KEY) and not gate.key_matches(KEY.upper())
    assert "Secure" in gate.set_cookie(token, secure=True) and "Secure" not in gate.set_cookie(token, secure=False)
    assert asyncio.run(DocsGate(None).allows({}))
    assert not asyncio.run(gate.allows({"x-docs-key": "x", "cookie": f"{COOKIE}=junk"}))


def test_open_docs_without_a_key(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(docs_api_key=None)
    with httpx.Client(base_url=gw.url) as http:
        assert http.get("/native/docs").status_code == 200
        assert http.get("/native/docs/openapi.json").status_code == 200
        r = http.get("/native/docs/signin", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/native/docs"


def test_page_has_strict_csp_and_only_local_scripts(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        for r in (http.get("/native/docs", headers={"X-Docs-Key": KEY}), http.get("/native/docs/signin")):
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
            assert r.headers["cache-control"] == "no-store"
            assert "<script>" not in r.text  # no inline code
            for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
                assert url.startswith("/native/docs/"), url
        page = http.get("/native/docs", headers={"X-Docs-Key": KEY}).text
        tags = re.findall(r'(?:src|href)="/native/docs/assets/([^"]+)" integrity="(sha384-[^"]+)"', page)
        assert {name for name, _ in tags} == {"swagger-ui.css", "swagger-ui-bundle.js", "docs.js"}
        for name, integrity in tags:
            served = http.get(f"/native/docs/assets/{name}").content
            assert integrity == "sha384-" + base64.b64encode(hashlib.sha384(served).digest()).decode()


def test_assets_served_with_cache_headers(keyed: Gateway) -> None:
    pinned = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", (STATIC / "swagger-ui" / "README.md").read_text(), re.M))
    assert set(pinned) == {"swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-bundle.js.LICENSE.txt", "LICENSE", "NOTICE"}
    names = {"swagger-ui-bundle.js": "swagger-ui-bundle.js", "swagger-ui.css": "swagger-ui.css",
             "swagger-ui-LICENSE.txt": "LICENSE", "swagger-ui-NOTICE.txt": "NOTICE",
             "swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt"}
    with httpx.Client(base_url=keyed.url) as http:  # no key: assets are public
        for public, vendored in names.items():
            r = http.get(f"/native/docs/assets/{public}")
            assert r.status_code == 200, public
            assert hashlib.sha256(r.content).hexdigest() == pinned[vendored]  # unmodified upstream files
            assert r.headers["cache-control"] == "public, max-age=86400"
            assert r.headers["x-content-type-options"] == "nosniff"
        js = http.get("/native/docs/assets/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert http.get("/native/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        again = http.get("/native/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": js.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert http.get("/native/docs/assets/docs.py").status_code == 404
        assert http.get("/native/docs/assets/..%2Fdocs.py").status_code in (400, 404)
        assert http.get("/native/docs/assets/swagger-ui").status_code == 404


@pytest.mark.parametrize("expires", [b"\xb2", "\u0663\u0663".encode(), b"9" * 20, b"+1", b""])
def test_a_malformed_cookie_is_refused_not_an_error(keyed: Gateway, expires: bytes) -> None:
    cookie = COOKIE.encode() + b"=v2." + expires + b"." + b"a" * 16 + b"." + b"a" * 64  # raw bytes: 0xB2 arrives as latin-1 '\u00b2'
    with httpx.Client(base_url=keyed.url) as http:
        for path in ("/native/docs", "/native/docs/openapi.json"):
            assert http.get(path, headers={b"Cookie": cookie}).status_code == 401, path
    assert not DocsGate(KEY).session_valid(cookie.decode("latin-1").partition("=")[2])


def test_a_cookie_of_the_same_name_sent_first_does_not_hide_the_sign_in(keyed: Gateway) -> None:
    """A sibling subdomain can set `sentinel_docs` for the parent domain, sent before the docs' own."""
    with httpx.Client(base_url=keyed.url) as http:
        token = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]
    planted = f"{COOKIE}=v2.99999999999.{'0' * 16}.{'0' * 64}"
    with httpx.Client(base_url=keyed.url) as http:
        assert http.get("/native/docs/openapi.json", headers={"Cookie": f"{planted}; {COOKIE}={token}"}).status_code == 200
        assert http.get("/native/docs/openapi.json", headers={"Cookie": planted}).status_code == 401


def test_signing_out_ends_the_session_and_every_copy_of_its_cookie(keyed: Gateway) -> None:
    """The sign-in cookie could not be revoked: no sign-out, and a copy of it (a shared machine, a
    proxy's log, a browser profile) worked for its 12 hours unless DOCS_API_KEY was changed. The page
    has a sign-out form now: `POST /native/docs/signout` clears the cookie and keeps its session's nonce
    in the store until it would have expired, so a copy is refused too (401); another sign-in is not
    touched. A sign-out form posted from another site is refused (403) and ends nothing."""
    with httpx.Client(base_url=keyed.url) as http:
        token = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]
        other = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as browser:
        page = browser.get("/native/docs")
        assert page.status_code == 200 and 'action="/native/docs/signout"' in page.text
        form = {"csrf": csrf_of(page)}
        foreign = browser.post("/native/docs/signout", data=form, headers={"Sec-Fetch-Site": "cross-site"},
                               follow_redirects=False)
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        assert browser.get("/native/docs/openapi.json").status_code == 200
        out = browser.post("/native/docs/signout", data=form, headers={"Sec-Fetch-Site": "same-origin"},
                           follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/native/docs/signin", out.text
        cleared = [a.strip().lower() for a in out.headers["set-cookie"].split(";")]
        assert cleared[0] == f"{COOKIE}=" and "max-age=0" in cleared and "path=/native/docs" in cleared
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as copy:
        assert copy.get("/native/docs/openapi.json").status_code == 401
        assert copy.get("/native/docs").status_code == 401
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: other}) as elsewhere:
        assert elsewhere.get("/native/docs/openapi.json").status_code == 200


def test_a_sign_out_form_of_a_sibling_subdomain_over_http_ends_nothing(keyed: Gateway) -> None:
    """A page of a sibling subdomain (wiki.corp.example beside docs.corp.example) is same-site: the
    SameSite=Strict cookie goes with its form's post, and over plain http the browser sends no
    `Sec-Fetch-Site` to refuse it by — its auto-submitted form signed the docs user out. A sign-out
    ends a session only with the CSRF token of that session's page (403 otherwise, the cookie kept);
    another session's token does not do."""
    with httpx.Client(base_url=keyed.url) as http:
        token = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]
        other = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as browser:
        for form in ({}, {"csrf": ""}, {"csrf": "other"}):
            if form.get("csrf") == "other":  # another session's page's token
                with httpx.Client(base_url=keyed.url, cookies={COOKIE: other}) as elsewhere:
                    form = {"csrf": csrf_of(elsewhere.get("/native/docs"))}
            out = browser.post("/native/docs/signout", data=form, headers={"Origin": "http://wiki.corp.example"},
                               follow_redirects=False)
            assert out.status_code == 403 and "set-cookie" not in out.headers, out.text
        assert browser.get("/native/docs/openapi.json").status_code == 200  # still signed in
        out = browser.post("/native/docs/signout", data={"csrf": csrf_of(browser.get("/native/docs"))},
                           follow_redirects=False)
        assert out.status_code == 303
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as copy:
        assert copy.get("/native/docs/openapi.json").status_code == 401


def test_a_sign_out_the_store_cannot_keep_says_so(keyed: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the store refusing writes the cookie is cleared but its copies still work: 503, saying so
    (a redirect would have read as done)."""
    from sentinel.errors import StoreUnavailable

    with httpx.Client(base_url=keyed.url) as http:
        token = signed_in(http).headers["set-cookie"].split(";")[0].split("=", 1)[1]

    async def unavailable(key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        raise StoreUnavailable("store unavailable (set)")

    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as browser:
        form = {"csrf": csrf_of(browser.get("/native/docs"))}
    monkeypatch.setattr(keyed.runtime.store, "set", unavailable)
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as browser:
        out = browser.post("/native/docs/signout", data=form, follow_redirects=False)
    monkeypatch.undo()
    assert out.status_code == 503 and "Signed out here only" in out.text and "DOCS_API_KEY" in out.text
    assert "max-age=0" in out.headers["set-cookie"].lower()
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: token}) as copy:
        assert copy.get("/native/docs/openapi.json").status_code == 200  # as the page warned


def test_a_sign_out_without_a_session_is_the_sign_in_form(keyed: Gateway) -> None:
    """Nothing to end: 401 with the sign-in form (as the page without access), the cookie cleared."""
    with httpx.Client(base_url=keyed.url, cookies={COOKIE: "v2.99999999999.0.0"}) as http:
        out = http.post("/native/docs/signout", follow_redirects=False)
        assert out.status_code == 401 and 'action="/native/docs/signin"' in out.text
        assert "max-age=0" in out.headers["set-cookie"].lower()
