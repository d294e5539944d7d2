"""A hostile provider (or anything between Sentinel and it) on the surfaces that read an answer
before answering or keep a stream's text to count: what Sentinel holds of an answer stays bounded,
and every call still leaves its one usage record."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from sentinel.providers.http import MAX_ANSWER_BYTES
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import Flood, MiB, lifespan

ASK = [{"role": "user", "content": "weather in Paris?"}]
HAIKU = "claude-3-5-haiku-20241022"
PIECE = 64 * 1024


def test_an_answer_read_whole_is_not_kept_past_its_bound(gateway_factory: Callable[..., Gateway]) -> None:
    """`/v1/messages` (relayed to Anthropic) and a translated chat read a non-streamed answer whole
    before answering: a provider sending one without end grew the process's memory until the time
    limit (900 s), and `/v1/messages` relayed all of it to the client as a 200. Past
    MAX_ANSWER_BYTES it is 502 `provider_bad_response` in the surface's shape, the rest unread,
    recorded and charged the output it reserved (served and billed)."""
    with serving(Flood((MAX_ANSWER_BYTES + 8 * MiB) // MiB, [(b"content-type", b"application/json")])) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url)
        with gw.client() as http:
            messages = http.post("/v1/messages", json={"model": HAIKU, "messages": ASK, "max_tokens": 30})
            chat = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": ASK, "max_tokens": 20})
    assert messages.status_code == 502, messages.status_code
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "api_error", messages.text
    assert chat.status_code == 502 and chat.json()["error"]["code"] == "provider_bad_response", chat.text
    assert "larger than" in chat.json()["error"]["message"]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (502, "estimated", 30), (502, "estimated", 20)], rows


class TextFlood:
    """Answers every request with a 200 event stream of `pieces` output events of 64 KiB of text each
    (OpenAI chat chunks on an OpenAI path, Anthropic events on `/v1/messages`), no usage, then its end."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        text = "Hello " * (PIECE // 6)
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        self.openai = (b"data: " + orjson.dumps(chunk) + b"\n\n", b"data: [DONE]\n\n")
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        self.anthropic_head = b"".join(_event(e) for e in (start, block))
        self.anthropic = (_event(delta), b"".join(_event(e) for e in (
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}},
            {"type": "message_stop"})))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        anthropic = scope["path"].endswith("/messages")
        (piece, end), head = (self.anthropic, self.anthropic_head) if anthropic else (self.openai, b"")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        for _ in range(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": end})


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def test_the_text_a_stream_keeps_to_count_is_bounded(gateway_factory: Callable[..., Gateway]) -> None:
    """A stream whose provider never sends its usage is charged its text, counted at settlement: every
    reader (relayed chat, relayed `/v1/messages`, a translated stream) kept all of it until then, so a
    provider streaming text without end grew the process's memory until the stream's time limit, and
    the settlement counted it all. Up to KEPT_CHARS characters are kept; the rest is counted as it
    comes (a token per 4 bytes), and the record still charges all of it."""
    pieces = 24 * MiB // PIECE
    with serving(TextFlood(pieces)) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url)
        peaks = []
        with gw.client() as http:
            for path, body in (
                ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "stream": True}),
                ("/v1/messages", {"model": HAIKU, "messages": ASK, "stream": True, "max_tokens": 30}),
                ("/v1/chat/completions", {"model": HAIKU, "messages": ASK, "stream": True, "max_tokens": 30}),
            ):
                tracemalloc.start()
                try:
                    with http.stream("POST", path, json=body) as answer:
                        size = sum(len(part) for part in answer.iter_raw())
                    peaks.append(tracemalloc.get_traced_memory()[1])
                finally:
                    tracemalloc.stop()
                assert answer.status_code == 200 and size > pieces * PIECE, (path, answer.status_code)
    assert all(peak < 16 * MiB for peak in peaks), peaks
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"]) for row in rows] == [(200, "estimated")] * 3, rows
    words = pieces * (PIECE // 6)  # "Hello " is one token: never charged fewer
    assert all(words <= row["output_tokens"] <= 2 * words for row in rows), rows
