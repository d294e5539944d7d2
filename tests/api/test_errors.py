"""Every error case of the /v1 surface, in OpenAI's error shape, never a 500 with a traceback."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from tests.api.conftest import UPSTREAM_KEY, Gateway
from tests.support.metrics import metric
from tests.support.servers import free_port, serving
from tests.support.upstream import GatedUpstream
from tests.support.waiting import wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def assert_error_shape(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    assert "Traceback" not in r.text
    return body["error"]


def test_missing_and_invalid_auth(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        missing = http.post("/v1/chat/completions", json=CHAT)
        wrong_scheme = http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Basic abc"})
        invalid = http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-sentinel-nope"})
    for r in (missing, wrong_scheme, invalid):
        assert_error_shape(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_invalid_json_and_non_object(gateway: Gateway) -> None:
    with gateway.client() as http:
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        arr = http.post("/v1/chat/completions", json=[1, 2])
        no_model = http.post("/v1/chat/completions", json={"messages": []})
    assert assert_error_shape(bad, 400)["code"] == "invalid_json"
    assert_error_shape(arr, 400)
    assert "model" in assert_error_shape(no_model, 400)["message"]


def test_body_too_large(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(max_body_bytes=2048)
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json=big)
    assert_error_shape(r, 413)


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    with gateway.client() as http:
        unknown = http.get("/nope")
        wrong = http.get("/v1/chat/completions")
    err = assert_error_shape(unknown, 404)
    assert err["code"] == "endpoint_not_found" and "/nope" in err["message"]
    assert_error_shape(wrong, 405)
    assert wrong.headers["allow"] == "POST"


def test_upstream_4xx_relayed_5xx_becomes_502(gateway: Gateway) -> None:
    with gateway.client() as http:
        r400 = http.post("/v1/chat/completions", json=CHAT, headers={"X-Mock-Status": "400"})
        r429 = http.post("/v1/chat/completions", json=CHAT, headers={"X-Mock-Status": "429"})
        r500 = http.post("/v1/chat/completions", json=CHAT, headers={"X-Mock-Status": "500"})
    assert assert_error_shape(r400, 400)["message"]
    assert_error_shape(r429, 429)
    assert "retry-after" in r429.headers
    err = assert_error_shape(r500, 502)
    assert err["type"] == "upstream_error"


def test_upstream_timeout_is_504(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(upstream_timeout_seconds=0.3)
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json=CHAT, headers={"X-Mock-Latency-Ms": "1500"})
    assert assert_error_shape(r, 504)["code"] == "upstream_timeout"


def test_connection_refused_is_502(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(openai_api_url=f"http://127.0.0.1:{free_port()}/v1")
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json=CHAT)
    assert assert_error_shape(r, 502)["code"] == "upstream_unreachable"
    # The upstream key never appears in what the client sees.
    assert UPSTREAM_KEY not in r.text


def test_backpressure_rejects_at_once(gateway_factory: Callable[..., Gateway]) -> None:
    upstream = GatedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(max_in_flight=1, openai_api_url=srv.url + "/v1")
        results: list[int] = []

        def held() -> None:
            with gw.client() as http:
                results.append(http.post("/v1/chat/completions", json=CHAT).status_code)

        t = threading.Thread(target=held)
        t.start()
        try:
            # The one allowed request is in flight: it reached the upstream, which holds it.
            assert wait_for(lambda: upstream.arrived == 1)
            assert metric(gw.url, "sentinel_requests_in_flight") == 1
            with gw.client() as http:
                r = http.post("/v1/chat/completions", json=CHAT)
                health = http.get("/health/live")
                lookalikes = [http.get(path) for path in ("/healthz", "/health/live/x", "/metrics-x")]
        finally:
            upstream.open()
            t.join()
    assert_error_shape(r, 503)
    assert r.headers["retry-after"] == "1"
    assert health.status_code == 200  # probes are never refused
    # ... those paths exactly: a path that merely begins like one is any request (it passed the cap)
    assert [answer.status_code for answer in lookalikes] == [503, 503, 503], [a.text for a in lookalikes]
    assert results == [200]
    assert upstream.arrived == 1  # the refused request never reached the upstream


def test_one_caller_cannot_hold_every_slot(gateway_factory: Callable[..., Gateway]) -> None:
    """Past SENTINEL_MAX_IN_FLIGHT_PER_USER requests still running, a caller gets 429 at once (nothing
    reserved or sent), while other callers are served; the slots come back when the answers are sent."""
    import asyncio

    from tests.support.accounts import create_key

    upstream = GatedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(max_in_flight_per_user=2, openai_api_url=srv.url + "/v1")
        bob = asyncio.run(create_key(gw.settings.database_url, "bob"))[1]
        results: list[int] = []

        def held() -> None:
            with gw.client() as http:
                results.append(http.post("/v1/chat/completions", json=CHAT).status_code)

        threads = [threading.Thread(target=held) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            assert wait_for(lambda: upstream.arrived == 2)
            with gw.client() as http:
                refused = http.post("/v1/chat/completions", json=CHAT)
            with gw.client(bob) as http:
                other = http.get("/v1/models")
        finally:
            upstream.open()
            for t in threads:
                t.join()
        with gw.client() as http:
            again = http.post("/v1/chat/completions", json=CHAT)  # both slots given back
    error = assert_error_shape(refused, 429)
    assert error["code"] == "too_many_in_flight" and refused.headers["retry-after"] == "1"
    assert other.status_code == 200
    assert results == [200, 200] and again.status_code == 200
    assert upstream.arrived == 3  # the refused request never reached the upstream
