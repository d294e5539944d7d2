"""A call the provider served is recorded whatever happens after it answered: the store failing
while the answer's objects are claimed, an answer Sentinel reads oddly, a body cut off after a 2xx,
a stream whose relay is cancelled (the server stopping past its deadline)."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from sentinel.domain.usage import charge_id
from sentinel.errors import StoreUnavailable
from sentinel.governance.ownership import Ownership
from sentinel.native.stream import OpenAIStreamNormalizer
from sentinel.quota.usage import StreamInspector
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import RawUpstream, ScriptedUpstream, lifespan

RESPONSE = {"model": "gpt-4o-mini", "input": "hi"}


def recorded(gw: Gateway, rid: str) -> list[dict[str, Any]]:
    return [row for row in ledger_rows(gw.settings.database_url) if row["request_id"] == rid]


@pytest.mark.parametrize("stream", [False, True])
def test_a_store_failure_while_claiming_the_answers_object_does_not_lose_the_call(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The object a response creates was claimed before the usage was recorded: a store blip there
    gave the reservation back and recorded nothing (a 503 to the client, or a whole stream
    delivered) although the provider had served and billed the call. The record comes first; the
    object stays unowned (unreachable through Sentinel: it fails closed)."""

    async def unavailable(self: Ownership, object_id: str, owner: str, ttl: float | None) -> bool:
        raise StoreUnavailable("store down")

    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    monkeypatch.setattr(Ownership, "claim", unavailable)
    with gw.client() as http:
        r = http.post("/v1/responses", json={**RESPONSE, "stream": stream})
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        assert wait_for(lambda: len(recorded(gw, rid)) == 1), ledger_rows(gw.settings.database_url)
        assert recorded(gw, rid)[0]["status"] == 200
        response_id = r.json()["id"] if not stream else None
        if response_id is not None:  # unowned: nobody can read it through Sentinel, its maker neither
            assert http.get(f"/v1/responses/{response_id}").status_code == 404


def test_a_store_failure_while_forgetting_a_deleted_object_answers_the_delete(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider deleted the object, then the store failed while its owner record was dropped:
    the client got a 503 for a delete that had happened (and no record of the call). The delete's
    answer is relayed; the record left names the deleted object's maker only."""

    async def unavailable(self: Ownership, object_id: str, **_: Any) -> None:
        raise StoreUnavailable("store down")

    gw = gateway_factory(usage_flush_interval_seconds=0.1, passthrough="/v1/files,/v1/files/*")
    with gw.client() as http:
        upload = http.post("/v1/files", files={"file": ("a.txt", b"mine")}, data={"purpose": "user_data"})
        assert upload.status_code == 200, upload.text
        monkeypatch.setattr(Ownership, "forget", unavailable)
        r = http.delete(f"/v1/files/{upload.json()['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] is True
        rid = r.headers["x-request-id"]
        assert wait_for(lambda: len(recorded(gw, rid)) == 1), ledger_rows(gw.settings.database_url)
        assert recorded(gw, rid)[0]["status"] == 200


def test_an_answer_whose_text_is_not_a_string_is_served_and_recorded(gateway_factory: Callable[..., Gateway]) -> None:
    """`text: null` (or a number) in a Responses answer without usage raised a TypeError while the
    output was counted: a 500, no record, and the reservation never given back nor committed."""
    upstream = ScriptedUpstream()
    answer = {"id": "resp_odd", "object": "response", "status": "completed", "model": "gpt-4o-mini",
              "output": [{"type": "message", "content": [{"type": "output_text", "text": None},
                                                         {"type": "output_text", "text": 5}]}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        with gw.client() as http:
            upstream.json(answer)
            r = http.post("/v1/responses", json={**RESPONSE, "store": False})
    assert r.status_code == 200, r.text
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["status"], row["usage_source"]) for row in rows] == [(200, "estimated")], rows


async def _cut_off_after_headers(scope: Any, receive: Any, send: Any) -> None:
    """Answers 200 with a Content-Length of 1,000 and closes after 10 bytes."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b'{"id": "ch', "more_body": True})
    raise RuntimeError("the provider's connection breaks here")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
])
def test_a_2xx_answer_cut_off_while_read_is_recorded_not_given_back(
    gateway_factory: Callable[..., Gateway], path: str, body: dict[str, Any]
) -> None:
    """A connection that broke after the provider's 2xx headers was a connection error: the
    reservation was given back (a billed call became free and unrecorded), and a model with a second
    target would have been sent again (billed twice). It is a served call Sentinel could not read:
    502, recorded with all the output it reserved."""
    with serving(_cut_off_after_headers) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        with gw.client() as http:
            r = http.post(path, json=body)
    assert r.status_code == 502, r.text
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["status"], row["usage_source"]) for row in rows] == [(502, "estimated")], rows
    assert rows[0]["output_tokens"] > 0


async def test_a_stream_relay_cancelled_by_the_server_stopping_is_still_settled() -> None:
    """Past the shutdown deadline uvicorn cancels the requests still running: the relay task was
    cancelled, its body closed while that task still ran it (RuntimeError: aclose() of a running
    generator) and `on_close` — which records the stream — never ran."""
    from sentinel.api.responses import StreamingRelay

    waiting = asyncio.Event()
    closed: list[bool] = []

    async def body() -> Any:
        yield b"data: first\n\n"
        await waiting.wait()  # the upstream's next event never comes
        yield b"data: never\n\n"

    async def on_close(disconnected: bool) -> None:
        closed.append(disconnected)

    sent: list[dict[str, Any]] = []
    first_chunk_sent = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body"):
            first_chunk_sent.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    relay = StreamingRelay(200, [], body(), on_close)
    task = asyncio.ensure_future(relay({"type": "http"}, receive, send))
    await first_chunk_sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [False]


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
_CHUNKS = (
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a reply"}, "finish_reason": "stop"}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
    "[DONE]",
)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_header_that_is_not_ascii_is_dropped_not_a_500(
    gateway_factory: Callable[..., Gateway], stream: bool
) -> None:
    """A provider header holding a byte past ASCII (aiohttp decodes it as UTF-8 with surrogates)
    could not be encoded for the client: a 500 after the provider had served the call, no record,
    and — for a stream — the reservation never given back nor committed."""
    upstream = ScriptedUpstream()
    odd: dict[str, str | bytes] = {"content-disposition": b"caf\xe9 \xff", "openai-version": "\u20ac",
                                   "openai-processing-ms": "12"}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        with gw.client() as http:
            if stream:
                upstream.sse(*_CHUNKS, headers=odd)
            else:
                upstream.json({**_CHUNKS[0], "object": "chat.completion", "usage": {"prompt_tokens": 5,
                               "completion_tokens": 7}, "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "a reply"}}]}, headers=odd)
            r = http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert r.status_code == 200, r.text
    assert "content-disposition" not in r.headers and "openai-version" not in r.headers
    assert r.headers["openai-processing-ms"] == "12"
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [(200, "measured", 7)], rows


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_json_answer_to_a_stream_request_is_charged_its_usage(
    gateway_factory: Callable[..., Gateway], path: str
) -> None:
    """A server that ignores `stream` and answers JSON: the answer went through the stream
    inspector, which found no events — relayed whole, charged 0 output tokens."""
    upstream = ScriptedUpstream()
    if path == "/v1/messages":
        body: dict[str, Any] = {"model": "claude-3-5-haiku-20241022", "max_tokens": 500, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}
        answer: dict[str, Any] = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "stop_reason": "end_turn",
            "stop_sequence": None, "content": [{"type": "text", "text": "a reply"}],
            "usage": {"input_tokens": 5, "output_tokens": 400}}
    else:
        body = {**CHAT, "stream": True}
        answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                  "usage": {"prompt_tokens": 5, "completion_tokens": 400},
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}]}
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        with gw.client() as http:
            upstream.json(answer)
            r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == answer["usage"]  # relayed as the provider sent it
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["usage_source"], row["output_tokens"]) for row in rows] == [("measured", 400)], rows


ASK = [{"role": "user", "content": "weather in Paris?"}]
TRANSLATED = ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 50, "messages": ASK, "stream": True})
NATIVE = ("/native/v1/chat/completions", {"messages": ASK, "max_tokens": 50, "stream": True})


def translated_and_native(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, queue: Callable[[ScriptedUpstream], None],
    *, stream: bool = True,
) -> tuple[Gateway, list[httpx.Response]]:
    """The same scripted OpenAI answer (`queue` puts it on the upstream) to a translated
    (`/v1/messages`) and a native request, in that order: the gateway and the two answers."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        answers = []
        with gw.client() as http:
            for path, body in (TRANSLATED, NATIVE):
                queue(upstream)
                answers.append(http.post(path, json={**body, "stream": stream}))
    return gw, answers


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_stream_with_a_malformed_tool_call_index_ends_with_an_error_event(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A tool call whose `index` is a list raised a TypeError mid-stream: the client's connection was
    cut without an error event and the call recorded as a success (200). It is a stream error now."""
    call = {"index": [0], "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    events = (chunk({"role": "assistant", "content": "Checking."}), chunk({"tool_calls": [call]}),
              chunk({}, "tool_calls"), "[DONE]")
    gw, answers = translated_and_native(gateway_factory, tmp_path, lambda upstream: upstream.sse(*events))
    translated, native = answers
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert "event: error" in translated.text and "message_stop" not in translated.text
    assert '"code":"parse_error"' in native.text and "[DONE]" not in native.text
    for r in answers:
        rid = r.headers["x-request-id"]
        assert wait_for(lambda rid=rid: len(recorded(gw, rid)) == 1)
        assert recorded(gw, rid)[0]["status"] == 502


def test_an_unexpected_failure_mid_stream_ends_the_stream_as_a_502(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Any exception a stream step raises (a bug, a shape no check foresaw), not only a stream error:
    the translated and native streams end with their error event, the relay ends its stream, and the
    call is recorded with 502 (it was cut off and recorded as 200)."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OpenAIStreamNormalizer, "_choice", broken)
    monkeypatch.setattr(StreamInspector, "_absorb", broken)
    upstream = ScriptedUpstream()
    events = (chunk({"role": "assistant", "content": "Hello"}), chunk({}, "stop"), "[DONE]")
    relayed = ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "stream": True})
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        answers = []
        with gw.client() as http:
            for path, body in (relayed, TRANSLATED, NATIVE):
                upstream.sse(*events)
                answers.append(http.post(path, json=body))
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert "[DONE]" not in answers[0].text and '"code":"internal_error"' in answers[0].text
    assert "event: error" in answers[1].text and "message_stop" not in answers[1].text
    assert '"code":"internal_error"' in answers[2].text and "[DONE]" not in answers[2].text
    for r in answers:
        rid = r.headers["x-request-id"]
        assert wait_for(lambda rid=rid: len(recorded(gw, rid)) == 1)
        assert recorded(gw, rid)[0]["status"] == 502


OPENAI_ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                 "usage": {"prompt_tokens": 5, "completion_tokens": 400},
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}]}


def test_a_json_answer_to_a_translated_or_native_stream_is_charged_its_usage(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """The native and translated streams read a JSON answer as an event stream without events: a
    stream error to the client and 0 output recorded for a call the provider served (400 tokens)."""
    gw, answers = translated_and_native(gateway_factory, tmp_path, lambda upstream: upstream.json(OPENAI_ANSWER))
    for r in answers:
        assert r.status_code == 502, r.text
        rows = recorded(gw, r.headers["x-request-id"])
        assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
            (502, "measured", 400)], rows


@pytest.mark.parametrize("depth", [250, 300])  # 250: writable alone, not inside the answer
def test_tool_arguments_too_deep_to_write_back_are_recorded(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, depth: int
) -> None:
    """orjson reads 1,024 levels but writes 255: a served answer whose tool-call arguments nest deeper
    raised while its output was counted (native: a 500, no record, the reservation kept; translated:
    given back, a served call free). It is an answer Sentinel cannot read: 502, its usage recorded."""
    deep = '{"a":' + "[" * depth + "]" * depth + "}"
    answer = {**OPENAI_ANSWER, "usage": {"prompt_tokens": 5, "completion_tokens": 7}, "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": deep}}]}}]}
    gw, answers = translated_and_native(gateway_factory, tmp_path, lambda upstream: upstream.json(answer),
                                        stream=False)
    for r in answers:
        assert r.status_code == 502, r.text
        rows = recorded(gw, r.headers["x-request-id"])
        assert [(row["status"], row["output_tokens"]) for row in rows] == [(502, 7)], rows


@pytest.mark.parametrize("tool_calls", [5, True, {"id": "call_1"}, "call"])
def test_tool_calls_that_are_not_a_list_are_an_unreadable_answer_recorded(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, tool_calls: Any
) -> None:
    """An OpenAI-format answer whose `message.tool_calls` is a number (or `true`) raised a TypeError
    while it was read: a 500 to the client, the reservation given back and no record of a call the
    provider served and billed. It is an answer Sentinel cannot read: 502 in the surface's shape, its
    usage recorded."""
    answer = {**OPENAI_ANSWER, "usage": {"prompt_tokens": 5, "completion_tokens": 7}, "choices": [
        {"index": 0, "finish_reason": "tool_calls",
         "message": {"role": "assistant", "content": None, "tool_calls": tool_calls}}]}
    gw, answers = translated_and_native(gateway_factory, tmp_path, lambda upstream: upstream.json(answer),
                                        stream=False)
    translated, native = answers
    assert translated.status_code == native.status_code == 502, [r.text for r in answers]
    assert translated.json()["type"] == "error" and translated.json()["error"]["type"] == "api_error"
    assert native.json()["error"]["code"] == "provider_bad_response"
    for r in answers:
        rows = recorded(gw, r.headers["x-request-id"])
        assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
            (502, "measured", 7)], rows
        # Served and billed: the SDKs are told not to retry it (each retry was charged again).
        assert r.headers.get("x-should-retry") == "false", r.headers


def test_client_tool_arguments_too_deep_to_send_on_are_a_400(gateway: Gateway) -> None:
    """An assistant message's tool-call arguments nested just under orjson's limit alone, but over it
    inside the translated request: the request body could not be written (a 500)."""
    deep = '{"a":' + "[" * 250 + "]" * 250 + "}"
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": deep}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    with gateway.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "claude-3-5-haiku-20241022", "max_tokens": 20,
                                                    "messages": messages})
    assert r.status_code == 400, r.text
    assert "nested too deep" in r.json()["error"]["message"]


class EndlessError:
    """Answers every request with `status` and a body that does not end: 64 KiB pieces, 64 of them (4
    MiB), then held open until the gateway leaves (`left`)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.left = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "', "more_body": True})
        for _ in range(64):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left.set()


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize(("path", "body", "shape"), [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK}, "openai"),
    ("/v1/messages", {"model": "claude-3-5-haiku-20241022", "max_tokens": 50, "messages": ASK}, "anthropic"),
    ("/native/v1/chat/completions", {"messages": ASK, "max_tokens": 50}, "openai"),
])
def test_an_error_answer_without_end_is_not_read_to_its_end(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, status: int, path: str, body: dict[str, Any], shape: str,
) -> None:
    """An error answer's body was read whole for its message: one without end (a hostile or broken
    upstream, or a proxy between) held the request until the upstream read timeout, growing the
    process's memory all the while. Only its first 64 KiB are read: the connection is dropped and the
    client answered at once, in its surface's shape."""
    upstream = EndlessError(status)
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url,
                             providers_file=tiers_file(tmp_path, "openai"), upstream_timeout_seconds=120)
        with gw.client() as http:  # (30 s: within the upstream read timeout)
            r = http.post(path, json=body)
        assert upstream.left.wait(30)
    assert r.status_code == (400 if status == 400 else 502), r.text
    error = r.json()["error"]
    assert ("type" in r.json()) == (shape == "anthropic") and "x" * 100 not in error["message"]
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["status"], row["output_tokens"]) for row in rows] == ([(400, 0)] if status == 400 else []), rows


@pytest.mark.parametrize(("path", "body", "shape"), [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK}, "openai"),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "stream": True}, "openai"),
    ("/v1/messages", {"model": "claude-3-5-haiku-20241022", "max_tokens": 50, "messages": ASK}, "anthropic"),
])
def test_a_protocol_switch_from_the_provider_is_a_provider_error_never_relayed(
    gateway_factory: Callable[..., Gateway], path: str, body: dict[str, Any], shape: str,
) -> None:
    """A provider (or a proxy between) answering 101 Switching Protocols: its status went to the
    client as the answer's own — the client's connection switched protocols (httpx: a protocol
    error, no answer at all) and the call was recorded as served. It is a provider failure, as a
    3xx is: 502 `provider_error` in the surface's shape, nothing recorded (nothing was served)."""
    upstream = RawUpstream(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                           b'{"id": "c1", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}')
    gw = gateway_factory(openai_api_url=upstream.url + "/v1", anthropic_api_url=upstream.url)
    with gw.client() as http:
        r = http.post(path, json=body)
    assert r.status_code == 502, r.text
    assert ("type" in r.json()) == (shape == "anthropic")
    assert r.json()["error"]["type"] == ("api_error" if shape == "anthropic" else "upstream_error")
    assert upstream.requests == 1
    assert recorded(gw, r.headers["x-request-id"]) == []


@pytest.mark.parametrize(("content_type", "body"), [
    (b"application/json", b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "a long answer'),  # cut JSON
    (b"text/html", b"<html><body>a long answer</body></html>"),
])
@pytest.mark.parametrize(("path", "request_body", "reserved"), [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "max_tokens": 300}, 300),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "weather in Paris?", "max_tokens": 200}, 200),
    ("/v1/messages", {"model": "claude-3-5-haiku-20241022", "messages": ASK, "max_tokens": 250}, 250),
])
def test_a_served_answer_that_cannot_be_read_is_charged_the_output_it_reserved(
    gateway_factory: Callable[..., Gateway], content_type: bytes, body: bytes, path: str,
    request_body: dict[str, Any], reserved: int,
) -> None:
    """A 200 whose body is not readable JSON (a provider compressing despite `identity`, an HTML
    page from a proxy, an answer cut short) was relayed as it is and charged its input only — 0
    output for whatever it carried. It is charged the output it reserved, as the native API and a
    translation charge one. So is one relayed on `/v1/messages` (it was charged 0 output there)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        with gw.client() as http:
            upstream.typed(content_type, body)
            r = http.post(path, json=request_body)
    assert r.status_code == 200 and r.content == body
    rows = recorded(gw, r.headers["x-request-id"])
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (200, "estimated", reserved)], rows


def _cut_mid_stream(first: dict[str, Any]) -> RawUpstream:
    """An upstream whose event stream breaks after its first event (fewer bytes than it announced)."""
    event = b"data: " + orjson.dumps(first) + b"\n\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100000\r\n\r\n"
    return RawUpstream(head + event)


def test_a_relayed_stream_whose_provider_broke_off_ends_with_an_error_the_sdks_raise(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A relayed stream Sentinel stopped (the provider's connection broke mid-stream; an event over
    the size cap, a read timeout alike) ended as a whole stream ends: the official SDKs took the cut
    answer as complete, raising nothing. It ends with an error event in the surface's shape now —
    chat's error chunk, the Responses API's `error` event, Anthropic's `error` event — recorded 502."""
    chat_first = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                  "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}
    claude_first = {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}
    cut_openai, cut_claude = _cut_mid_stream(chat_first), _cut_mid_stream(claude_first)
    gw = gateway_factory(openai_api_url=cut_openai.url + "/v1", anthropic_api_url=cut_claude.url)
    with pytest.raises(openai.APIError) as chat:
        list(gw.openai().chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as messages:  # noqa: PT012 - the error comes while reading
        with claude.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=20, messages=ASK) as stream:  # type: ignore[arg-type]
            list(stream.text_stream)
    with gw.client() as http:
        responses = http.post("/v1/responses", json={**RESPONSE, "stream": True})
    broke = "Upstream {} connection failed: ClientPayloadError"
    assert chat.value.body == {"message": broke.format("openai"), "type": "stream_error", "code": "connection_closed"}
    assert messages.value.body == {"type": "error", "error": {"type": "api_error", "message": broke.format("anthropic")}}
    assert responses.text.endswith("event: error\ndata: " + orjson.dumps(
        {"type": "error", "code": "connection_closed", "message": broke.format("openai"), "param": None}).decode() + "\n\n")
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    rows = ledger_rows(gw.settings.database_url)
    assert [row["status"] for row in rows] == [502] * 3, rows


def test_a_relayed_stream_framed_by_carriage_returns_is_relayed_as_it_comes_and_charged_its_usage(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """SSE lines may end in a lone `\\r` (the SDKs read such a stream whole): the relay split events
    at `\\n` alone, so the stream was one event without end — held back until the upstream closed,
    its usage and text unread, the call charged no output (the translated and native streams read
    it). Both relayed surfaces read it now, through the official SDKs."""
    chat = [chunk({"role": "assistant", "content": "Hello"}), chunk({}, "stop"),
            {**chunk({}), "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 300}}, "[DONE]"]
    claude = [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 6, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 250}},
        {"type": "message_stop"},
    ]

    def framed(events: list[Any]) -> bytes:  # (Anthropic's events are named: `event: message_start`)
        return b"".join((b"event: " + e["type"].encode() + b"\r" if isinstance(e, dict) and "type" in e else b"")
                        + b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\r\r"
                        for e in events)

    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        upstream.typed(b"text/event-stream", framed(chat))
        chunks = list(gw.openai().chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
        upstream.typed(b"text/event-stream", framed(claude))
        with gw.anthropic().messages.stream(model="claude-3-5-haiku-20241022", max_tokens=500,
                                            messages=ASK) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello" == text
    assert all(c.usage is None for c in chunks)  # the usage chunk Sentinel asked for is stripped
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["input_tokens"], row["output_tokens"]) for row in rows] == [
        (200, "measured", 7, 300), (200, "measured", 6, 250)], rows


def test_a_compressed_stream_is_charged_the_output_it_reserved_on_every_surface(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A provider (or a proxy) compressing a stream despite the `identity` Sentinel asks for: the relay
    passed the bytes on as a stream, their events unread (Sentinel never inflates), so the call was
    charged no output while the official SDK inflated the answer and read it whole, usage included.
    It is read as an answer that cannot be read is: relayed as it came, charged the output it
    reserved, when the client asked for its usage chunk; a stream whose usage chunk Sentinel asked
    for (it cannot take it out of compressed bytes: the client got a chunk without choices it never
    asked for), a translated or native stream, which cannot pass it on, is 502 `provider_bad_response`."""
    chat = [chunk({"role": "assistant", "content": "Hello"}), chunk({}, "stop"),
            {**chunk({}), "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}, "[DONE]"]
    body = gzip.compress(b"".join(b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n"
                                  for e in chat))
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url,
                             providers_file=tiers_file(tmp_path, "openai"))
        upstream.typed(b"text/event-stream", body, headers={"content-encoding": "gzip"})
        relayed = list(gw.openai().chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True,  # type: ignore[arg-type]
                                                             max_tokens=40, stream_options={"include_usage": True}))
        answers = []
        with gw.client() as http:
            upstream.typed(b"text/event-stream", body, headers={"content-encoding": "gzip"})
            unasked = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": ASK, "stream": True,
                                                               "max_tokens": 20})
            claude = {"model": "claude-3-5-haiku-20241022", "max_tokens": 30, "messages": ASK, "stream": True}
            for path, request in (TRANSLATED, NATIVE, ("/v1/messages", claude)):
                upstream.typed(b"text/event-stream", body, headers={"content-encoding": "gzip"})
                answers.append(http.post(path, json=request))
    assert "".join(c.choices[0].delta.content or "" for c in relayed if c.choices) == "Hello"  # as it came
    assert relayed[-1].usage is not None and relayed[-1].usage.completion_tokens == 3  # the chunk it asked for
    assert unasked.status_code == 502 and unasked.json()["error"]["code"] == "provider_bad_response", unasked.text
    assert [r.status_code for r in answers] == [502, 502, 200], [r.text for r in answers]
    assert answers[0].json()["error"]["type"] == "api_error"
    assert answers[1].json()["error"]["code"] == "provider_bad_response"
    assert answers[2].content == gzip.decompress(body)  # relayed as it came (httpx inflated it)
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 5)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (200, "estimated", 40), (502, "estimated", 20), (502, "estimated", 50), (502, "estimated", 50),
        (200, "estimated", 30)], rows


def test_a_usage_chunk_the_client_did_not_ask_for_is_not_relayed_whatever_its_figures(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Sentinel asks for the usage chunk on the client's behalf and strips it: one whose figures were
    not a usage (negative here) reached the client, a chunk without choices it never asked for."""
    events = [chunk({"role": "assistant", "content": "Hello"}), chunk({}, "stop"),
              {**chunk({}), "choices": [], "usage": {"prompt_tokens": -7, "completion_tokens": -300}}, "[DONE]"]
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        upstream.sse(*events)
        chunks = list(gw.openai().chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
    assert [c.choices[0].delta.content for c in chunks] == ["Hello", None] and all(c.usage is None for c in chunks)
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [(200, "estimated", 1)], rows


@pytest.mark.parametrize(("path", "created", "stored_path", "answer"), [
    ("/v1/responses",
     {"type": "response.created", "response": {"id": "resp_cut", "object": "response", "status": "in_progress",
                                                "model": "gpt-4o-mini", "output": [], "usage": None}},
     "/v1/responses/resp_cut",
     {"id": "resp_cut", "object": "response", "status": "completed", "model": "gpt-4o-mini",
      "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}],
      "usage": {"input_tokens": 700, "output_tokens": 9000, "total_tokens": 9700}}),
    ("/v1/chat/completions",
     {"id": "chatcmpl-cut", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
      "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
     "/v1/chat/completions/chatcmpl-cut",
     {"id": "chatcmpl-cut", "object": "chat.completion", "model": "gpt-4o-mini",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 700, "completion_tokens": 9000, "total_tokens": 9700}}),
])
def test_a_stored_answer_whose_stream_was_cut_is_charged_by_the_read_that_shows_its_usage(
    gateway_factory: Callable[..., Gateway], path: str, created: dict[str, Any], stored_path: str,
    answer: dict[str, Any],
) -> None:
    """A stored answer (a response, a chat completion with `store: true`) whose stream the client
    left at once was charged what it streamed — and marked charged, so the first read of it charged
    nothing. A provider that goes on generating a stored answer after its stream is cut then served
    the whole answer, fetched by its id, for the price of an empty stream. Its usage is charged by
    the first read that shows it."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1,
                             passthrough="/v1/chat/completions/*")
        upstream.sse(created, hold=True)
        body = {"model": "gpt-4o-mini", "stream": True, "store": True}
        body |= {"input": "hi"} if path == "/v1/responses" else {"messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as http:
            with http.stream("POST", path, json=body) as r:
                assert r.status_code == 200
                cut_id = r.headers["x-request-id"]
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        break  # the client leaves after the first event
            assert wait_for(lambda: len(recorded(gw, cut_id)) == 1)
            assert recorded(gw, cut_id)[0]["status"] == 499
            upstream.json(answer)
            read = http.get(stored_path)
            assert read.status_code == 200, read.text
            charge = charge_id(recorded(gw, cut_id)[0]["external_id"], answer["id"])  # the read's row, by its object
            assert wait_for(lambda: len(recorded(gw, charge)) == 1)
            rows = recorded(gw, charge)
            assert [(row["input_tokens"], row["output_tokens"]) for row in rows] == [(700, 9000)], rows
            upstream.json(answer)  # a second read charges nothing more
            again = http.get(stored_path)
            assert again.status_code == 200, again.text
            assert wait_for(lambda: len(recorded(gw, again.headers["x-request-id"])) == 1)
            assert [(row["input_tokens"], row["output_tokens"])
                    for row in recorded(gw, again.headers["x-request-id"])] == [(0, 0)]


def _cut_stream(gw: Gateway, http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Stream `body` to /v1/responses and leave after the first event: the cut request's record."""
    with http.stream("POST", "/v1/responses", json={**body, "stream": True, "store": True}) as r:
        assert r.status_code == 200
        cut_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    assert wait_for(lambda: len(recorded(gw, cut_id)) == 1)
    return recorded(gw, cut_id)[0]


@pytest.mark.parametrize("text", ["done", "x" * (1024 * 1024 + 1)])  # read whole, or relayed as it comes
def test_the_read_charging_a_cut_responses_usage_keeps_it_as_the_context_continuing_it_reads(
    gateway_factory: Callable[..., Gateway], text: str,
) -> None:
    """A stored response whose stream was cut kept the cut exchange's charge (a few tokens) as the
    context a request continuing it (`previous_response_id`) is charged, even once the first read
    of it had charged its real usage: a continuation cut in turn was charged the few tokens, not the
    9,700 the provider read again. The read that charges its usage keeps that as its context."""
    def created(response_id: str) -> dict[str, Any]:
        return {"type": "response.created", "response": {"id": response_id, "object": "response", "model": "gpt-4o-mini",
                                                          "status": "in_progress", "output": [], "usage": None}}

    answer = {"id": "resp_cut", "object": "response", "status": "completed", "model": "gpt-4o-mini",
              "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
              "usage": {"input_tokens": 700, "output_tokens": 9000, "total_tokens": 9700}}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.sse(created("resp_cut"), hold=True)
            first = _cut_stream(gw, http, {"model": "gpt-4o-mini", "input": "hi"})
            assert first["input_tokens"] + first["output_tokens"] < 100, first
            upstream.json(answer)
            read = http.get("/v1/responses/resp_cut")
            assert read.status_code == 200, read.text
            charge = charge_id(first["external_id"], "resp_cut")
            assert wait_for(lambda: len(recorded(gw, charge)) == 1)
            upstream.sse(created("resp_next"), hold=True)
            continued = _cut_stream(gw, http, {"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "resp_cut"})
    # Its input: its own few tokens and the 9,700 of the context it continued, as the provider read them.
    assert 9700 < continued["input_tokens"] < 9700 + 100, continued
