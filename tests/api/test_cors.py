"""CORS over HTTP (SENTINEL_CORS_ORIGINS): preflights answered without a credential for the API paths,
answers readable by allowed origins only, errors included; off by default. The browser's own view is
in tests/browser/test_cors_browser.py."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from sentinel.config import ConfigError, load_settings
from tests.api.conftest import Gateway

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
