"""The client-side translators: OpenAI and Anthropic request bodies read into a `ModelChatRequest`, the
unified answer written back in each format, and unified chunks encoded as Anthropic's event stream.
Request bodies built from them are checked against the official SDKs' request types."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sentinel.native import NativeValidationError
from sentinel.native.anthropic import build_anthropic_model_request
from sentinel.native.anthropic_inbound import parse_anthropic_messages, render_anthropic_message
from sentinel.native.anthropic_stream import AnthropicStreamEncoder
from sentinel.native.openai import build_openai_model_request, parse_openai_response
from sentinel.native.openai_inbound import parse_openai_chat, render_openai_completion
from sentinel.native.responses import CacheTokens, Usage
from sentinel.native.sse import SSEParser
from sentinel.native.stream import OpenAIStreamNormalizer
from tests.native.conftest import Check

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def oa(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-3-5-haiku-20241022", "messages": [{"role": "user", "content": "hi"}], **extra}


def an(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], **extra}


def refused(parse: Any, body: dict[str, Any]) -> str:
    with pytest.raises(NativeValidationError) as caught:
        parse(body, target="test")
    assert caught.value.param is not None
    return caught.value.param


# --- OpenAI in --------------------------------------------------------------------------------------
def test_openai_request_to_anthropic_body(anthropic_wire: Check) -> None:
    req = parse_openai_chat(oa(
        messages=[
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        ],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": SCHEMA, "strict": False}}],
        tool_choice="required", parallel_tool_calls=False, max_completion_tokens=99, stop="END", user="u1",
        stream=True, stream_options={"include_usage": True}, n=1, logprobs=False,
    ), target="anthropic")
    assert req.include_usage and req.max_tokens == 99 and req.messages[0].role == "system"
    body = anthropic_wire(build_anthropic_model_request(req, "claude-x", default_max_tokens=10))
    assert body["system"] == "rules" and body["stop_sequences"] == ["END"]
    assert "metadata" not in body  # the client's end user is not carried (`sentinel.native.end_user` adds Sentinel's)
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"] == [{"name": "lookup", "input_schema": SCHEMA}]  # no description: none invented
    assert body["messages"][1]["content"][0] == {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}}
    assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "found"}


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"seed": 1}, "seed"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"something_new": 1}, "something_new"),
    ({"stream_options": {"other": True}}, "stream_options.other"),
    ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]},
                   {"role": "user", "content": "x"}]}, "messages.0.tool_calls.0.function.arguments"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA, "strict": "yes"}}]}, "tools.0.function.strict"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}]}, "messages.1.role"),
])
def test_openai_fields_that_cannot_be_translated(extra: dict[str, Any], param: str) -> None:
    assert refused(parse_openai_chat, oa(**extra)) == param


def test_temperature_above_anthropics_range_is_refused_not_lowered() -> None:
    req = parse_openai_chat(oa(temperature=1.5), target="anthropic")
    with pytest.raises(NativeValidationError) as caught:
        build_anthropic_model_request(req, "claude-x", default_max_tokens=10)
    assert caught.value.param == "temperature"


# --- Anthropic in -----------------------------------------------------------------------------------
def test_anthropic_request_to_openai_body(openai_wire: Check) -> None:
    req = parse_anthropic_messages(an(
        system=[{"type": "text", "text": "be kind", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "calling"},
                                              {"type": "tool_use", "id": "tu1", "name": "lookup", "input": {"q": "a"}},
                                              {"type": "tool_use", "id": "tu2", "name": "lookup", "input": {"q": "b"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "and then?"},
                {"type": "tool_result", "tool_use_id": "tu1", "content": [{"type": "text", "text": "A"}]},
                {"type": "tool_result", "tool_use_id": "tu2", "content": "B", "is_error": True}]},
        ],
        tools=[{"name": "lookup", "description": "find", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
        stop_sequences=["x", "y"], metadata={"user_id": "u9"}, stream=True, temperature=0.2,
    ), target="openai")
    body = openai_wire(build_openai_model_request(req, "gpt-x"))
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "user"]  # tool results right after the calls
    assert body["messages"][3] == {"role": "tool", "content": "A", "tool_call_id": "tu1"}
    assert body["messages"][4]["content"] == "Error: B"
    assert body["messages"][1]["content"][0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert orjson.loads(body["messages"][2]["tool_calls"][1]["function"]["arguments"]) == {"q": "b"}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert (body["parallel_tool_calls"], body["stop"], body["max_tokens"]) == (False, ["x", "y"], 50)
    assert "user" not in body and "safety_identifier" not in body  # not the client's end user
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("extra, param", [
    ({"top_k": 3}, "top_k"), ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}]}, "messages.1"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
                   {"role": "user", "content": "x"}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]}]}]},
     "messages.0.content.0.content.0.type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    ({"metadata": {"user_id": "u", "other": 1}}, "metadata"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "weird": 1}]}]}, "messages.0.content.0.weird"),
    ({"max_tokens": None}, "max_tokens"),
    ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "true"}}, "tool_choice.disable_parallel_tool_use"),
])
def test_anthropic_fields_that_cannot_be_translated(extra: dict[str, Any], param: str) -> None:
    assert refused(parse_anthropic_messages, an(**extra)) == param


# --- answers out ------------------------------------------------------------------------------------
def _openai_reply() -> Any:
    return parse_openai_response({
        "id": "chatcmpl-1", "created": 1, "model": "gpt-x", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "thinking aloud", "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"z"}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 20}},
    }, provider="openai", tier="simple")


def test_unified_answer_in_both_formats() -> None:
    reply = _openai_reply()
    assert reply.cache == CacheTokens(read=20)
    message = render_anthropic_message(reply, reply.usage, reply.cache)
    assert message["content"] == [{"type": "text", "text": "thinking aloud"},
                                  {"type": "tool_use", "id": "call_9", "name": "lookup", "input": {"q": "z"}}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20,
                                "output_tokens": 5}
    completion = render_openai_completion(reply, reply.usage, reply.cache)
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"q":"z"}'
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 20}


def test_an_openai_refusal_reaches_an_openai_client_and_is_counted_for_an_anthropic_one() -> None:
    """A refusal (content null) is OpenAI's `message.refusal`; an Anthropic client is answered as its
    stream is (`AnthropicStreamEncoder` relays no refusal): the refusal is counted, not shown, and the
    message ends `refusal`, as Claude's own refusal ends."""
    reply = parse_openai_response({
        "id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}],
    }, provider="openai", tier="simple")
    assert reply.text() == "I can't help with that."
    completion = render_openai_completion(reply, Usage.of(5, 7), reply.cache)
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": None,
                                                   "refusal": "I can't help with that."}
    message = render_anthropic_message(reply, Usage.of(5, 7), reply.cache)
    assert (message["content"], message["stop_reason"]) == ([], "refusal")  # (no block, as its stream)
    assert message["usage"]["output_tokens"] == 7


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, orjson.loads(e.data)) for e in SSEParser().feed(raw)]


def test_stream_encoder_keeps_parallel_tool_calls_apart() -> None:
    """OpenAI chunks (text, then two tool calls whose fragments arrive in turn) become Anthropic blocks."""
    chunks = [
        {"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": ""}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    encoder = AnthropicStreamEncoder(input_tokens=12)
    raw = b"".join(encoder.feed(c) for c in chunks)
    closing, stop = encoder.finish("tool_calls", Usage.of(40, 7), CacheTokens(write=4, read=6))
    events = _events(raw + closing + stop)
    kinds = [kind for kind, _ in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]
    starts = [data for kind, data in events if kind == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    assert starts[1]["content_block"]["id"] == "call_a" and starts[2]["content_block"]["name"] == "clock"
    deltas = [d["delta"].get("partial_json") for k, d in events if k == "content_block_delta" and d["index"] == 1]
    assert "".join(deltas) == '{"q":"a"}'
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"] == {"input_tokens": 30, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 6,
                              "output_tokens": 7}
    assert events[0][1]["message"]["usage"]["input_tokens"] == 12 and events[0][1]["message"]["model"] == "gpt-x"


def test_openai_stream_cache_tokens_are_read() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai")
    for data in ('{"id":"x","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}',
                 '{"id":"x","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,'
                 '"prompt_tokens_details":{"cached_tokens":4}}}', "[DONE]"):
        normalizer.feed(next(iter(SSEParser().feed(f"data: {data}\n\n".encode()))))
    assert normalizer.cache == CacheTokens(read=4) and normalizer.usage == Usage.of(9, 1)
