"""A hostile or broken OpenAI-compatible upstream on the relayed `/v1` streams (chat, legacy
completions, Responses), through the official SDK where it reads the answer: every answer is
charged once and correctly, and what Sentinel holds of a stream stays bounded."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows, wait_for
from tests.support.servers import serving
from tests.support.upstream import Flood, MiB, ScriptedUpstream

ASK = [{"role": "user", "content": "weather in Paris?"}]


def test_a_compressed_stream_is_read_to_its_end_without_being_kept(
    gateway_factory: Callable[..., Gateway], tmp_path: Path,
) -> None:
    """A stream compressed despite `identity` cannot be read (Sentinel never inflates): it was read to
    its end all the same — kept whole, in memory, so an upstream sending one without end grew the
    process until the stream's time limit. It is read to its end keeping nothing: the relayed and
    the translated stream alike, still a 502 charged the output it reserved."""
    pieces = 24
    with serving(Flood(pieces, [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")], b"\0")) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        peaks = []
        with gw.client() as http:
            for path, body in (
                ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": ASK, "stream": True, "max_tokens": 20}),
                ("/v1/messages", {"model": "gpt-4o-mini", "messages": ASK, "stream": True, "max_tokens": 30}),
            ):
                tracemalloc.start()
                try:
                    answer = http.post(path, json=body)
                    peaks.append(tracemalloc.get_traced_memory()[1])
                finally:
                    tracemalloc.stop()
                assert answer.status_code == 502, answer.text
    assert all(peak < pieces * MiB // 3 for peak in peaks), peaks
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["status"], row["usage_source"], row["output_tokens"]) for row in rows] == [
        (502, "estimated", 20), (502, "estimated", 30)], rows


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def framed(*events: Any) -> bytes:
    """An event stream: a str as it is ("[DONE]"), a dict as JSON (named by its `type`, as the
    Responses API names its events)."""
    out = b""
    for e in events:
        named = isinstance(e, dict) and isinstance(e.get("type"), str)
        out += (b"event: " + e["type"].encode() + b"\n" if named else b"")
        out += b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n"
    return out


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o-mini", "output": []}
WORDS = "Hello " * 300


def test_a_count_shown_before_the_output_that_followed_is_not_charged_as_the_whole_answer(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A usage shown before output (a usage-only chunk early in a chat stream, a `response.created`
    carrying a usage) was taken as the whole answer's count: a stream cut after it (the provider's
    connection closing before `[DONE]`, the client leaving) was charged that count — 1 token here —
    for the 300 words streamed since. Output after a count makes it a partial one: the stream is
    charged what it streamed, as a stream cut before its count is."""
    early = {"prompt_tokens": 1, "completion_tokens": 1}
    chat = framed({**chunk({}), "choices": [], "usage": early}, chunk({"role": "assistant", "content": WORDS}))
    responses = framed(
        {"type": "response.created", "sequence_number": 0,
         "response": {**RESPONSE, "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": WORDS, "logprobs": []},
    )
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        client = gw.openai()
        upstream.typed(b"text/event-stream", chat)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
        upstream.typed(b"text/event-stream", responses)
        events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == WORDS
    assert [e.type for e in events] == ["response.created", "response.output_text.delta"]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["usage_source"]) for row in rows] == ["estimated", "estimated"], rows
    assert all(row["output_tokens"] >= WORDS.count("Hello") for row in rows), rows


def test_a_usage_chunk_without_choices_is_not_relayed_to_a_client_that_did_not_ask_for_it(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Sentinel asks for the usage chunk on the client's behalf and strips it: one from a server that
    sends it without `choices` (or with `choices: null`) rather than `[]` reached the client, which
    never asked for it — code reading `chunk.choices[0]` fails on it. It is stripped, and charged."""
    usage = {"prompt_tokens": 7, "completion_tokens": 30}
    bare = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        answers = []
        for last in ({**bare, "usage": usage}, {**bare, "choices": None, "usage": usage}):
            upstream.typed(b"text/event-stream", framed(chunk({"role": "assistant", "content": "Hello"}),
                                                        chunk({}, "stop"), last, "[DONE]"))
            stream = gw.openai().chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True)  # type: ignore[arg-type]
            answers.append([c.choices[0].delta.content for c in stream])
    assert answers == [["Hello", None]] * 2
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert [(row["usage_source"], row["input_tokens"], row["output_tokens"]) for row in rows] == [
        ("measured", 7, 30)] * 2, rows


def test_events_orjson_refuses_but_the_sdks_read_are_counted(gateway_factory: Callable[..., Gateway]) -> None:
    """Events written as Python's encoder writes them — a lone surrogate escape (a character cut
    between chunks), `-Infinity` for a logprob, `NaN` — are read by the SDKs but were refused by the
    relay's reader: their text reached the client uncounted (a stream cut before its usage was
    free), and a usage chunk so written went unread and reached a client that never asked for it.
    They are read as the SDKs read them."""
    cut = framed(chunk({"role": "assistant", "content": ""})).decode() + "".join(
        'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        '"choices":[{"index":0,"delta":{"content":"Hello \\ud83d "},"finish_reason":null}]}\n\n' for _ in range(100))
    logprob = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
               '"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null,"logprobs":{"content":'
               '[{"token":"Hello","logprob":-Infinity,"bytes":null,"top_logprobs":[]}]}}]}\n\n')
    usage = ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
             '"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":300,"cost":NaN}}\n\n')
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        client = gw.openai()
        upstream.typed(b"text/event-stream", cut.encode())
        first = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
        upstream.typed(b"text/event-stream", (logprob + usage + "data: [DONE]\n\n").encode())
        second = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True, logprobs=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in first).count("Hello") == 100
    assert [c.choices[0].delta.content for c in second] == ["Hello"]  # the usage chunk it did not ask for: stripped
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    rows = ledger_rows(gw.settings.database_url)
    assert rows[0]["usage_source"] == "estimated" and rows[0]["output_tokens"] >= 100, rows
    assert (rows[1]["usage_source"], rows[1]["input_tokens"], rows[1]["output_tokens"]) == ("measured", 7, 300)
