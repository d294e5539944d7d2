"""Hostile input on `/v1/messages`: no body ever gets a 5xx (fuzzed with hypothesis, on a model relayed
as it is and on one translated to OpenAI), and encoded or malformed variants of the path are refused
with 400 in Anthropic's error shape."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Gateway

HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
block_types = st.sampled_from(["text", "image", "tool_use", "tool_result", "document", "thinking", "server_tool_use"])
blocks = st.fixed_dictionaries(
    {"type": block_types | json_values},
    optional={
        "text": st.text(max_size=20) | json_values,
        "source": st.fixed_dictionaries({"type": st.sampled_from(["base64", "url", "file"]) | json_values},
                                        optional={"media_type": st.sampled_from(["image/png", "image/bmp"]) | json_values,
                                                  "data": st.text(max_size=16) | json_values,
                                                  "url": st.text(max_size=16)}) | json_values,
        "id": st.text(max_size=8) | json_values, "name": st.sampled_from(["lookup", "bad name!"]) | json_values,
        "input": json_values, "tool_use_id": st.text(max_size=8) | json_values,
        "content": st.text(max_size=10) | st.lists(json_values, max_size=2) | json_values,
        "is_error": json_values, "cache_control": json_values,
    },
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values},
        optional={"content": st.text(max_size=30) | st.lists(blocks, max_size=3) | json_values, "extra": json_values},
    ),
    max_size=4,
) | json_values
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([HAIKU, MINI]), "messages": messages},
    optional={
        "max_tokens": st.integers(-3, 40) | json_values, "system": st.text(max_size=20) | st.lists(blocks, max_size=2) | json_values,
        "tools": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "input_schema": json_values},
                                                optional={"type": json_values, "description": json_values}),
                          max_size=2) | json_values,
        "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]) | json_values},
                                             optional={"name": json_values}) | json_values,
        "stream": st.booleans() | json_values, "stop_sequences": json_values, "metadata": json_values,
        "temperature": json_values, "top_k": json_values, "thinking": json_values, "unknown_field": json_values,
    },
)

HANDMADE: list[bytes] = [
    b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe{}", b'{"model": "' + HAIKU.encode() + b'"}',
    orjson.dumps({"model": HAIKU, "max_tokens": True, "messages": [{"role": "user", "content": "x"}]}),
    orjson.dumps({"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
    orjson.dumps({"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_result", "content": [{}]}]}]}]}),
    orjson.dumps({"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}]}]}),
    b'{"model": "' + MINI.encode() + b'", "max_tokens": 18446744073709551616, "messages": [{"role": "user", "content": "big"}]}',
    orjson.dumps({"model": MINI, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "\u0000"}]}),
    b'{"model": "' + MINI.encode() + b'", "max_tokens": 5, "messages": ' + b"[" * 80 + b"]" * 80 + b"}",
    orjson.dumps({"model": "x" * 5000, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
]


@pytest.fixture
def fuzz_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(default_plan="requests=100000/1m")


def post(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/v1/messages", content=body, headers={"content-type": "application/json"})


def test_handmade_hostile_bodies(fuzz_gateway: Gateway) -> None:
    with fuzz_gateway.client() as http:
        for body in HANDMADE:
            r = post(http, body)
            assert r.status_code < 500, (body[:200], r.status_code, r.text)
            if r.status_code >= 400:
                assert r.json()["type"] == "error" and isinstance(r.json()["error"]["message"], str)


def test_fuzzed_bodies_never_get_a_server_error(fuzz_gateway: Gateway) -> None:
    seen: dict[int, int] = {}
    with fuzz_gateway.client() as http:

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies)
        def check(body: dict[str, Any]) -> None:
            r = post(http, orjson.dumps(body))
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (body, r.status_code, r.text)

        check()
    assert seen.get(400, 0) > 0  # the fuzzer did reach the checks


@pytest.mark.parametrize("raw_path", [
    "/v1/messages%2Fcount_tokens",
    "/v1/messages/%2e%2e/chat/completions",
    "/v1/messages/%2E%2E",
    "/v1/messages/./count_tokens",
    "/v1/messages/../messages",
    "/v1/messages//count_tokens",
    "/v1//messages",
    "/v1/messages%5Ccount_tokens",
    "/v1/messages/%ZZ",
    "/v1/messages/%00",
])
def test_encoded_path_variants_are_400_in_anthropic_shape(gateway: Gateway, raw_path: str) -> None:
    target = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    body = orjson.dumps({"model": HAIKU, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    conn.request("POST", raw_path, body=body, headers={"x-api-key": gateway.key, "content-type": "application/json"})
    response = conn.getresponse()
    data = orjson.loads(response.read())
    conn.close()
    assert response.status == 400
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert "path" in data["error"]["message"] and response.getheader("request-id")


def test_percent_encoded_ordinary_characters_reach_the_same_route(gateway: Gateway) -> None:
    target = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    body = orjson.dumps({"model": HAIKU, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    conn.request("POST", "/v1/%6Dessages", body=body, headers={"x-api-key": gateway.key, "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and orjson.loads(response.read())["type"] == "message"
    conn.close()


def test_surface_errors_in_anthropic_shape(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(max_body_bytes=2048)
    with httpx.Client(base_url=gw.url) as http:
        missing = http.post("/v1/messages", json={})
        wrong_method = http.get("/v1/messages", headers={"x-api-key": gw.key})
        too_large = http.post("/v1/messages", headers={"x-api-key": gw.key}, content=b"x" * 5000)
        unknown = http.post("/v1/messages/batches", headers={"x-api-key": gw.key}, json={})
        conflicting = http.post("/v1/messages", headers={"x-api-key": gw.key, "authorization": "Bearer other"}, json={})
    expected = [(missing, 401, "authentication_error"), (wrong_method, 405, "invalid_request_error"),
                (too_large, 413, "request_too_large"), (unknown, 404, "not_found_error"),
                (conflicting, 401, "authentication_error")]
    for r, status, kind in expected:
        assert r.status_code == status, r.text
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind
        assert r.headers["request-id"] == r.headers["x-request-id"] == r.json()["request_id"]
    assert wrong_method.headers["allow"] == "POST"
