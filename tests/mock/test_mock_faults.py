"""Every fault knob of the mock upstream, through headers, query flags and `#mock:` directives."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import httpx2
import openai
import pytest

from sentinel.mock import running_mock
from tests.mock.mockwire import ANTHROPIC_AUTH, OPENAI_AUTH, sse_data

USER = [{"role": "user", "content": "one two three four five"}]
CHAT = {"model": "m", "messages": USER}


def test_status_via_header_openai(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model="m", messages=USER, extra_headers={"X-Mock-Status": "503"})
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error" and body["message"]
    assert caught.value.response.headers["retry-after"] == "1"


def test_status_429_via_query_has_retry_after(http: httpx.Client, oai: openai.OpenAI) -> None:
    r = http.post(
        "/v1/chat/completions",
        params={"mock_status": "429", "mock_retry_after": "7"},
        json=CHAT,
        headers=OPENAI_AUTH,
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        oai.embeddings.create(model="m", input="x", extra_query={"mock_status": "429"})


def test_status_via_directive_anthropic(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        claude.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi #mock:status=529"}]
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": caught.value.body["error"]["message"]},
        "request_id": caught.value.response.headers["request-id"],
    }
    assert caught.value.request_id == caught.value.response.headers["request-id"]
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "#mock:status=429"}]
        )
    assert limited.value.response.headers["retry-after"] == "1"


def test_header_beats_directive(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x #mock:status=500"}],
            extra_headers={"X-Mock-Status": "418"},
        )
    assert caught.value.status_code == 418


def test_directive_is_not_echoed(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "keep #mock:no_usage me"}]
    )
    assert out.choices[0].message.content == "Echo: keep me"
    assert out.usage is None


def test_bad_knob_values_are_400(http: httpx.Client) -> None:
    assert (
        http.post(
            "/v1/chat/completions", json=CHAT, headers={**OPENAI_AUTH, "X-Mock-Status": "abc"}
        ).status_code
        == 400
    )
    r = http.post(
        "/v1/chat/completions",
        headers=OPENAI_AUTH,
        json={"model": "m", "messages": [{"role": "user", "content": "#mock:bogus"}]},
    )
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]


def test_error_code_and_google_shape(http: httpx.Client) -> None:
    """`error_code` names the error's code (OpenAI's `code`, Google's ErrorInfo reason); `error_shape`
    answers in Google's shape (Gemini's), `google_list` as a list of one (its OpenAI-compatible endpoint)."""
    def post(text: str) -> httpx.Response:
        return http.post("/v1/chat/completions", headers=OPENAI_AUTH,
                         json={"model": "m", "messages": [{"role": "user", "content": text}]})

    region = post("hi #mock:status=403 #mock:error_code=unsupported_country_region_territory")
    assert region.status_code == 403 and region.json()["error"]["code"] == "unsupported_country_region_territory"
    listed = post("hi #mock:status=403 #mock:error_shape=google_list #mock:error_code=API_KEY_SERVICE_BLOCKED")
    assert listed.status_code == 403
    (google,) = listed.json()
    assert (google["error"]["code"], google["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert google["error"]["details"][0]["reason"] == "API_KEY_SERVICE_BLOCKED"
    bare = post("hi #mock:status=402 #mock:error_shape=google").json()
    assert bare["error"]["code"] == 402 and "details" not in bare["error"]
    assert post("hi #mock:status=403 #mock:error_shape=square").status_code == 400  # no such shape
    assert post("hi #mock:status=403 #mock:error_code=a{b").status_code == 400


def test_disconnect_mid_stream_openai(http: httpx.Client, oai: openai.OpenAI) -> None:
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={**OPENAI_AUTH, "X-Mock-Disconnect-After": "3"},
        ) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                received.append(chunk)
    data = sse_data(b"".join(received).decode())
    assert len(data) == 3 and "[DONE]" not in data
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data)
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for chunk in oai.chat.completions.create(
            model="m", messages=USER, stream=True, extra_headers={"X-Mock-Disconnect-After": "2"}
        ):
            seen.append(chunk.choices[0].delta.content or "")
    assert seen == ["", "Echo:"]


def test_disconnect_large_value_still_cuts_before_terminal_event(http: httpx.Client) -> None:
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
        with http.stream(
            "POST", "/v1/messages", json=body, headers={**ANTHROPIC_AUTH, "X-Mock-Disconnect-After": "999"}
        ) as r:
            received.extend(r.iter_bytes())
    text = b"".join(received).decode()
    assert "message_delta" in text and "message_stop" not in text


def test_disconnect_via_directive_anthropic(claude: anthropic.Anthropic) -> None:
    types: list[str] = []
    # The anthropic SDK lets the transport's error through when a stream is cut mid-body.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):  # noqa: PT012
        for event in claude.messages.create(
            model="m",
            max_tokens=50,
            stream=True,
            messages=[{"role": "user", "content": "a b c #mock:disconnect_after=4"}],
        ):
            types.append(event.type)
    assert types == ["message_start", "content_block_start", "content_block_delta"]  # the SDK hides ping


def test_disconnect_non_stream(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=USER, extra_query={"mock_disconnect_after": "0"})


@pytest.mark.parametrize("stream", [False, True])
def test_drop_after_ms_closes_the_connection_before_any_answer(http: httpx.Client, stream: bool) -> None:
    """A provider that crashed, or a proxy that cut a request it held: the connection closes before
    an answer began (an error status asked for too is never sent)."""
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        http.post("/v1/chat/completions", json={**CHAT, "stream": stream},
                  headers={**OPENAI_AUTH, "X-Mock-Drop-After-Ms": "0", "X-Mock-Status": "500"})
    claude = [{"role": "user", "content": "hi #mock:drop_after_ms=10"}]
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        http.post("/v1/messages", json={"model": "m", "max_tokens": 5, "stream": stream, "messages": claude},
                  headers=ANTHROPIC_AUTH)
    assert http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH).status_code == 200  # the next is served


def test_malformed_chunk(http: httpx.Client, oai: openai.OpenAI) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={**OPENAI_AUTH, "X-Mock-Malformed-Chunk": "1"},
    )
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    broken = []
    for payload in data[:-1]:
        try:
            json.loads(payload)
        except json.JSONDecodeError:
            broken.append(payload)
    assert len(broken) == 1
    good = [json.loads(d) for d in data[:-1] if d not in broken]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in good)
        == "Echo: one two three four five"
    )
    with pytest.raises(json.JSONDecodeError):
        list(
            oai.chat.completions.create(
                model="m", stream=True, messages=[{"role": "user", "content": "x #mock:malformed"}]
            )
        )
    plain = http.post("/v1/chat/completions", json=CHAT, params={"mock_malformed": ""}, headers=OPENAI_AUTH)
    assert plain.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.text)


def test_malformed_anthropic_stream(http: httpx.Client) -> None:
    body = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "a b #mock:malformed"}],
    }
    data = sse_data(http.post("/v1/messages", json=body, headers=ANTHROPIC_AUTH).text)
    bad = [d for d in data if not _is_json(d)]
    assert len(bad) == 1 and json.loads(data[-1])["type"] == "message_stop"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def test_no_usage_everywhere(oai: openai.OpenAI, http: httpx.Client) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Mock-No-Usage": "true"},
        )
    )
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    emb = http.post("/v1/embeddings", json={"model": "m", "input": "x #mock:no_usage"}, headers=OPENAI_AUTH)
    assert "usage" not in emb.json()
    body = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "a b #mock:no_usage"}],
    }
    events = [
        json.loads(d) for d in sse_data(http.post("/v1/messages", json=body, headers=ANTHROPIC_AUTH).text)
    ]
    assert "usage" not in events[0]["message"]
    assert all("usage" not in e for e in events)
    resp = http.post(
        "/v1/responses",
        json={"model": "m", "input": "x", "stream": True},
        headers={**OPENAI_AUTH, "X-Mock-No-Usage": "1"},
    )
    assert json.loads(sse_data(resp.text)[-1])["response"]["usage"] is None


def test_latency_per_request(oai: openai.OpenAI) -> None:
    started = time.perf_counter()
    oai.models.list()
    fast = time.perf_counter() - started
    started = time.perf_counter()
    oai.chat.completions.create(model="m", messages=USER, extra_headers={"X-Mock-Latency-Ms": "250"})
    assert time.perf_counter() - started >= 0.25
    started = time.perf_counter()
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x #mock:latency_ms=150"}])
    assert time.perf_counter() - started >= 0.15
    assert fast < 0.15


def test_chunk_delay(http: httpx.Client) -> None:
    started = time.perf_counter()
    r = http.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={**OPENAI_AUTH, "X-Mock-Chunk-Delay-Ms": "20"},
    )
    events = sse_data(r.text)
    assert time.perf_counter() - started >= 0.02 * (len(events) - 1)


def test_server_wide_latency() -> None:
    with running_mock(latency_ms=200) as url, httpx.Client(base_url=url) as client:
        started = time.perf_counter()
        r = client.get("/v1/models", headers=OPENAI_AUTH)
        assert r.status_code == 200
        assert time.perf_counter() - started >= 0.2
        started = time.perf_counter()
        assert client.get("/v1/models", headers={"X-Mock-Latency-Ms": "100"}).status_code == 401
        assert time.perf_counter() - started >= 0.3  # server-wide and per-request delays add up


@pytest.mark.parametrize(("path", "body", "ping"), [
    ("/v1/chat/completions", {**CHAT, "stream": True}, b": ping\n\n"),
    ("/v1/messages", {"model": "m", "max_tokens": 50, "stream": True, "messages": USER},
     b'event: ping\ndata: {"type": "ping"}\n\n'),
])
def test_pings_after_sends_only_pings_after_its_events(
    http: httpx.Client, path: str, body: dict[str, object], ping: bytes
) -> None:
    """A stream without end: its first N events, then keep-alive pings until the client leaves."""
    auth = OPENAI_AUTH if path.endswith("completions") else ANTHROPIC_AUTH
    received = b""
    with http.stream("POST", path, json=body, headers={**auth, "X-Mock-Pings-After": "2"}) as r:
        for chunk in r.iter_raw():
            received += chunk
            if received.count(ping) >= 3:
                break
    head, _, tail = received.partition(ping)
    assert head.count(b"data: ") == 2  # the two events, then only pings
    assert tail.replace(ping, b"") == b""


@pytest.mark.parametrize("status", [None, "429"])
def test_trickle_sends_the_body_one_byte_at_a_time(http: httpx.Client, status: str | None) -> None:
    """A body that takes for ever to come: the headers at once, then one byte per read (an error's too)."""
    headers = {**OPENAI_AUTH, "X-Mock-Trickle-Ms": "2", **({"X-Mock-Status": status} if status else {})}
    with http.stream("POST", "/v1/chat/completions", json=CHAT, headers=headers) as r:
        assert r.status_code == int(status or 200)
        chunks = list(r.iter_raw())
    assert len(chunks) > 1  # (bytes sent apart may still be read together)
    body = json.loads(b"".join(chunks))
    assert body["error"]["code"] == "rate_limit_exceeded" if status else body["object"] == "chat.completion"


def test_trickle_stops_when_its_client_leaves(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json=CHAT, headers={**OPENAI_AUTH, "X-Mock-Trickle-Ms": "20"}) as r:
        first = next(r.iter_raw())
    assert len(first) == 1
    assert http.get("/v1/models", headers=OPENAI_AUTH).status_code == 200  # the mock serves on


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLAUDE_TOOL = {"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/v1/chat/completions", {**CHAT, "stream": True, "tools": [TOOL]}, b'"function":{"arguments":"xxxx'),
    ("/v1/messages", {"model": "m", "max_tokens": 50, "stream": True, "messages": USER, "tools": [CLAUDE_TOOL]},
     b'"partial_json":"xxxx'),
])
def test_endless_tool_args_streams_argument_fragments_until_the_client_leaves(
    http: httpx.Client, path: str, body: dict[str, object], fragment: bytes
) -> None:
    """A tool call whose arguments never end: its events, then 64 KiB fragments of it without end
    (never the stream's finish)."""
    auth = OPENAI_AUTH if path.endswith("completions") else ANTHROPIC_AUTH
    received = b""
    with http.stream("POST", path, json=body, headers={**auth, "X-Mock-Endless-Tool-Args": "1"}) as r:
        for chunk in r.iter_raw():
            received += chunk
            if received.count(fragment) >= 20:
                break
    assert len(received) > 19 * 64 * 1024
    assert b'"get_weather"' in received.split(fragment)[0]  # the call came first
    for end in (b"finish_reason\":\"tool_calls", b"content_block_stop", b"[DONE]", b"message_stop"):
        assert end not in received


def test_error_after_ends_an_anthropic_stream_with_the_overloaded_error_event(
    claude: anthropic.Anthropic, http: httpx.Client,
) -> None:
    """Anthropic's overload after a stream began: its `error` event, then the end of a whole stream."""
    types: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
        for event in claude.messages.create(
            model="m", max_tokens=50, stream=True,
            messages=[{"role": "user", "content": "a b c #mock:error_after=4"}],
        ):
            types.append(event.type)
    assert types == ["message_start", "content_block_start", "content_block_delta"]  # the SDK hides ping
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                                 "request_id": "req_mock_overloaded"}
    chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    plain = sse_data(http.post("/v1/chat/completions", json=chat, headers={**OPENAI_AUTH, "x-mock-error-after": "1"}
                               ).text)
    assert plain[-1] == "[DONE]"  # an OpenAI stream: no effect
