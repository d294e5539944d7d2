"""Errors that tell the truth and leak nothing: no malformed body is a 5xx, a refused provider key
is a generic 502, and client-chosen model names never become metric labels."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.native.responses import ErrorBody
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.api.test_quotas import set_plan
from tests.support.attack import ledger_rows, openai_error, wait_for
from tests.support.metrics import sample_sum
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream, lifespan

MODEL = "gpt-4o-mini"
NATIVE = "/native/v1/chat/completions"


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# The first event of a provider's stream, in each wire format, and a streamed Claude request.
OPENAI_FIRST = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]}
CLAUDE_FIRST = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
    "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}
CLAUDE_STREAM = {"model": "claude-3-5-haiku-20241022", "max_tokens": 20, "messages": user(), "stream": True}


def tool_call(arguments: Any) -> list[dict[str, Any]]:
    return [*user(), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]


def dumps(body: Any) -> bytes:
    """JSON text of `body` (the standard library's encoder: it nests deeper than orjson's)."""
    return json.dumps(body).encode()


DEEP_JSON_TEXT = '{"a":' * 300 + "1" + "}" * 300
# Bodies that must be a 400 in the surface's error shape: (path, body).
MUST_BE_400: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": [1]}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "instructions": 123}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "tools": [
        {"type": "function", "function": {"name": "f", "parameters": deep_schema(300)}}]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": tool_call(nested(300))}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "stream": True, "extra": nested(300)}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True, "metadata": nested(300)}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True, "x": nested(300)}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi", "x": nested(300)}),
    ("/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": nested(300)}]}),
    ("/v1/responses", {"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c",
                                                   "output": nested(300)}]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": 1e308}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": "NaN"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "n": "Infinity"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": -(2**63)}),
    ("/v1/chat/completions", {"model": MODEL, "messages": user(), "n": 2**63 - 1}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "best_of": 2**63 - 1}),
    ("/v1/chat/completions", {"model": None, "messages": user()}),
]
RAW_400: list[tuple[bytes, str]] = [  # (body, content type)
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":NaN}', "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":Infinity}', "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1' + b"0" * 400 + b"}",
     "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"n":123456789012345678901234567890}',
     "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff\xfe\xc3"}]}', "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}', "application/json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json"),
    (b"[]", "application/json"), (b'"chat"', "application/json"), (b"1", "application/json"),
    (b"null", "application/json"), (b"true", "application/json"), (b"", "application/json"), (b"", ""),
    (b"model=gpt-4o-mini&messages=hi", "application/x-www-form-urlencoded"),
    (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]', "application/json"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}garbage', "application/json"),
]


def test_malformed_bodies_are_400_in_the_openai_shape(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(default_plan="requests=100000/1m,output_tokens=1000000/1m")
    with gw.client() as http:
        for path, body in MUST_BE_400:
            r = http.post(path, content=dumps(body), headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, str(body)[:200], r.status_code, r.text[:300])
            openai_error(r.json())
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
            for raw, kind in RAW_400:
                r = http.post(path, content=raw, headers={"content-type": kind} if kind else {})
                assert r.status_code == 400, (path, raw[:80], r.status_code, r.text[:300])
                openai_error(r.json())


def test_odd_but_wellformed_bodies_are_never_a_server_error(gateway_factory: Callable[..., Gateway]) -> None:
    """Whatever the answer (the upstream may refuse them), it is not a 5xx."""
    gw = gateway_factory(default_plan="requests=100000/1m")
    chat: dict[str, Any] = {"model": MODEL, "messages": user()}
    bodies = [
        {**chat, "messages": tool_call(DEEP_JSON_TEXT)},
        {**chat, "tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema(30)}}]},
        {**chat, "tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema(30)}}] * 128},
        {**chat, "max_tokens": 2**62},
        {**chat, "n": 128, "max_tokens": 2**62},
        {**chat, "messages": [{"role": "user", "content": "\u0000\ud7ff\ufffe\U0010ffff" * 100}]},
        {**chat, "messages": [{"role": "\u202e", "content": [{"type": "\u0000"}]}]},
        {**chat, "stream": False, "stream_options": {"include_usage": "yes"}},
        {**chat, "stream": True, "stream_options": {"include_usage": False}},
        {**chat, "model": "x" * 200},
        {**chat, "logit_bias": {str(i): 100 for i in range(300)}},
        {**chat, "temperature": 1e308, "top_p": -1e308},
    ]
    with gw.client() as http:
        for body in bodies:
            r = http.post("/v1/chat/completions", content=dumps(body), headers={"content-type": "application/json"})
            assert r.status_code < 500, (str(body)[:200], r.status_code, r.text[:300])
            if r.status_code >= 400:
                openai_error(r.json())
        r = http.post("/v1/chat/completions", content=orjson.dumps(chat), headers={"content-type": "text/plain"})
        assert r.status_code < 500


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


def test_huge_token_caps_are_refused_not_crashed(gateway_factory: Callable[..., Gateway], store_url: str | None) -> None:
    """Caps and multipliers beyond 64 bits and a Lua number's exact range: never a 5xx (the details
    once held a 70-bit integer that could not be rendered) — a cap past 10**12 (Sentinel's bound on any
    token count) a 400 naming it, one within it, times `n`, a 429 with its details."""
    gw = gateway_factory(redis_url=store_url)
    set_plan(gw.settings.database_url, "alice", "tokens", "requests=100/1m,output_tokens=1000/1m")
    with gw.client() as http:
        for extra in ({"max_tokens": 2**62}, {"n": 128, "max_tokens": 2**62}, {"max_completion_tokens": 2**53 + 1},
                      {"n": 128, "max_tokens": 2**64 - 1}, {"n": 128, "max_completion_tokens": 2**63}):
            r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), **extra})
            assert r.status_code == 400, (extra, r.text)
            assert openai_error(r.json())["param"] == next(k for k in extra if k != "n")
        for extra in ({"max_tokens": 10**12}, {"n": 128, "max_tokens": 10**12}, {"n": 128, "max_completion_tokens": 10**12}):
            r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), **extra})
            assert r.status_code == 429, (extra, r.text)
            assert openai_error(r.json())["details"]["metric"] == "output_tokens"
        assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), "max_tokens": 10}
                         ).status_code == 200


def test_malformed_native_bodies_are_400_in_the_native_shape(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"))
    tool = {"type": "function", "function": {"name": "f", "parameters": deep_schema(300)}}
    bodies: list[bytes] = [
        dumps({"messages": [1]}),
        dumps({"messages": user(), "tools": [tool]}),
        dumps({"messages": tool_call(nested(300))}),
        dumps({"messages": tool_call({"deep": nested(300)})}),
        dumps({"messages": user(), "stream": True, "metadata": nested(300)}),
        dumps({"messages": user(), "max_tokens": "NaN"}),
        dumps({"messages": user(), "max_tokens": 2**64 + 1}),
        dumps({"messages": user(), "stream": 1}),
        *(raw for raw, _ in RAW_400),
    ]
    with gw.client() as http:
        for body in bodies:
            r = http.post(NATIVE, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body[:120], r.status_code, r.text[:300])
            ErrorBody.model_validate_json(r.content)


# --- a provider refusing Sentinel's key --------------------------------------------------------
UPSTREAM_TRUE_KEY = "sk-proj-Hq7Wd2Zr8Kp3Ux5Ny4Bv"
GATEWAY_WRONG_KEY = "sk-proj-Zq81Xv7MwRt3LpK9Fj6Qe"


def key_fragments(key: str) -> list[str]:
    """Every piece of `key` a provider might quote: its tail, and any 5 characters after `sk-proj-`."""
    body = key.removeprefix("sk-proj-")
    return [key, key[-4:], *(body[i : i + 5] for i in range(0, len(body) - 4))]


def assert_generic_auth_error(r: httpx.Response) -> None:
    assert r.status_code == 502, (r.request.url, r.status_code, r.text)
    error = openai_error(r.json())
    assert error["code"] == "provider_auth_error", error
    for fragment in key_fragments(GATEWAY_WRONG_KEY) + ["Incorrect API key", "****", "provided"]:
        assert fragment not in r.text, (fragment, r.text)
        assert all(fragment not in v for v in r.headers.values()), (fragment, r.headers)


def test_a_refused_provider_key_is_a_generic_502(gateway_factory: Callable[..., Gateway]) -> None:
    with serving(create_mock_app(api_key=UPSTREAM_TRUE_KEY)) as upstream:
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", openai_api_key=GATEWAY_WRONG_KEY,
                             passthrough="/v1/moderations")
        with gw.client() as http:
            calls = [
                http.post("/v1/chat/completions", json={"model": MODEL, "messages": user()}),
                http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), "stream": True}),
                http.post("/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}),
                http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"}),
                http.post("/v1/responses", json={"model": MODEL, "input": "hi"}),
                http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}),
                http.post("/v1/moderations", json={"input": "hi"}),
            ]
            for r in calls:
                assert_generic_auth_error(r)
            for r in (http.get("/v1/models"), http.get(f"/v1/models/{MODEL}")):
                assert r.status_code in (200, 502)
                assert all(f not in r.text for f in key_fragments(GATEWAY_WRONG_KEY))


def test_a_forbidden_provider_answer_is_a_generic_502(gateway: Gateway) -> None:
    with gateway.client() as http:
        for path, body in (("/v1/chat/completions", {"model": MODEL, "messages": user()}),
                           ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})):
            r = http.post(path, json=body, headers={"X-Mock-Status": "403"})
            assert_generic_auth_error(r)


# --- provider failures name the company's account: never relayed --------------------------------------
SECRET_ORG = "org-secret123"
ACCOUNT_DETAILS = (f"Rate limit reached for gpt-4o-mini in organization {SECRET_ORG} on tokens per min (TPM): "
                   "Limit 30000, Used 29950, Requested 120.")


class ErrorUpstream:
    """Answers every call with `status` and the JSON error `answer(scope)` gives, with its extra headers."""

    def __init__(self, status: int) -> None:
        self.status = status

    def answer(self, scope: Any) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
        raise NotImplementedError

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        error, extra = self.answer(scope)
        body = orjson.dumps(error)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class AccountDetailsUpstream(ErrorUpstream):
    """An error body (OpenAI's or Anthropic's shape) naming the company's organisation, its limit and
    its usage, as OpenAI's rate-limit answers do."""

    def answer(self, scope: Any) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
        if scope["path"].startswith("/v1/messages"):
            error: dict[str, Any] = {"type": "error", "error": {"type": "rate_limit_error"}}
        else:
            error = {"error": {"type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
        error["error"]["message"] = ACCOUNT_DETAILS
        return error, [(b"retry-after", b"7"), (b"openai-organization", SECRET_ORG.encode())]


@pytest.mark.parametrize("status", [429, 500])
def test_provider_failures_do_not_leak_the_account(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, status: int
) -> None:
    """A provider's 429 (or 5xx) message names the company's organisation and its limits: the client
    gets a generic message on every surface — the code, the provider and Retry-After stay."""
    with serving(AccountDetailsUpstream(status)) as upstream:
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", anthropic_api_url=upstream.url,
                             providers_file=tiers_file(tmp_path, "openai"))
        claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 20, "messages": user()}
        with gw.client() as http:
            answers = {  # the native API first: its tier routing skips a provider that just failed
                "native": http.post(NATIVE, json={"messages": user()}),
                "chat": http.post("/v1/chat/completions", json={"model": MODEL, "messages": user()}),
                "messages": http.post("/v1/messages", json=claude),
                "translated": http.post("/v1/messages", json={**claude, "model": MODEL}),
            }
    for surface, r in answers.items():
        assert SECRET_ORG not in r.text and "30000" not in r.text, (surface, r.text)
        assert all(SECRET_ORG not in v for v in r.headers.values()), (surface, r.headers)
        if status == 429:
            assert (r.status_code, r.headers["retry-after"]) == (429, "7"), (surface, r.text)
        else:
            assert r.status_code == 502, (surface, r.text)
        if surface in ("messages", "translated"):
            assert r.json()["error"]["type"] == ("rate_limit_error" if status == 429 else "api_error")
        else:
            error = openai_error(r.json())
            assert error["code"] == ("provider_rate_limited" if status == 429 else "provider_error")
            assert error["provider"] == "openai"


class EchoingUpstream(ErrorUpstream):
    """An error body quoting the credential the call was sent (the whole `Authorization` or
    `x-api-key` header, as proxies and OpenAI-compatible servers have been seen to), in the message,
    the code and the type."""

    def answer(self, scope: Any) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
        sent = {k.decode(): v.decode() for k, v in scope["headers"]}
        credential = sent.get("x-api-key") or sent.get("authorization", "")
        return {"type": "error", "error": {
            "message": f"Incorrect API key provided: {credential}. Headers: {sent}",
            "type": f"invalid_request_error {credential}", "code": f"invalid_api_key:{credential}"}}, []


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_provider_echoing_sentinels_key_never_passes_it_on(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A provider (or a proxy in its place) quoting the key Sentinel sent in an error answer: the key
    reached the client (a relayed 4xx, "rejected the request: ...") and the logs. It is replaced by
    `***` on every surface; the rest of the provider's message is still relayed."""
    caplog.set_level(logging.INFO)
    keys = ("sk-upstream-openai-Hq7Wd2Zr8Kp3", "sk-ant-upstream-Zq81Xv7MwRt3")
    with serving(EchoingUpstream(status)) as upstream:
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", openai_api_key=keys[0],
                             anthropic_api_url=upstream.url, anthropic_api_key=keys[1],
                             providers_file=tiers_file(tmp_path, "openai"))
        claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 20, "messages": user()}
        with gw.client() as http:
            answers = {
                "native": http.post(NATIVE, json={"messages": user()}),
                "chat": http.post("/v1/chat/completions", json={"model": MODEL, "messages": user()}),
                "chat stream": http.post("/v1/chat/completions",
                                         json={"model": MODEL, "messages": user(), "stream": True}),
                "responses": http.post("/v1/responses", json={"model": MODEL, "input": "hi"}),
                "messages": http.post("/v1/messages", json=claude),
                "translated to OpenAI": http.post("/v1/messages", json={**claude, "model": MODEL}),
                "translated to Anthropic": http.post("/v1/chat/completions", json=claude),
            }
    for surface, r in answers.items():
        assert r.status_code == (status if status < 500 and surface != "native" else 400 if status < 500 else 502), (
            surface, r.text)
        for key in keys:
            assert key not in r.text, (surface, r.text)
            assert all(key not in v for v in r.headers.values()), (surface, r.headers)
        if status < 500:  # the provider's message is still relayed, the key in it replaced
            assert "Incorrect API key provided: Bearer ***" in r.text or "provided: ***" in r.text, (surface, r.text)
    logged = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any("***" in line for line in logged), logged
    for key in keys:
        assert not [line for line in logged if key in line]


def test_a_stream_error_event_echoing_sentinels_key_never_passes_it_on(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error event inside a provider's stream quoting the key Sentinel sent: its code and type
    are relayed (or carried by a translated stream's `stream_error`) and its message logged; the key
    went with them. It is replaced by `***` in each."""
    caplog.set_level(logging.INFO)
    openai_key, claude_key = "sk-upstream-openai-Hq7Wd2Zr8Kp3", "sk-ant-upstream-Zq81Xv7MwRt3"

    def openai_error_event(key: str) -> dict[str, Any]:
        return {"error": {"message": f"key {key} refused", "type": f"server_error {key}", "code": f"bad_key:{key}"}}

    def claude_error_event(key: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": f"overloaded_error {key}", "message": f"key {key} refused"}}

    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", openai_api_key=openai_key,
                             anthropic_api_url=srv.url, anthropic_api_key=claude_key,
                             providers_file=tiers_file(tmp_path, "openai"))
        with gw.client() as http:
            upstream.sse(OPENAI_FIRST, openai_error_event(openai_key))
            native = http.post(NATIVE, json={"messages": user(), "stream": True})
            upstream.sse(OPENAI_FIRST, openai_error_event(openai_key))
            to_openai = http.post("/v1/messages", json={**CLAUDE_STREAM, "model": MODEL})
            upstream.sse(CLAUDE_FIRST, claude_error_event(claude_key))
            to_claude = http.post("/v1/chat/completions", json={**CLAUDE_STREAM, "max_tokens": 20})
            upstream.sse(OPENAI_FIRST, openai_error_event(openai_key))
            chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), "stream": True})
            upstream.sse(CLAUDE_FIRST, claude_error_event(claude_key))
            messages = http.post("/v1/messages", json=CLAUDE_STREAM)
    answers = {"native": native, "translated to OpenAI": to_openai, "translated to Anthropic": to_claude,
               "chat": chat, "messages": messages}
    for surface, r in answers.items():
        assert r.status_code == 200, (surface, r.text)
        assert "failed during the stream" in r.text, (surface, r.text)
        assert openai_key not in r.text and claude_key not in r.text, (surface, r.text)
    assert "bad_key:***" in native.text and "bad_key:***" in chat.text
    assert "overloaded_error ***" in messages.text
    logged = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert sum("key *** refused" in line for line in logged) == 5, logged
    assert not [line for line in logged if openai_key in line or claude_key in line]


# --- metric labels -------------------------------------------------------------------------------
def test_a_mid_stream_provider_error_does_not_leak_the_account(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An error event inside a provider's stream is a provider failure too: relayed, native and
    translated streams carry the provider's code and a generic message (once they carried the
    provider's message, naming the company's organisation and its limits), and are recorded as a
    provider failure (502) on every surface."""
    upstream = ScriptedUpstream()
    openai_error_event = {"error": {"message": ACCOUNT_DETAILS, "type": "server_error", "code": "rate_limit_exceeded"}}
    claude_error_event = {"type": "error", "error": {"type": "overloaded_error", "message": ACCOUNT_DETAILS}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url,
                             providers_file=tiers_file(tmp_path, "openai"))
        with gw.client() as http:
            upstream.sse(OPENAI_FIRST, openai_error_event)
            native = http.post(NATIVE, json={"messages": user(), "stream": True})
            upstream.sse(OPENAI_FIRST, openai_error_event)
            to_claude = http.post("/v1/messages", json={**CLAUDE_STREAM, "model": MODEL})
            upstream.sse(CLAUDE_FIRST, claude_error_event)
            to_openai = http.post("/v1/chat/completions", json={**CLAUDE_STREAM, "max_tokens": 20})
            upstream.sse(OPENAI_FIRST, openai_error_event)
            chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), "stream": True})
            upstream.sse(CLAUDE_FIRST, claude_error_event)
            messages = http.post("/v1/messages", json=CLAUDE_STREAM)
            upstream.sse({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
                         {"type": "error", "code": "rate_limit_exceeded", "message": ACCOUNT_DETAILS, "param": None},
                         {"type": "response.failed", "response": {
                             "id": "resp_1", "status": "failed",
                             "error": {"code": "rate_limit_exceeded", "message": ACCOUNT_DETAILS}}})
            responses = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
    answers = {"native": native, "translated to Anthropic": to_claude, "translated to OpenAI": to_openai,
               "chat": chat, "messages": messages, "responses": responses}
    for surface, r in answers.items():
        assert r.status_code == 200, (surface, r.text)
        assert SECRET_ORG not in r.text and "30000" not in r.text, (surface, r.text)
        assert "[DONE]" not in r.text and "message_stop" not in r.text, (surface, r.text)
        assert "failed during the stream" in r.text, (surface, r.text)
    assert '"code":"rate_limit_exceeded"' in native.text and '"code":"rate_limit_exceeded"' in chat.text
    assert '"code":"overloaded_error"' in to_openai.text and '"type":"overloaded_error"' in messages.text
    assert responses.text.count('"code":"rate_limit_exceeded"') == 2
    rows = ledger_rows(gw.settings.database_url)  # each broken stream still recorded
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers.values())
    # ... as the provider failure it is: a relayed stream's was recorded as a success (200)
    assert [r["status"] for r in rows] == [502] * len(answers), rows


def test_a_relayed_stream_error_of_any_shape_does_not_leak_the_account(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Only an error object's `message` was replaced in a relayed stream: a provider (or a proxy in its
    place) answering with a string error, with its text in another field (OpenRouter's
    `metadata.raw`), or with an error event written over two `data` lines (which the SDKs join) had
    the official SDKs raise the provider's message, naming the company's organisation."""
    upstream = ScriptedUpstream()
    first = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]}
    openai_errors = [{"error": ACCOUNT_DETAILS}, {"error": {"code": 429, "message": "x", "metadata": {"raw": ACCOUNT_DETAILS}}}]
    split = ('data: {"error":\ndata: {"message": "' + ACCOUNT_DETAILS + '", "type": "server_error"}}\n\n').encode()
    claude_split = ('event: error\ndata: {"type": "error",\ndata: "error": {"type": "overloaded_error", "message": "'
                    + ACCOUNT_DETAILS + '"}}\n\n').encode()
    raised: list[str] = []
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        client = gw.openai()
        claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
        answers = [*[(upstream.sse, (first, error)) for error in openai_errors],
                   (upstream.typed, (b"text/event-stream", b"data: " + orjson.dumps(first) + b"\n\n" + split))]
        for queue, args in answers:
            queue(*args)  # type: ignore[operator]
            with pytest.raises(openai.APIError) as exc:
                list(client.chat.completions.create(model=MODEL, messages=user(), stream=True))  # type: ignore[arg-type]
            raised.append(str(exc.value.message) + json.dumps(exc.value.body))
        for error in ({"type": "error", "error": ACCOUNT_DETAILS}, None):
            body = orjson.dumps(CLAUDE_FIRST)
            events = b"data: " + body + b"\n\n" + (
                claude_split if error is None else b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
            upstream.typed(b"text/event-stream", events)
            with pytest.raises(anthropic.APIStatusError) as claude_exc:
                with claude.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=20, messages=user()) as stream:  # type: ignore[arg-type]
                    list(stream.text_stream)
            raised.append(str(claude_exc.value.message) + json.dumps(claude_exc.value.body))
    assert len(raised) == 5
    for text in raised:
        assert SECRET_ORG not in text and "failed during the stream" in text, text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 5)  # each recorded once


# What a provider (or a proxy in front of it) puts beside the error in its stream's error event.
PROVIDER_EXTRAS = {"request_id": "req_upstream_0123", "x_proxy_account": SECRET_ORG}


def test_a_relayed_openai_stream_error_carries_nothing_of_the_providers_event_but_its_labels(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Only the error of an OpenAI-format stream's error event was replaced: the event's other fields
    (the provider's `request_id`, what a proxy added, an OpenRouter chunk's id and choices) reached the
    client — in the chunk a chat or completions client reads, and as extra fields of the
    `response.failed` event the openai SDK hands a Responses client. Each is now rebuilt of what the
    SDK reads: the error's labels (its type, code and param) and a generic message."""
    upstream = ScriptedUpstream()
    error = {"message": ACCOUNT_DETAILS, "type": "server_error", "code": "rate_limit_exceeded", "param": None}
    failed = {"type": "response.failed", "sequence_number": 2, **PROVIDER_EXTRAS, "response": {
        "id": "resp_1", "object": "response", "status": "failed", "model": MODEL, "output": [],
        "error": {"code": "rate_limit_exceeded", "message": ACCOUNT_DETAILS}}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        client = gw.openai()
        seen: dict[str, str] = {}
        upstream.sse(OPENAI_FIRST, {**OPENAI_FIRST, **PROVIDER_EXTRAS, "error": error})
        with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=user(), stream=True) as chat:  # type: ignore[arg-type]
            seen["chat"] = chat.read().decode()
        upstream.sse({"id": "cmpl-1", "object": "text_completion", "model": MODEL,
                      "choices": [{"index": 0, "text": "a"}]}, {**PROVIDER_EXTRAS, "error": error})
        with client.completions.with_streaming_response.create(model=MODEL, prompt="hi", stream=True) as completions:
            seen["completions"] = completions.read().decode()
        upstream.sse({"type": "response.created", "sequence_number": 0, "response": {
            "id": "resp_1", "object": "response", "status": "in_progress", "model": MODEL, "output": []}}, failed)
        events = list(client.responses.create(model=MODEL, input="hi", stream=True))
        # ... and the SDK raises each error chunk still, of its labels.
        upstream.sse(OPENAI_FIRST, {**OPENAI_FIRST, **PROVIDER_EXTRAS, "error": error})
        with pytest.raises(openai.APIError) as raised:
            list(client.chat.completions.create(model=MODEL, messages=user(), stream=True))  # type: ignore[arg-type]
    for surface, text in seen.items():
        error_chunk = orjson.loads(next(line for line in text.splitlines() if '"error"' in line).removeprefix("data: "))
        assert error_chunk == {"error": {"type": "server_error", "code": "rate_limit_exceeded", "param": None,
                                         "message": "Provider openai failed during the stream"}}, (surface, text)
    assert events[-1].type == "response.failed"
    assert events[-1].to_dict().keys() == {"type", "sequence_number", "response"}, events[-1]
    assert events[-1].response.error is not None and events[-1].response.error.code == "rate_limit_exceeded"
    assert SECRET_ORG not in json.dumps(events[-1].to_dict())
    assert raised.value.message == "Provider openai failed during the stream"
    assert raised.value.body == {"type": "server_error", "code": "rate_limit_exceeded", "param": None,
                                 "message": "Provider openai failed during the stream"}


def test_a_relayed_error_answer_carries_nothing_of_the_providers_body_but_its_error(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A provider's 4xx, relayed on `/v1` and `/v1/messages` (not streamed), is rebuilt of its
    status, type, code and message: the provider's `request_id` and any other field of its body, or
    of its error, stay out (the body's request id is Sentinel's own)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        upstream.json({"error": {"message": "bad image", "type": "invalid_request_error", "code": "bad_image",
                                 "metadata": {"raw": ACCOUNT_DETAILS}}, **PROVIDER_EXTRAS}, status=400)
        with pytest.raises(openai.BadRequestError) as chat:
            gw.openai().chat.completions.create(model=MODEL, messages=user())  # type: ignore[arg-type]
        upstream.json({"type": "error", "error": {"type": "invalid_request_error", "message": "bad image",
                                                  "details": ACCOUNT_DETAILS}, **PROVIDER_EXTRAS}, status=400)
        with pytest.raises(anthropic.BadRequestError) as messages:
            gw.anthropic().messages.create(model="claude-3-5-haiku-20241022", max_tokens=20, messages=user())  # type: ignore[arg-type]
    for raised in (chat.value, messages.value):
        text = raised.response.text
        assert "bad image" in text and SECRET_ORG not in text and "req_upstream_0123" not in text, text
    assert chat.value.code == "bad_image" and messages.value.body["request_id"] == messages.value.request_id  # type: ignore[index]


def test_a_providers_long_stream_error_message_is_clipped_in_the_log(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider's in-stream error message is logged for operators (`sentinel.upstream`): it was
    logged whole, so a provider (or what answers in its place) set the size of each log line. It is
    cut to 256 characters like everything else logged that Sentinel does not write itself."""
    caplog.set_level(logging.INFO, logger="sentinel.upstream")
    upstream = ScriptedUpstream()
    huge = "quota of org-company " + "x" * 100_000
    openai_error_event = {"error": {"message": huge, "type": "server_error", "code": "server_error"}}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        with gw.client() as http:
            upstream.sse(OPENAI_FIRST, openai_error_event)
            native = http.post(NATIVE, json={"messages": user(), "stream": True})
            upstream.sse(OPENAI_FIRST, openai_error_event)
            chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user(), "stream": True})
    assert native.status_code == chat.status_code == 200, (native.text, chat.text)
    logged = [getattr(r, "error", None) for r in caplog.records if r.getMessage() == "provider stream failed"]
    assert len(logged) == 2, logged
    assert all(isinstance(e, str) and e.startswith("quota of org-company") and len(e) == 257 for e in logged), logged


def metrics_text(gw: Gateway) -> str:
    return httpx.get(gw.url + "/metrics").text


@pytest.mark.parametrize("length", [3000, 190])
def test_made_up_model_names_do_not_grow_the_metrics(gateway_factory: Callable[..., Gateway], length: int) -> None:
    gw = gateway_factory(default_plan="requests=1000/1m", usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        def ask(tag: str) -> int:
            """Both endpoints with a made-up model name; how many were served."""
            name = (tag + "-" + "m" * length)[:length]
            served = 0
            for path, body in (("/v1/chat/completions", {"model": name, "messages": user()}),
                               ("/v1/embeddings", {"model": name, "input": "hi"})):
                status = http.post(path, json=body).status_code
                assert status < 500
                served += status == 200
            return served


        served = ask("warmup")  # the first made-up name may create the `other` series once,
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == served)  # a first delivery its own,
        metrics_text(gw)  # and the first scrape the /metrics route's
        before = metrics_text(gw)
        for i in range(5):
            ask(f"made-up-{i}")
        after = metrics_text(gw)
    assert series(after) == series(before)  # no new series at all
    assert len(after) - len(before) < 600, len(after) - len(before)
    assert "made-up-" not in after and "warmup" not in after and "m" * 100 not in after


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_a_providers_stream_error_codes_do_not_grow_the_metrics(gateway_factory: Callable[..., Gateway]) -> None:
    """The code of a provider's error event inside a translated stream was counted as the label
    `kind="stream_<code>"`: any string a provider (or what answers in its place) sends made a
    series of its own, forever. It is counted as `stream_upstream_error`; the client's error
    event still carries the provider's code."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        with gw.client() as http:
            to_claude, to_openai = [], []
            for i in range(5):
                upstream.sse(CLAUDE_FIRST, {"type": "error", "error": {"type": f"made-up-code-{i}", "message": "m"}})
                to_claude.append(http.post("/v1/chat/completions", json={
                    "model": "claude-3-5-haiku-20241022", "messages": user(), "stream": True}))
                upstream.sse(OPENAI_FIRST, {"error": {"message": "m", "type": "server_error", "code": f"made-up-code-{i}"}})
                to_openai.append(http.post("/v1/messages", json={
                    "model": MODEL, "max_tokens": 20, "messages": user(), "stream": True}))
            text = metrics_text(gw)
    assert all(a.status_code == 200 for a in to_claude + to_openai), [a.text for a in to_claude + to_openai]
    assert "made-up-code-3" in to_claude[3].text  # the client is told the provider's code
    assert "made-up-code" not in text
    for provider in ("anthropic", "openai"):
        assert sample_sum(text, "sentinel_upstream_errors_total", provider=provider, kind="stream_upstream_error") == 5


def test_what_a_provider_sends_is_cut_in_every_log_line(
    gateway_factory: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    """A provider's error answer is logged: the code of a refusal relayed to the client (`request
    failed`) was logged whole, and the message of a 429 or a 5xx (`provider rate limited`, `provider
    failed`) at 500 characters, so a provider (or what answers in its place) set the size of each
    log line. Both are cut to 256 characters like everything else logged that Sentinel did not write."""
    caplog.set_level(logging.INFO)
    upstream = ScriptedUpstream()
    huge = "x" * 30_000  # (an error body is read up to 64 KiB)
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        claude = {"model": MODEL, "max_tokens": 20, "messages": user()}  # translated to the OpenAI upstream
        with gw.client() as http:
            answers = []
            for status in (400, 429, 500):
                upstream.json({"error": {"message": "m " + huge, "type": "invalid_request_error", "code": "c" + huge}},
                              status=status)
                answers.append(http.post("/v1/messages", json=claude).status_code)
    assert answers == [400, 429, 502]
    logged = [r for r in caplog.records if r.name in ("sentinel.request", "sentinel.upstream")]
    assert {r.getMessage() for r in logged} >= {"request failed", "provider rate limited", "provider failed"}
    fields = [str(getattr(r, key)) for r in logged for key in ("code", "error") if hasattr(r, key)]
    assert any(f.startswith("c" + "x" * 200) for f in fields) and any(f.startswith("m ") for f in fields)
    assert all(len(f) <= 257 for f in fields), sorted(len(f) for f in fields)
