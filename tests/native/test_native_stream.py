"""Stream normalisation: upstream SSE bytes (built from the official SDKs' event models) in, unified chunks out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolUseBlock,
)
from anthropic.types import Usage as AnthropicUsage
from anthropic.types.raw_message_delta_event import Delta as MessageDelta
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.chat import chat_completion_chunk as ck
from openai.types.completion_usage import CompletionUsage

from sentinel.native import ChatChunk, StreamError, Usage
from sentinel.native.sse import SSEEvent, SSEParser
from sentinel.native.stream import (
    DONE,
    AnthropicStreamNormalizer,
    OpenAIStreamNormalizer,
    StreamNormalizer,
    StreamResult,
    render_chunk,
    render_error_event,
)
from tests.support.payloads import ANTHROPIC_STOP_REASONS

# ---------------------------------------------------------------- upstream fixtures


def oa_chunk(
    delta: ck.ChoiceDelta | None = None, finish: str | None = None, usage: CompletionUsage | None = None
) -> bytes:
    choices = [] if delta is None else [ck.Choice(index=0, delta=delta, finish_reason=finish)]
    chunk = ChatCompletionChunk(
        id="chatcmpl-up",
        object="chat.completion.chunk",
        created=1732000000,
        model="gpt-4o",
        choices=choices,
        usage=usage,
    )
    return b"data: " + orjson.dumps(chunk.model_dump(mode="json")) + b"\n\n"


def oa_call(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> ck.ChoiceDeltaToolCall:
    return ck.ChoiceDeltaToolCall(
        index=index,
        id=id,
        type="function" if id else None,
        function=ck.ChoiceDeltaToolCallFunction(name=name, arguments=args),
    )


OA_USAGE = oa_chunk(usage=CompletionUsage(prompt_tokens=9, completion_tokens=4, total_tokens=13))
OA_TEXT = (
    oa_chunk(ck.ChoiceDelta(role="assistant", content=""))
    + oa_chunk(ck.ChoiceDelta(content="Hel"))
    + oa_chunk(ck.ChoiceDelta(content="lo ✓"))
    + oa_chunk(ck.ChoiceDelta(), finish="stop")
    + OA_USAGE
    + DONE
)
OA_TOOLS = (
    oa_chunk(
        ck.ChoiceDelta(role="assistant", tool_calls=[oa_call(0, id="call_a", name="get_weather", args="")])
    )
    + oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(0, args='{"city": ')]))
    + oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(1, id="call_b", name="get_time", args="{")]))
    + oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(0, args='"Paris"}')]))
    + oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(1, args='"tz": "CET"}')]))
    + oa_chunk(ck.ChoiceDelta(), finish="tool_calls")
    + OA_USAGE
    + DONE
)


def an_event(event: Any) -> bytes:
    data = event.model_dump(mode="json")
    return f"event: {data['type']}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def an_start(input_tokens: int = 25, cache_read: int | None = None) -> bytes:
    message = Message(
        id="msg_up",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5",
        content=[],
        stop_reason=None,
        stop_sequence=None,
        usage=AnthropicUsage(input_tokens=input_tokens, output_tokens=1, cache_read_input_tokens=cache_read),
    )
    return an_event(RawMessageStartEvent(type="message_start", message=message))


def an_text_block(index: int, *pieces: str) -> bytes:
    out = an_event(
        RawContentBlockStartEvent(
            type="content_block_start", index=index, content_block=TextBlock(type="text", text="")
        )
    )
    for piece in pieces:
        out += an_event(
            RawContentBlockDeltaEvent(
                type="content_block_delta", index=index, delta=TextDelta(type="text_delta", text=piece)
            )
        )
    return out + an_event(RawContentBlockStopEvent(type="content_block_stop", index=index))


def an_tool_block(index: int, tool_id: str, name: str, *fragments: str) -> bytes:
    block = ToolUseBlock(type="tool_use", id=tool_id, name=name, input={})
    out = an_event(RawContentBlockStartEvent(type="content_block_start", index=index, content_block=block))
    for fragment in fragments:
        delta = InputJSONDelta(type="input_json_delta", partial_json=fragment)
        out += an_event(RawContentBlockDeltaEvent(type="content_block_delta", index=index, delta=delta))
    return out + an_event(RawContentBlockStopEvent(type="content_block_stop", index=index))


def an_end(stop_reason: str | None = "end_turn", output_tokens: int = 12) -> bytes:
    delta = RawMessageDeltaEvent(
        type="message_delta",
        delta=MessageDelta(stop_reason=stop_reason, stop_sequence=None),
        usage=MessageDeltaUsage(output_tokens=output_tokens),
    )
    return an_event(delta) + an_event(RawMessageStopEvent(type="message_stop"))


PING = b'event: ping\ndata: {"type": "ping"}\n\n'
AN_TEXT = an_start() + PING + an_text_block(0, "Hel", "lo") + an_end()
AN_TOOLS = (
    an_start()
    + an_text_block(0, "Checking.")
    + an_tool_block(1, "toolu_A", "get_weather", '{"ci', 'ty": "Paris"}')
    + an_tool_block(2, "toolu_B", "get_weather", "", '{"city": "Oslo"}')
    + an_tool_block(3, "toolu_C", "get_time")
    + an_end("tool_use", 40)
)

# ---------------------------------------------------------------- driver


def run(
    normalizer: StreamNormalizer, raw: bytes, piece: int = 1
) -> tuple[list[dict[str, Any]], StreamResult]:
    """Feed raw upstream bytes in pieces of `piece` bytes; every chunk must be a valid unified chunk."""
    parser = SSEParser()
    chunks: list[dict[str, Any]] = []
    for i in range(0, len(raw), piece):
        for event in parser.feed(raw[i : i + piece]):
            chunks.extend(normalizer.feed(event))
    parser.close()
    result = normalizer.finish()
    for chunk in chunks + result.chunks:
        ChatChunk.model_validate(chunk)
        ChatCompletionChunk.model_validate(chunk)
    return chunks + result.chunks, result


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def assert_stable_and_role_first(chunks: list[dict[str, Any]]) -> None:
    assert chunks, "no chunks"
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], chunks[0]["model"])
    }
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert [c["choices"][0].get("finish_reason") for c in chunks][:-1] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] is not None


def openai_sdk_view(chunks: list[dict[str, Any]]) -> Any:
    """What an OpenAI SDK client assembles from our chunks."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion().choices[0]


# ---------------------------------------------------------------- OpenAI


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_openai_text_stream(piece: int) -> None:
    chunks, result = run(OpenAIStreamNormalizer(provider="openai"), OA_TEXT, piece)
    assert_stable_and_role_first(chunks)
    assert (chunks[0]["id"], chunks[0]["created"], chunks[0]["model"]) == (
        "chatcmpl-up",
        1732000000,
        "gpt-4o",
    )
    assert content(chunks) == "Hello ✓"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(c["choices"] for c in chunks), "the upstream usage chunk must not be forwarded"
    assert result.error is None
    assert result.usage == Usage.of(9, 4)
    assert (result.text, result.finish_reason, result.tool_calls) == ("Hello ✓", "stop", [])
    assert openai_sdk_view(chunks).message.content == "Hello ✓"


def test_openai_tool_call_stream() -> None:
    chunks, result = run(OpenAIStreamNormalizer(provider="openai"), OA_TOOLS)
    assert_stable_and_role_first(chunks)
    starts = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", []) if "id" in tc]
    assert [(tc["index"], tc["id"], tc["function"]["name"]) for tc in starts] == [
        (0, "call_a", "get_weather"),
        (1, "call_b", "get_time"),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in result.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {"tz": "CET"}),
    ]
    sdk_calls = openai_sdk_view(chunks).message.tool_calls
    assert [(c.id, c.function.arguments) for c in sdk_calls] == [
        ("call_a", '{"city": "Paris"}'),
        ("call_b", '{"tz": "CET"}'),
    ]


def test_openai_first_chunk_gets_the_role_even_if_upstream_omits_it() -> None:
    raw = oa_chunk(ck.ChoiceDelta(content="x")) + oa_chunk(ck.ChoiceDelta(), finish="length") + DONE
    chunks, result = run(OpenAIStreamNormalizer(provider="compat"), raw, 1000)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "x"}
    assert result.finish_reason == "length"
    assert result.usage is None  # the caller estimates


def test_openai_missing_ids_are_invented_once() -> None:
    raw = (
        oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(0, name="f", args="{}")]))
        + oa_chunk(ck.ChoiceDelta(), finish="tool_calls")
        + DONE
    )
    chunks, result = run(OpenAIStreamNormalizer(provider="compat"), raw, 1000)
    sent_id = chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert sent_id.startswith("call_")
    assert result.tool_calls[0].id == sent_id
    assert result.tool_calls[0].function.arguments == {}


@pytest.mark.parametrize("bad", [{"choices": 5}, {"choices": True}, {"choices": [{"index": 0, "delta": {"tool_calls": 7}}]}])
def test_openai_chunks_with_choices_or_tool_calls_not_a_list_are_read_as_empty(bad: dict[str, Any]) -> None:
    """A chunk whose `choices` (or a delta's `tool_calls`) is a number raised a TypeError: the native
    and translated stream ended with `internal_error` and a traceback logged at ERROR. Such a chunk
    carries nothing readable: it is skipped, and the rest of the stream is read as usual."""
    bad_chunk = b"data: " + orjson.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                          "created": 1732000000, "model": "gpt-4o", **bad}) + b"\n\n"
    at = OA_TEXT.index(b"data: ")
    chunks, result = run(OpenAIStreamNormalizer(provider="openai"), OA_TEXT[:at] + bad_chunk + OA_TEXT[at:])
    assert result.error is None
    assert content(chunks) == "Hello ✓" and result.usage == Usage.of(9, 4)


def test_openai_truncated_stream_is_detected() -> None:
    raw = OA_TEXT[: OA_TEXT.index(b"data: [DONE]")]  # finish and usage arrived, [DONE] did not
    chunks, result = run(OpenAIStreamNormalizer(provider="openai"), raw)
    assert result.error is not None and result.error.code == "connection_closed"
    assert result.chunks == [] and result.finish_reason is None
    assert all(c["choices"][0].get("finish_reason") is None for c in chunks)
    assert result.usage == Usage.of(9, 4)  # still available for accounting


def test_openai_invalid_tool_arguments_fail_at_the_end() -> None:
    raw = (
        oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(0, id="c", name="f", args='{"a": ')]))
        + oa_chunk(ck.ChoiceDelta(), finish="tool_calls")
        + DONE
    )
    _, result = run(OpenAIStreamNormalizer(provider="openai"), raw, 1000)
    assert result.error is not None and result.error.code == "parse_error"
    assert "Malformed tool call arguments for 'f'" in result.error.message
    assert result.chunks == []


def test_openai_tool_arguments_too_deep_to_write_again_still_end_the_stream() -> None:
    """A stream's arguments are relayed as the text fragments they came in, never written again as
    an object: arguments nested deeper than orjson writes still end the stream normally."""
    deep = '{"a": ' + "[" * 300 + "]" * 300 + "}"
    raw = (
        oa_chunk(ck.ChoiceDelta(tool_calls=[oa_call(0, id="c", name="f", args=deep)]))
        + oa_chunk(ck.ChoiceDelta(), finish="tool_calls")
        + DONE
    )
    _, result = run(OpenAIStreamNormalizer(provider="openai"), raw, 1000)
    assert result.error is None and result.finish_reason == "tool_calls"


def test_openai_error_event_raises_with_the_provider_code_and_a_generic_message() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai")
    event = SSEEvent(
        orjson.dumps(
            {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}}
        ).decode()
    )
    with pytest.raises(StreamError) as info:
        normalizer.feed(event)
    assert (info.value.code, info.value.provider) == ("overloaded", "openai")
    assert info.value.message == "Provider openai failed during the stream"  # its message is logged only


@pytest.mark.parametrize("data", ["{not json", "[1]"])
def test_openai_malformed_event_raises_parse_error(data: str) -> None:
    with pytest.raises(StreamError) as info:
        OpenAIStreamNormalizer(provider="openai").feed(SSEEvent(data))
    assert info.value.code == "parse_error"


def test_openai_events_after_done_are_ignored() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai")
    assert not normalizer.done
    normalizer.feed(SSEEvent("[DONE]"))
    assert normalizer.done  # the caller stops reading here
    assert normalizer.feed(SSEEvent("{not json")) == []


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_content": "Let me think."},
        {"reasoning": "Let me think."},
        {"refusal": "Let me think."},
        {"function_call": {"name": "Let me", "arguments": " think."}},
        {"audio": {"id": "a1", "transcript": "Let me think."}},
    ],
)
def test_openai_output_beside_the_content_is_counted_not_relayed(extra: dict[str, Any]) -> None:
    """Only `content` and tool-call arguments were counted: a provider streaming its reasoning (or a
    refusal) and reporting no usage had only the final answer charged, though the relay counts it all."""
    raw = (
        b"data: " + orjson.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": extra}]}) + b"\n\n"
        + oa_chunk(ck.ChoiceDelta(content="ok"), finish="stop")
        + DONE
    )
    normalizer = OpenAIStreamNormalizer(provider="openai")
    chunks, result = run(normalizer, raw, 10_000)
    assert result.error is None and result.usage is None
    assert normalizer.text == "ok" + "Let me think."  # the answer's text, then the output beside it
    assert content(chunks) == "ok" and result.text == "ok"  # what the client sees is unchanged


@pytest.mark.parametrize("index", [[0], {"i": 0}, "0", True, 0.0])
def test_openai_tool_call_index_that_is_not_an_integer_is_a_parse_error(index: Any) -> None:
    """An unhashable index raised a TypeError (no error event, the connection cut, recorded as 200)."""
    call = {"index": index, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    event = SSEEvent(orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}).decode())
    with pytest.raises(StreamError) as info:
        OpenAIStreamNormalizer(provider="openai").feed(event)
    assert info.value.code == "parse_error"


def test_openai_tool_call_without_an_index_keys_on_its_position() -> None:
    calls = [{"id": "a", "function": {"name": "f", "arguments": "{}"}},
             {"index": None, "id": "b", "function": {"name": "g", "arguments": "{}"}}]
    raw = (
        b"data: " + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]}) + b"\n\n"
        + oa_chunk(ck.ChoiceDelta(), finish="tool_calls")
        + DONE
    )
    _, result = run(OpenAIStreamNormalizer(provider="openai"), raw, 10_000)
    assert [(c.id, c.function.name) for c in result.tool_calls] == [("a", "f"), ("b", "g")]


# ---------------------------------------------------------------- Anthropic


@pytest.mark.parametrize("piece", [1, 13, 10_000])
def test_anthropic_text_stream(piece: int) -> None:
    chunks, result = run(AnthropicStreamNormalizer(provider="anthropic", created=42), AN_TEXT, piece)
    assert_stable_and_role_first(chunks)
    assert (chunks[0]["id"], chunks[0]["created"], chunks[0]["model"]) == ("msg_up", 42, "claude-sonnet-4-5")
    assert content(chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert result.error is None
    assert result.usage == Usage.of(25, 12)
    assert openai_sdk_view(chunks).message.content == "Hello"


def test_anthropic_cache_tokens_count_as_prompt() -> None:
    _, result = run(
        AnthropicStreamNormalizer(provider="anthropic"), an_start(10, cache_read=90) + an_end(), 10_000
    )
    assert result.usage == Usage.of(100, 12)


def test_anthropic_parallel_tool_use_blocks_get_distinct_indexes_and_ids() -> None:
    chunks, result = run(AnthropicStreamNormalizer(provider="anthropic"), AN_TOOLS)
    assert_stable_and_role_first(chunks)
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    starts = [(tc["index"], tc["id"], tc["type"], tc["function"]["name"]) for tc in deltas if "id" in tc]
    assert starts == [
        (0, "toolu_A", "function", "get_weather"),
        (1, "toolu_B", "function", "get_weather"),
        (2, "toolu_C", "function", "get_time"),
    ]
    fragments: dict[int, str] = {}
    for tc in deltas:
        fragments[tc["index"]] = fragments.get(tc["index"], "") + tc["function"].get("arguments", "")
    assert fragments == {0: '{"city": "Paris"}', 1: '{"city": "Oslo"}', 2: ""}
    assert content(chunks) == "Checking."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [(c.id, c.function.arguments) for c in result.tool_calls] == [
        ("toolu_A", {"city": "Paris"}),
        ("toolu_B", {"city": "Oslo"}),
        ("toolu_C", {}),
    ]
    assert result.usage == Usage.of(25, 40)
    sdk = openai_sdk_view(chunks).message
    assert [(c.id, c.function.name) for c in sdk.tool_calls] == [
        ("toolu_A", "get_weather"),
        ("toolu_B", "get_weather"),
        ("toolu_C", "get_time"),
    ]


@pytest.mark.parametrize(("stop", "finish"), ANTHROPIC_STOP_REASONS)
def test_anthropic_stop_reason_mapping(stop: str, finish: str) -> None:
    chunks, result = run(AnthropicStreamNormalizer(provider="anthropic"), an_start() + an_end(stop), 10_000)
    assert chunks[-1]["choices"][0]["finish_reason"] == finish == result.finish_reason


def test_anthropic_truncated_stream_is_detected() -> None:
    raw = AN_TOOLS[: AN_TOOLS.index(b"event: message_stop")]
    _, result = run(AnthropicStreamNormalizer(provider="anthropic"), raw)
    assert result.error is not None and result.error.code == "connection_closed"
    assert result.chunks == []
    assert result.usage == Usage.of(25, 40)


def test_anthropic_stream_cut_before_message_delta_has_no_usage() -> None:
    _, result = run(
        AnthropicStreamNormalizer(provider="anthropic"), an_start() + an_text_block(0, "x"), 10_000
    )
    assert result.error is not None
    assert result.usage is None  # output tokens unknown: the caller estimates


def test_anthropic_error_event_raises_with_its_type() -> None:
    normalizer = AnthropicStreamNormalizer(provider="anthropic")
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(StreamError) as info:
        normalizer.feed(SSEEvent(orjson.dumps(error).decode(), "error"))
    assert (info.value.message, info.value.code) == ("Provider anthropic failed during the stream", "overloaded_error")


def test_an_anthropic_error_before_any_block_leaves_the_answer_unserved() -> None:
    """The provider's error right after message_start: no block of the answer (thinking included)
    came, so none was generated (`unserved`: charged no output). After a block began, or without an
    error, it is not. An OpenAI-format stream tells alike: its error chunk before any choice carried
    some of the answer (the opening role alone is none) gave the client nothing."""
    error = SSEEvent(orjson.dumps({"type": "error", "error": {"type": "overloaded_error"}}).decode(), "error")

    def fed(raw: bytes, *, failing: bool) -> AnthropicStreamNormalizer:
        normalizer = AnthropicStreamNormalizer(provider="anthropic")
        for event in SSEParser().feed(raw):
            normalizer.feed(event)
        if failing:
            with pytest.raises(StreamError):
                normalizer.feed(error)
        return normalizer

    assert fed(an_start(), failing=True).unserved
    thinking = an_event(RawContentBlockStartEvent(
        type="content_block_start", index=0, content_block=ThinkingBlock(type="thinking", thinking="", signature="")))
    assert not fed(an_start() + thinking, failing=True).unserved
    assert not fed(an_start(), failing=False).unserved
    def openai_fed(*chunks: dict[str, object]) -> OpenAIStreamNormalizer:
        normalizer = OpenAIStreamNormalizer(provider="openai")
        for chunk in chunks:
            normalizer.feed(SSEEvent(orjson.dumps(chunk).decode()))
        with pytest.raises(StreamError):
            normalizer.feed(SSEEvent(orjson.dumps({"error": {"message": "x", "type": "server_error"}}).decode()))
        return normalizer

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"id": "c", "model": "o4-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    assert openai_fed().unserved
    assert openai_fed(choice({"role": "assistant", "content": "", "refusal": None})).unserved
    assert not openai_fed(choice({"content": "Hi"})).unserved
    assert not openai_fed(choice({}, "length")).unserved  # (its reasoning took the whole cap)
    unfailed = OpenAIStreamNormalizer(provider="openai")
    unfailed.feed(SSEEvent(orjson.dumps(choice({"role": "assistant", "content": ""})).decode()))
    assert not unfailed.unserved


def test_anthropic_invalid_tool_json_fails_at_the_end() -> None:
    raw = an_start() + an_tool_block(0, "toolu_X", "f", '{"a": tru') + an_end("tool_use")
    _, result = run(AnthropicStreamNormalizer(provider="anthropic"), raw, 10_000)
    assert result.error is not None and result.error.code == "parse_error"
    assert result.chunks == []


def test_anthropic_thinking_and_unknown_events_are_skipped() -> None:
    thinking = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: brand_new\ndata: {"type":"brand_new"}\n\n'
    )
    chunks, result = run(
        AnthropicStreamNormalizer(provider="anthropic"),
        an_start() + thinking + an_text_block(1, "ok") + an_end(),
        10_000,
    )
    assert content(chunks) == "ok"
    assert result.error is None


@pytest.mark.parametrize("kind", ["content_block_start", "content_block_delta"])
def test_anthropic_block_index_that_is_not_an_integer_is_a_parse_error(kind: str) -> None:
    """An unhashable index raised a TypeError (no error event, the connection cut, recorded as 200)."""
    normalizer = AnthropicStreamNormalizer(provider="anthropic")
    run_events = [
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_A", "name": "f", "input": {}}},
        {"type": kind, "index": [0], "content_block": {"type": "tool_use", "id": "toolu_B", "name": "g", "input": {}},
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    ]
    normalizer.feed(SSEEvent(orjson.dumps(run_events[0]).decode()))
    with pytest.raises(StreamError) as info:
        normalizer.feed(SSEEvent(orjson.dumps(run_events[1]).decode()))
    assert info.value.code == "parse_error"


def test_anthropic_tool_input_nested_deeper_than_orjson_writes_is_a_parse_error() -> None:
    """orjson reads 1,024 levels but writes 255: the block's initial input raised a JSONEncodeError."""
    deep = '{"a":' * 300 + "1" + "}" * 300
    start = {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": "INPUT"}}
    event = SSEEvent(orjson.dumps(start).decode().replace('"INPUT"', deep))
    with pytest.raises(StreamError) as info:
        AnthropicStreamNormalizer(provider="anthropic").feed(event)
    assert info.value.code == "parse_error"


# ---------------------------------------------------------------- rendering


def test_render_helpers_produce_parseable_sse() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai", created=1)
    chunk = normalizer.usage_chunk(Usage.of(1, 2))
    raw = (
        render_chunk({"a": "é"})
        + render_chunk(chunk)
        + render_error_event("boom", code="connection_closed")
        + DONE
    )
    assert render_chunk({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    events = SSEParser().feed(raw)
    assert [orjson.loads(e.data) for e in events[:3]] == [
        {"a": "é"},
        {**chunk},
        {"error": {"message": "boom", "type": "stream_error", "code": "connection_closed"}},
    ]
    assert events[3].data == "[DONE]"
    assert chunk["choices"] == [] and chunk["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    ChatChunk.model_validate(chunk)


def test_error_event_without_code() -> None:
    assert orjson.loads(render_error_event("x", "upstream_error")[6:]) == {
        "error": {"message": "x", "type": "upstream_error"}
    }
