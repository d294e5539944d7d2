"""CORS over HTTP (SENTINEL_CORS_ORIGINS): preflights answered without a credential for the API paths,
answers readable by allowed origins only, errors included; off by default. The browser's own view is
in tests/browser/test_cors_browser.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from sentinel.config import ConfigError, load_settings
from tests.api.conftest import Gateway
from tests.support.clock import FakeClock

APP = "http://127.0.0.1:5173"
PREFLIGHT = {"origin": APP, "access-control-request-method": "POST",
             "access-control-request-headers": "x-api-key, anthropic-version, content-type"}
ASK = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_preflight_and_actual_requests(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(cors_origins=f"{APP},https://other.example.com")
    with httpx.Client(base_url=gw.url) as http:
        for path in ("/v1/messages", "/v1/chat/completions", "/native/v1/chat/completions"):
            pre = http.options(path, headers=PREFLIGHT)
            assert pre.status_code == 204, pre.text
            assert pre.headers["access-control-allow-origin"] == APP
            assert pre.headers["access-control-allow-headers"] == "x-api-key, anthropic-version, content-type"
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert "access-control-allow-credentials" not in pre.headers
        refused = http.options("/v1/messages", headers={**PREFLIGHT, "origin": "http://evil.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        ok = http.post("/v1/messages", json=ASK, headers={"origin": APP, "x-api-key": gw.key})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
        exposed = {h.strip().lower() for h in ok.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "request-id", "retry-after", "x-should-retry", "x-ratelimit-remaining", "x-sentinel-provider"} <= exposed
        unauthenticated = http.post("/v1/messages", json=ASK, headers={"origin": APP})
        assert unauthenticated.status_code == 401 and unauthenticated.headers["access-control-allow-origin"] == APP
        foreign = http.post("/v1/messages", json=ASK, headers={"origin": "http://evil.example", "x-api-key": gw.key})
        assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers
        health = http.options("/health/live", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in health.headers


def test_any_origin_and_off_by_default(gateway_factory: Callable[..., Gateway]) -> None:
    anyone = gateway_factory(cors_origins="*")
    off = gateway_factory()
    with httpx.Client() as http:
        pre = http.options(anyone.url + "/v1/models", headers={**PREFLIGHT, "origin": "https://anything.example"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
        r = http.get(off.url + "/v1/models", headers={"origin": APP, "authorization": f"Bearer {off.key}"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert http.options(off.url + "/v1/messages", headers=PREFLIGHT).status_code in (404, 405)


@pytest.mark.parametrize("value", ["*,https://a.example", "https://a.example/", "a.example", "https://a.example/path"])
def test_bad_origin_settings_are_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_CORS_ORIGINS", value)
    with pytest.raises(ConfigError, match="SENTINEL_CORS_ORIGINS"):
        load_settings(_env_file=None)


def test_a_hostile_page_cannot_lock_its_visitors_address_out_through_the_failed_auth_throttle(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """With `*`, any page passes the preflight for `authorization` and makes its visitors' browsers
    send junk keys: counted with the address's own failures, a page left open kept everyone behind
    that address (an office NAT) out — the admin API, the console sign-in, every key not cached. A
    cross-origin request's failures now count in a second bucket of the address; a script adding an
    `Origin` to dodge the throttle is throttled there too (twice the limit in all, never more)."""
    import openai

    from tests.support.accounts import create_key

    admin_key = "admin-key-for-tests-0123"
    gw = gateway_factory(cors_origins="*", auth_failures_per_minute=3, admin_key=admin_key, window_clock=FakeClock())
    _, fresh = asyncio.run(create_key(gw.settings.database_url, "office-colleague"))  # never used: not cached
    page = {"origin": "https://hostile.example", "sec-fetch-site": "cross-site"}

    def junk(http: httpx.Client, i: int, headers: dict[str, str]) -> httpx.Response:
        return http.get("/v1/models", headers={**headers, "authorization": f"Bearer sk-sentinel-junk-{i}"})

    with httpx.Client(base_url=gw.url, timeout=30) as http:
        assert http.options("/v1/models", headers={**page, "access-control-request-method": "GET",
                                                   "access-control-request-headers": "authorization"}).status_code == 204
        from_page = [junk(http, i, page).status_code for i in range(5)]
        assert from_page == [401] * 3 + [429] * 2  # the page's calls are throttled in their own bucket
        # The office behind the same address is not: a key not seen before (it needs a lookup), the
        # admin API, the console's sign-in (a same-origin form, its `Origin` Sentinel's own).
        models = openai.OpenAI(base_url=gw.url + "/v1", api_key=fresh, max_retries=0).models.list()
        assert models.data
        admin = http.get("/admin/api/plans", headers={"authorization": f"Bearer {admin_key}"})
        assert admin.status_code == 200, admin.text
        own = gw.url.removeprefix("http://")
        signin = http.post("/admin/signin", data={"key": admin_key},
                           headers={"origin": f"http://{own}", "sec-fetch-site": "same-origin"})
        assert signin.status_code == 303, signin.text
        # A script sending junk without an Origin is throttled at the limit as before...
        script = [junk(http, 10 + i, {}).status_code for i in range(4)]
        # ...and adding an Origin only moves it to the second bucket, already at its limit; another
        # origin's value is no new bucket either.
        dodge = [junk(http, 20, {"origin": "https://another-one.example"}), junk(http, 21, {"origin": "null"})]
    assert script == [401] * 3 + [429]
    assert [r.status_code for r in dodge] == [429, 429]
    assert {r.json()["error"]["code"] for r in dodge} == {"auth_rate_limited"}


def test_a_script_adding_an_origin_gets_at_most_twice_the_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(cors_origins="*", auth_failures_per_minute=3, window_clock=FakeClock())
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        plain = [http.get("/v1/models", headers={"authorization": f"Bearer sk-sentinel-junk-{i}"}).status_code
                 for i in range(4)]
        dodging = [http.get("/v1/models", headers={"authorization": f"Bearer sk-sentinel-junk-{10 + i}",
                                                   "origin": f"https://site-{i}.example"}).status_code
                   for i in range(4)]
        # The address's own bucket is still full: a key never seen waits for the minute's end.
        fresh = http.get("/v1/models", headers={"authorization": "Bearer sk-sentinel-junk-99"})
    assert plain == [401] * 3 + [429]
    assert dodging == [401] * 3 + [429]
    assert fresh.status_code == 429


def test_the_console_behind_a_proxy_that_rewrites_host_is_not_locked_out_by_a_hostile_page(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A proxy in front commonly sends Sentinel its own upstream name as `Host` (nginx's default
    `proxy_set_header Host $proxy_host`): the console's same-origin sign-in then carries an `Origin`
    (the public name) that is not the `Host`. The browser says what it is (`Sec-Fetch-Site:
    same-origin`, a header no page can set): compared with `Host` only, it counted in the
    cross-origin bucket a hostile page had filled — the console was locked out again."""
    admin_key = "admin-key-for-tests-0123"
    gw = gateway_factory(cors_origins="*", auth_failures_per_minute=3, admin_key=admin_key, window_clock=FakeClock())
    page = {"origin": "https://hostile.example", "sec-fetch-site": "cross-site"}
    with httpx.Client(base_url=gw.url, timeout=30) as http:  # (its Host: the proxy's upstream name)
        from_page = [http.get("/v1/models", headers={**page, "authorization": f"Bearer sk-sentinel-junk-{i}"})
                     .status_code for i in range(4)]
        signin = http.post("/admin/signin", data={"key": admin_key},
                           headers={"origin": "https://sentinel.example", "sec-fetch-site": "same-origin"})
    assert from_page == [401] * 3 + [429]
    assert signin.status_code == 303, signin.text
